"""S1-mini models for the benchmark: the estimated official config (SPEC §3.6) and a tiny one, random weights."""

from __future__ import annotations

import torch
from torch import nn

from core.s1.codec import Codec
from core.s1.config import CodecConfig, CodecTransformerConfig, DualARConfig
from core.s1.lm import DualARTransformer

# SPEC §3.6: the estimate that reproduces the published model.pth size (the real config.json was unreachable).
ESTIMATED_S1_MINI = dict(
    vocab_size=155776,
    n_layer=28,
    n_head=16,
    n_local_heads=8,
    head_dim=128,
    dim=1024,
    intermediate_size=3072,
    rope_base=1e6,
    norm_eps=1e-6,
    max_seq_len=8192,
    tie_word_embeddings=False,
    attention_qk_norm=True,
    codebook_size=4096,
    num_codebooks=10,
    n_fast_layer=4,
    scale_codebook_embeddings=True,
)
SEMANTIC_BEGIN = 151643 + 15  # Qwen BPE ranks + the 15 base specials (SPEC §3.6)
TINY_S1 = dict(
    vocab_size=1837,
    n_layer=2,
    n_head=4,
    n_local_heads=2,
    head_dim=16,
    dim=64,
    intermediate_size=160,
    max_seq_len=2560,
    tie_word_embeddings=False,
    attention_qk_norm=True,
    codebook_size=1280,
    num_codebooks=4,
    n_fast_layer=2,
    scale_codebook_embeddings=True,
)
TINY_SEMANTIC_BEGIN = 557
OFFICIAL_FRAME_RATE = 44100 / 2048  # code frames per second of audio (21.53)


def tiny_codec_config() -> CodecConfig:
    qt = CodecTransformerConfig(n_layer=1, dim=128, n_head=2, intermediate_size=384, window_size=8, block_size=256)
    return CodecConfig(
        sample_rate=16000,
        encoder_dim=8,
        encoder_rates=(2, 4, 4, 4),
        decoder_dim=64,
        decoder_rates=(4, 4, 4, 2),
        encoder_transformer_layers=(0, 0, 0, 1),
        general_block_size=1024,
        latent_dim=128,
        n_codebooks=3,
        codebook_size=32,
        semantic_codebook_size=64,
        quantizer_transformer=qt,
    )


def randomize(module: nn.Module, device: torch.device, seed: int = 0) -> None:
    """Materialise a meta-built module with weights that keep activations near unit scale."""
    module.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() >= 2:
                param.normal_(0, (param.numel() / param.size(0)) ** -0.5, generator=gen)
            elif name.endswith("bias"):
                param.zero_()
            elif name.endswith("gamma"):
                param.fill_(1e-2)
            else:
                param.fill_(1.0)  # norms, Snake alphas


def random_dual_ar(device: torch.device, dtype: torch.dtype, tiny: bool) -> DualARTransformer:
    config = DualARConfig(**(TINY_S1 if tiny else ESTIMATED_S1_MINI))
    begin = TINY_SEMANTIC_BEGIN if tiny else SEMANTIC_BEGIN
    with torch.device("meta"):
        model = DualARTransformer(config, begin, begin + min(config.codebook_size, 4096) - 1)
    randomize(model, device)
    model = model.to(dtype)
    model.build_rope_tables()
    return model.eval().requires_grad_(False)


def random_codec(device: torch.device, tiny: bool) -> Codec:
    with torch.device("meta"):
        codec = Codec(tiny_codec_config() if tiny else CodecConfig())
    randomize(codec, device)
    return codec.eval().requires_grad_(False)


def bytes_per_frame(model: DualARTransformer) -> int:
    """Weights one frame reads: slow stack + head once, fast stack + head at each of the N positions."""

    def size(prefixes: tuple[str, ...]) -> int:
        return sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if n.startswith(prefixes))

    slow = size(("layers.", "norm.", "output.", "fast_project_in."))
    fast = size(("fast_layers.", "fast_norm.", "fast_output."))
    return slow + model.config.num_codebooks * fast


def random_prompt(model: DualARTransformer, length: int) -> torch.Tensor:
    prompt = torch.zeros(1 + model.config.num_codebooks, length, dtype=torch.int)
    prompt[0] = torch.randint(0, model.semantic_begin_id, (length,), generator=torch.Generator().manual_seed(0))
    return prompt
