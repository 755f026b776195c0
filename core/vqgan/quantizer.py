"""Grouped vector quantizer (spec §1.2 vq_encoder) and the VQEncoder around it.

Equivalent, at inference, to vector_quantize_pytorch's GroupedResidualVQ with one plain
Euclidean codebook per group: the channels are split into contiguous groups, each group picks
its nearest code. The codebooks of all groups are stacked into one [G, K, D] buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import VQConfig


class GroupedVQ(nn.Module):
    def __init__(self, dim: int, groups: int, codebook_size: int):
        super().__init__()
        self.groups, self.codebook_size = groups, codebook_size
        self.register_buffer("codebooks", torch.randn(groups, codebook_size, dim // groups))

    def encode(self, x: Tensor) -> Tensor:
        """x [T, G * D] -> indices [G, T] int64."""
        x = x.reshape(x.shape[0], self.groups, -1).transpose(0, 1)  # [G, T, D]
        e = self.codebooks
        # Same formula and order as the original (-sqrt(|x|² + |e|² - 2x·e), argmax), so that
        # near-ties resolve identically.
        x2 = x.pow(2).sum(-1)[:, :, None]
        e2 = e.pow(2).sum(-1)[:, None, :]
        xe = torch.bmm(x, e.transpose(1, 2)) * -2
        dist = -(x2 + e2 + xe).sqrt()
        return dist.argmax(-1)

    def decode(self, indices: Tensor) -> Tensor:
        """indices [G, T] int64 (in range) -> vectors [T, G * D]."""
        vectors = torch.stack([self.codebooks[g][indices[g]] for g in range(self.groups)], dim=1)  # [T, G, D]
        return vectors.flatten(1)


class VQEncoder(nn.Module):
    """conv_in -> grouped VQ -> conv_out (keys `conv_out.1.*`: index 0 is an Identity)."""

    def __init__(self, c: VQConfig):
        super().__init__()
        self.conv_in = nn.Conv1d(c.in_channels, c.vq_channels, 1)
        self.vq = GroupedVQ(c.vq_channels, c.codebook_groups, c.codebook_size)
        self.conv_out = nn.Sequential(nn.Identity(), nn.Conv1d(c.vq_channels, c.in_channels, 1))

    def encode(self, x: Tensor) -> Tensor:
        """features [1, C, T] -> codes [G, T]."""
        return self.vq.encode(self.conv_in(x)[0].transpose(0, 1))

    def decode(self, codes: Tensor) -> Tensor:
        """codes [G, T] int64 -> [1, C, T] (before upsampling to the mel rate)."""
        return self.conv_out(self.vq.decode(codes).transpose(0, 1)[None])
