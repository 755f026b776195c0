"""Load text2semantic checkpoints: key normalisation, wq/wk/wv fusing, LoRA merge, strict checks."""

from __future__ import annotations

import os

import torch

from ..checkpoints import CheckpointError, describe_key_mismatch, describe_shape_mismatch, load_state_dict_file
from .autotune import tune_model
from .config import LMConfig, LoraConfig, ModelArgs, load_lm_config
from .model import Transformer
from .quantize import QUANT_MODES, checkpoint_quantization, convert_to_int8, quantize_model

# Stored by the original as persistent buffers; we recompute them.
_DERIVED_BUFFERS = ("freqs_cis", "causal_mask")


def normalize_lm_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring any wrapping of the original's checkpoints to the plain Transformer key layout."""
    if any(k.startswith("model.") for k in state_dict):
        # The original strips every occurrence of "model." from the Lightning module's keys.
        state_dict = {k.replace("model.", ""): v for k, v in state_dict.items() if k.startswith("model.")}
    state_dict = {k: v for k, v in state_dict.items() if k not in _DERIVED_BUFFERS}
    for key in [k for k in state_dict if k.endswith("attention.wq.weight")]:
        prefix = key[: -len("wq.weight")]
        parts = [state_dict.pop(prefix + name + ".weight", None) for name in ("wq", "wk", "wv")]
        if any(p is None for p in parts):
            raise CheckpointError(f"{prefix}wq/wk/wv: separate q/k/v weights must all be present")
        state_dict[prefix + "wqkv.weight"] = torch.cat(parts, dim=0)
        if prefix + "wq.scales" in state_dict:  # an int8 checkpoint with separate q/k/v
            state_dict[prefix + "wqkv.scales"] = torch.cat(
                [state_dict.pop(prefix + n + ".scales") for n in ("wq", "wk", "wv")]
            )
    return state_dict


def merge_lora(state_dict: dict[str, torch.Tensor], scaling: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fold `lora_A`/`lora_B` pairs into their base weights, in the inference dtype like the original."""
    merged = dict(state_dict)
    for key_a in [k for k in state_dict if k.endswith(".lora_A")]:
        name = key_a[: -len(".lora_A")]
        key_b, key_w = name + ".lora_B", name + ".weight"
        if key_b not in state_dict or key_w not in state_dict:
            raise CheckpointError(f"LoRA pair for {name} is incomplete (needs {key_w}, {key_a}, {key_b})")
        a, b = merged.pop(key_a).to(dtype), merged.pop(key_b).to(dtype)
        weight = merged[key_w].to(dtype)
        delta = b @ a
        if name == "embeddings":
            delta = delta.transpose(0, 1)  # embedding weight is [num, dim]; loralib stores B [dim, r]
        merged[key_w] = weight + delta * scaling
    return merged


def _check_size(args: ModelArgs, state_dict: dict[str, torch.Tensor]) -> None:
    """The config's depth and width against the checkpoint's, before a model of that size is built even on
    the meta device: a config of 100,000 layers took a minute to be refused, one of dim 10**12 overflowed."""
    layers = len({key.split(".")[1] for key in state_dict if key.startswith("layers.")})
    embeddings = state_dict.get("embeddings.weight")
    stored = None if embeddings is None else tuple(embeddings.shape)
    if layers != args.n_layer or stored not in (None, (args.total_vocab, args.dim)):
        raise CheckpointError(
            f"checkpoint does not fit the LM config: it holds {layers} layers and embeddings of {stored}, "
            f"the config says n_layer {args.n_layer} and {(args.total_vocab, args.dim)}"
        )


def load_lm(
    checkpoint_path: str | os.PathLike,
    config: LMConfig | str = "text2semantic_finetune",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
) -> Transformer:
    """Read a checkpoint file (any wrapping of the original's, or its int8 quantized one) into a ready model.

    `quantize="int8"` or `"int4"` quantizes a float checkpoint's linears at load (see quantize.py).
    """
    state_dict = load_state_dict_file(checkpoint_path)  # its errors name the file already
    try:
        return build_lm(state_dict, config, device, dtype, quantize)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint_path}: {exc}") from None


def build_lm(
    state_dict: dict[str, torch.Tensor],
    config: LMConfig | str = "text2semantic_finetune",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
) -> Transformer:
    """Build the model on the meta device and assign the tensors (no double copies)."""
    if quantize not in (None, *QUANT_MODES):
        raise ValueError(f"unknown quantization {quantize!r} (use one of: {', '.join(QUANT_MODES)})")
    if isinstance(config, str):
        config = load_lm_config(config)
    state_dict = normalize_lm_state_dict(state_dict)
    stored = checkpoint_quantization(state_dict)
    if stored == "int4":
        raise CheckpointError(
            "int4 checkpoints of the original (CUDA tinygemm layout) are not supported; "
            "use its int8 checkpoint, or the float one with quantize='int4' or 'int8'"
        )
    if any(k.endswith(".lora_A") for k in state_dict):
        scaling = config.lora.scaling if config.lora else LoraConfig().scaling  # official: alpha 16 / r 8
        state_dict = merge_lora(state_dict, scaling, dtype)

    _check_size(config.model, state_dict)
    with torch.device("meta"):
        model = Transformer(config.model)
        if stored == "int8":
            convert_to_int8(model)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit the LM config: {describe_key_mismatch(missing, unexpected)}")
    shapes = describe_shape_mismatch(expected, state_dict)
    if shapes:
        raise CheckpointError(f"checkpoint does not fit the LM config: {shapes}")

    # int8 weights stay int8; everything else (scales included) takes the compute dtype.
    state_dict = {
        k: v.to(device=device, dtype=v.dtype if v.dtype == torch.int8 else dtype) for k, v in state_dict.items()
    }
    model.load_state_dict(state_dict, assign=True)
    if quantize is not None and stored is None:
        quantize_model(model, quantize)
    model.init_buffers(device)
    if torch.device(device).type == "cpu":
        tune_model(model)  # builds or loads the decode kernels now, not mid-request, and picks the fastest paths
    return model.eval().requires_grad_(False)
