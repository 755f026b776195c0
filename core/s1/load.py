"""Load the S1 files as downloaded: `model.pth` (Dual-AR) and `codec.pth` (modded DAC).

Both go through `torch.load(weights_only=True)`. Unlike the original (`strict=False`, which leaves
missing weights at random init), a missing, unexpected or wrong-shape key fails here with its name.
Known wrappings and stored extras are undone first:
* `model.pth`: a `{"state_dict": ...}` wrapper; a Lightning `model.` key prefix; `audio_*` weights
  (dropped by the original too); stored KV caches / RoPE tables / masks (recomputed here);
  separate `wq`/`wk`/`wv` weights (concatenated into `wqkv`, as the original's load hook does).
* `codec.pth`: a `generator.` prefix (GAN training checkpoints); weight norm in both of its
  conventions (`parametrizations.weight.original0/1` and legacy `weight_g`/`weight_v`), folded into
  plain weights with torch's own `_weight_norm` (the same op the original runs every forward);
  the stored `freqs_cis` / `causal_mask` buffers (recomputed).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import CheckpointError, describe_key_mismatch, describe_shape_mismatch, load_state_dict_file
from .codec.model import Codec
from .config import CodecConfig, DualARConfig, load_dual_ar_config
from .lm import DualARTransformer
from .tokenizer import S1Tokenizer, load_s1_tokenizer

MODEL_FILENAME = "model.pth"
CODEC_FILENAME = "codec.pth"
CODEC_CONFIG_FILENAME = "codec_config.json"

LM_RECOMPUTED = re.compile(r"(^|\.)(kv_cache\.[kv]_cache|freqs_cis|fast_freqs_cis|causal_mask)$")
CODEC_RECOMPUTED = re.compile(r"(^|\.)(freqs_cis|causal_mask)$")
QKV_SPLIT = re.compile(r"^(.*)\.w([qkv])\.(weight|bias)$")


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load every parameter, naming what is missing, unexpected or of the wrong shape."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = [
        p
        for p in (
            describe_key_mismatch(missing, unexpected),
            describe_shape_mismatch({k: v.shape for k, v in expected.items()}, state),
        )
        if p
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit the model config: " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=True)


# -- Dual-AR ------------------------------------------------------------------------------------------
def normalize_lm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and next(iter(state)).startswith("model."):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if "audio_" not in k and not LM_RECOMPUTED.search(k)}
    split: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key in [k for k in state if QKV_SPLIT.match(k)]:
        prefix, which, kind = QKV_SPLIT.match(key).groups()
        if prefix.endswith("attention"):
            split.setdefault((prefix, kind), {})[which] = state.pop(key)
    for (prefix, kind), parts in split.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{prefix}: has w{'/w'.join(sorted(parts))}.{kind} but not all of wq, wk, wv")
        state[f"{prefix}.wqkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return state


def check_tokenizer_fits(config: DualARConfig, tokenizer: S1Tokenizer) -> None:
    if tokenizer.semantic_end_id >= config.vocab_size:
        raise CheckpointError(f"tokenizer ids reach {tokenizer.semantic_end_id} but vocab_size is {config.vocab_size}")
    if tokenizer.num_semantic > config.codebook_size:
        raise CheckpointError(f"{tokenizer.num_semantic} semantic tokens but codebook_size is {config.codebook_size}")


def load_dual_ar(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[DualARTransformer, S1Tokenizer]:
    """`config.json` + `model.pth` + tokenizer files of one folder → (model in eval mode, tokenizer)."""
    folder = Path(folder)
    config = load_dual_ar_config(folder)
    tokenizer = load_s1_tokenizer(folder)
    check_tokenizer_fits(config, tokenizer)
    path = folder / MODEL_FILENAME
    state = normalize_lm_state(load_state_dict_file(path))
    with torch.device("meta"):
        model = DualARTransformer(config, tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    strict_load(model, state, path)
    model.build_rope_tables()  # built on the meta device they held no values
    model = model.to(device=device, dtype=dtype)
    model.build_rope_tables()  # and again after the cast, which would have rounded them to a float16 run's dtype
    return model.eval(), tokenizer


# -- codec ---------------------------------------------------------------------------------------------
WN_PARAMETRIZED = re.compile(r"^(.*)\.parametrizations\.weight\.original([01])$")
WN_LEGACY = re.compile(r"^(.*)\.weight_([gv])$")


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every (g, v) pair, in either convention, by the plain `weight` g·v/‖v‖ (norm over dims ≠ 0)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := WN_PARAMETRIZED.match(key):
            pairs.setdefault(m.group(1), {})["g" if m.group(2) == "0" else "v"] = value
        elif m := WN_LEGACY.match(key):
            pairs.setdefault(m.group(1), {})[m.group(2)] = value
        else:
            plain[key] = value
    for prefix, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise CheckpointError(f"{prefix}: weight norm needs both magnitude and direction, found only {sorted(gv)}")
        plain[f"{prefix}.weight"] = torch._weight_norm(gv["v"].float(), gv["g"].float(), 0)
    return plain


def normalize_codec_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any("generator" in k for k in state):
        state = {k.replace("generator.", ""): v for k, v in state.items() if "generator." in k}
    state = {k: v for k, v in state.items() if not CODEC_RECOMPUTED.search(k)}
    return fold_weight_norm(state)


def load_codec(path: str | Path, config: CodecConfig | None = None, device: str | torch.device = "cpu") -> Codec:
    """`codec.pth` → the codec in float32, eval mode (a `codec_config.json` beside it overrides the preset)."""
    from .config import load_codec_config

    path = Path(path)
    if config is None:
        config = load_codec_config(path.parent / CODEC_CONFIG_FILENAME)
    state = normalize_codec_state(load_state_dict_file(path))
    with torch.device("meta"):  # no random init of ~391 M parameters that the file replaces anyway
        model = Codec(config)
    strict_load(model, {k: v.float() for k, v in state.items()}, path)
    return model.to(device).eval()
