"""The codec's window-limited causal transformer (SPEC §2.5): channels-first in and out.

Per layer `h = x + γ_a·Attn(norm(x))`, `y = h + γ_f·SwiGLU(norm(h))`; query i sees keys
i - window < j ≤ i. The RoPE table grows on demand, so inputs longer than the original's
`block_size` rows (≈190 s of audio) work instead of failing (rows are position-wise identical).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ...lm.norm import RMSNorm
from ...lm.rope import rope_table
from ..config import CodecTransformerConfig, LayerShape
from ..layers import SwiGLU
from ..lm import Attention

QUERY_BLOCK = 1024  # query rows attended at once by a whole-input pass (~1024 x 1152 scores a head)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-2))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class CodecBlock(nn.Module):
    def __init__(self, shape: LayerShape):
        super().__init__()
        self.attention = Attention(shape)
        self.feed_forward = SwiGLU(shape.dim, shape.intermediate_size)
        self.ffn_norm = RMSNorm(shape.dim, shape.norm_eps)
        self.attention_norm = RMSNorm(shape.dim, shape.norm_eps)
        self.attention_layer_scale = LayerScale(shape.dim)
        self.ffn_layer_scale = LayerScale(shape.dim)

    def forward(self, x: Tensor, rope: Tensor, positions: Tensor, window: int | None) -> Tensor:
        """The block on a whole input, its queries QUERY_BLOCK rows at a time, each block over the keys its
        window reaches: memory grows with the length, not its square (a 10-minute clip's [T, T] scores
        took 21 GB). An input of one block is the original's one call."""
        q, k, v = self.attention.project(self.attention_norm(x), rope)
        rows = []
        for start in range(0, x.size(1), QUERY_BLOCK):
            end = min(start + QUERY_BLOCK, x.size(1))
            first = 0 if window is None else max(0, start - window + 1)
            mask = window_mask(positions[start:end], positions[first:end], window)
            rows.append(self.attention.attend(q[:, :, start:end], k[:, :, first:end], v[:, :, first:end], mask))
        h = x + self.attention_layer_scale(torch.cat(rows, dim=1))
        return h + self.ffn_layer_scale(self.feed_forward(self.ffn_norm(h)))

    def forward_stream(
        self, x: Tensor, rope: Tensor, past: tuple[Tensor, Tensor] | None, positions: Tensor, window: int | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The block on new steps at `positions`, attending to the kept keys/values of earlier steps too."""
        q, k, v = self.attention.project(self.attention_norm(x), rope)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        first_key = int(positions[0]) - (k.size(2) - x.size(1))
        mask = window_mask(positions, torch.arange(first_key, int(positions[-1]) + 1, device=x.device), window)
        h = x + self.attention_layer_scale(self.attention.attend(q, k, v, mask))
        out = h + self.ffn_layer_scale(self.feed_forward(self.ffn_norm(h)))
        if window is not None:  # later steps see at most window - 1 earlier keys
            start = max(0, k.size(2) - (window - 1))
            k, v = k[:, :, start:], v[:, :, start:]
        return out, (k, v)


def window_mask(query_positions: Tensor, key_positions: Tensor, window: int | None) -> Tensor:
    """[1, 1, queries, keys]: the query at position i sees keys at j with i - window < j ≤ i."""
    queries, keys = query_positions.view(-1, 1), key_positions.view(1, -1)
    mask = keys <= queries
    if window is not None:
        mask &= keys > queries - window
    return mask.view(1, 1, *mask.shape)


class WindowLimitedTransformer(nn.Module):
    def __init__(self, config: CodecTransformerConfig):
        super().__init__()
        self.config = config
        shape = LayerShape(
            config.dim,
            config.n_head,
            config.n_head,
            config.head_dim,
            config.intermediate_size,
            qkv_bias=False,
            o_bias=False,
            qk_norm=False,
            norm_eps=config.norm_eps,
        )
        self.layers = nn.ModuleList(CodecBlock(shape) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.rope_cache = rope_table(0, config.head_dim, config.rope_base)

    def rope(self, length: int, device: torch.device) -> Tensor:
        if self.rope_cache.size(0) < length or self.rope_cache.device != device:
            rows = max(length, self.config.block_size)
            self.rope_cache = rope_table(rows, self.config.head_dim, self.config.rope_base).to(device)
        return self.rope_cache[:length]

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        length = x.size(1)
        positions = torch.arange(length, device=x.device)
        rope = self.rope(length, x.device)
        for layer in self.layers:
            x = layer(x, rope, positions, self.config.window_size)
        return self.norm(x).transpose(1, 2)

    def forward_stream(self, x: Tensor, past: list, offset: int) -> Tensor:
        """Channels-first new steps starting at position `offset`; `past` (one entry per layer, None at first)
        keeps each layer's recent keys/values between calls."""
        x = x.transpose(1, 2)
        positions = torch.arange(offset, offset + x.size(1), device=x.device)
        rope = self.rope(offset + x.size(1), x.device)[offset:]
        for i, layer in enumerate(self.layers):
            x, past[i] = layer.forward_stream(x, rope, past[i], positions, self.config.window_size)
        return self.norm(x).transpose(1, 2)
