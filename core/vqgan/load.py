"""Load a VQGAN checkpoint (`vqgan-v1.pth` layout, spec §1.5) into the inference model.

The checkpoint is validated against the official key layout, weight norm is folded into plain
conv weights (w = g * v / ||v||), the per-group codebooks are stacked, and the result is
assigned into a model built on the meta device (no random init, no second copy in memory).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..checkpoints import CheckpointError, describe_key_mismatch, describe_shape_mismatch, load_state_dict_file
from .config import VQGANConfig, load_vqgan_config
from .model import VQGAN
from .packing import resolve_packed_convs
from .precision import resolve_precision

WN_G, WN_V = ".parametrizations.weight.original0", ".parametrizations.weight.original1"
LEGACY_WN = {".weight_g": WN_G, ".weight_v": WN_V}  # old torch.nn.utils.weight_norm spelling
# Model buffer -> checkpoint key. Optional: recomputed if a checkpoint lacks them.
MEL_KEYS = {
    "mel_transform.window": "mel_transform.spectrogram.window",
    "mel_transform.fb": "mel_transform.mel_scale.fb",
}
CODEBOOKS = "vq_encoder.vq.codebooks"


def codebook_key(group: int) -> str:
    return f"vq_encoder.vq.rvqs.{group}.layers.0._codebook.embed"


def _weight_normed_prefixes(model: VQGAN) -> set[str]:
    return {name for name, m in model.named_modules() if getattr(m, "weight_normed", False)}


def checkpoint_layout(model: VQGAN) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape of every entry the inference model reads, in the official naming."""
    wn = _weight_normed_prefixes(model)
    layout = {}
    for key, t in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in wn and leaf == "weight":
            # g is per dim-0 channel: [out,1,1] for Conv1d, [in,1,1] for ConvTranspose1d.
            layout[prefix + WN_G] = (t.shape[0], 1, 1)
            layout[prefix + WN_V] = tuple(t.shape)
        elif key == CODEBOOKS:
            layout.update({codebook_key(g): (1, *t.shape[1:]) for g in range(t.shape[0])})
        else:
            layout[MEL_KEYS.get(key, key)] = tuple(t.shape)
    return layout


def _is_ignored(key: str) -> bool:
    # The GAN discriminator and the VQ's EMA/init buffers (initted, cluster_size, embed_avg,
    # or whatever a newer vector-quantize-pytorch adds) are training state.
    return key.startswith("discriminator.") or (key.startswith("vq_encoder.vq.") and not key.endswith(".embed"))


def _normalise(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state_dict.items():
        if _is_ignored(key):
            continue
        for legacy, modern in LEGACY_WN.items():
            if key.endswith(legacy):
                key = key[: -len(legacy)] + modern
        if key in out:
            raise CheckpointError(f"checkpoint holds {key} in both weight-norm spellings")
        out[key] = value
    return out


def fold_weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """w = g * v / ||v||, the norm over all dims except 0 (same op order as torch._weight_norm)."""
    return v * (g / torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True))


def convert_state_dict(model: VQGAN, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Validate a checkpoint state dict and turn it into `model`'s own (folded, float32) state dict."""
    sd = _normalise(state_dict)
    layout = checkpoint_layout(model)
    missing = [k for k in layout if k not in sd and k not in MEL_KEYS.values()]
    unexpected = [k for k in sd if k not in layout]
    if missing or unexpected:
        raise CheckpointError(f"VQGAN checkpoint does not fit the config: {describe_key_mismatch(missing, unexpected)}")
    bad_shapes = describe_shape_mismatch({k: torch.Size(s) for k, s in layout.items()}, sd)
    if bad_shapes:
        raise CheckpointError(f"VQGAN checkpoint shape mismatch: {bad_shapes}")

    wn = _weight_normed_prefixes(model)
    state = {}
    for key, current in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in wn and leaf == "weight":
            state[key] = fold_weight_norm(sd[prefix + WN_G].float(), sd[prefix + WN_V].float())
        elif key == CODEBOOKS:
            state[key] = torch.cat([sd[codebook_key(g)].float() for g in range(current.shape[0])])
        elif key in MEL_KEYS:
            # The module computed these on CPU even when built on the meta device.
            state[key] = sd[MEL_KEYS[key]].float() if MEL_KEYS[key] in sd else current
        else:
            state[key] = sd[key].float()
    return state


def vqgan_from_state_dict(
    state_dict: dict[str, Tensor],
    config: VQGANConfig | str = "vqgan_pretrain",
    device: str | torch.device = "cpu",
    precision: str = "float32",
) -> VQGAN:
    if not isinstance(config, VQGANConfig):
        config = load_vqgan_config(config)
    with torch.device("meta"):
        model = VQGAN(config)
    model.load_state_dict(convert_state_dict(model, state_dict), strict=True, assign=True)
    model = model.requires_grad_(False).to(device).eval()
    model.decode_dtype = getattr(torch, resolve_precision(model, precision))
    resolve_packed_convs(model)
    return model


def load_vqgan(
    checkpoint_path: str | os.PathLike,
    config: VQGANConfig | str = "vqgan_pretrain",
    device: str | torch.device = "cpu",
    precision: str = "float32",
) -> VQGAN:
    """Read a VQGAN checkpoint (flat or Lightning-wrapped, either weight-norm spelling) in eval mode.
    `precision="bfloat16"` decodes in bfloat16 (see README for its speed and SNR); "auto" where that is
    measured faster here (precision.py)."""
    return vqgan_from_state_dict(load_state_dict_file(checkpoint_path), config, device, precision)
