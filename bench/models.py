"""Official-size (or tiny, for tests) models with random weights, built the way the loaders build them."""

from __future__ import annotations

import dataclasses

import torch

from core.lm import load_lm_config
from core.lm.config import ModelArgs
from core.lm.model import Transformer
from core.vqgan import DEFAULT_VQGAN_PRECISION, VQGAN_PRECISIONS
from core.vqgan.config import DownsampleConfig, GeneratorConfig, VQConfig, VQGANConfig, WNConfig
from core.vqgan.load import MEL_KEYS, WN_G, checkpoint_layout, vqgan_from_state_dict
from core.vqgan.model import VQGAN


def official_lm_config() -> ModelArgs:
    return load_lm_config("text2semantic_finetune").model


def tiny_lm_config() -> ModelArgs:
    return dataclasses.replace(
        official_lm_config(),
        n_layer=2,
        n_head=4,
        n_local_heads=4,
        dim=64,
        intermediate_size=None,
        vocab_size=512,
        max_seq_len=1024,
    )


def random_official_lm(
    device: torch.device, dtype: torch.dtype, seed: int = 0, config: ModelArgs | None = None
) -> Transformer:
    """Built on meta then materialised once, as load_lm does (no second full-size copy)."""
    with torch.device("meta"):
        model = Transformer(config or official_lm_config())
    model = model.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name == "output.weight":
                # Logits with a spread like a trained model's (std ~4), so that sampling sees a peaked
                # distribution, not the near-uniform one of small random weights.
                param.normal_(0, 4 / model.config.dim**0.5, generator=gen)
            else:
                param.normal_(0, 0.02, generator=gen)
    model = model.to(dtype)
    model.init_buffers(device)  # after the cast: the RoPE table stays bfloat16, as load_lm leaves it
    return model.eval().requires_grad_(False)


def tiny_vqgan_config() -> VQGANConfig:
    return VQGANConfig(
        downsample=DownsampleConfig(dims=(80, 32, 32)),
        mel_encoder=WNConfig(hidden_channels=32, n_layers=2),
        vq=VQConfig(in_channels=32, vq_channels=32),
        decoder=WNConfig(hidden_channels=32, n_layers=2, out_channels=80),
        generator=GeneratorConfig(upsample_initial_channel=32),
    )


def random_vqgan_checkpoint(config: VQGANConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the official checkpoint layout (weight norm as g/v, one codebook per group).

    Scales keep activations O(1) through the stacks: tiny weights would decay into denormals,
    which are many times slower on CPU and would make the timing meaningless.
    """
    with torch.device("meta"):
        layout = checkpoint_layout(VQGAN(config))
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key in MEL_KEYS.values():
            continue  # recomputed by the model, as for a checkpoint without them
        if key.endswith(WN_G) or (len(shape) == 1 and key.endswith("weight")):
            state[key] = torch.ones(shape)  # folded row norm 1 = std 1/sqrt(fan_in); LayerNorm gain 1
        elif key.endswith("bias"):
            state[key] = torch.zeros(shape)
        elif len(shape) > 1 and not key.endswith(".embed"):
            fan_in = torch.Size(shape).numel() // shape[0]
            state[key] = torch.randn(shape, generator=gen) / fan_in**0.5
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def add_vqgan_precision_argument(parser) -> None:
    parser.add_argument(
        "--vqgan-precision",
        choices=VQGAN_PRECISIONS,
        default=DEFAULT_VQGAN_PRECISION,
        help="the VQGAN's decode precision for the parts that synthesize (auto: as the server chooses)",
    )


def random_vqgan(
    device: torch.device, config: VQGANConfig | None = None, seed: int = 0, precision: str = "float32"
) -> VQGAN:
    """Through the real loader, so the model is what a checkpoint gives: weight norm folded, codebooks stacked."""
    config = config or VQGANConfig()
    return vqgan_from_state_dict(random_vqgan_checkpoint(config, seed), config, device, precision)
