"""Semantic VQ + residual VQ between two down/up-sampling stages (SPEC §2.4).

One stage: project to 8 dims, pick the codebook row of highest cosine similarity (computed as the
original does, as a squared distance of L2-normalised vectors, so near-ties break the same way),
project the un-normalised row back. Decoding clamps codes to each codebook's size, as the original.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import CodecConfig
from .convs import CausalConv, CausalTransposedConv, ConvNeXtBlock
from .transformer import WindowLimitedTransformer


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_proj = nn.Conv1d(dim, codebook_dim, 1)
        self.out_proj = nn.Conv1d(codebook_dim, dim, 1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def encode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, dim, T] → (its quantised projection [B, dim, T], indices [B, T])."""
        z_e = self.in_proj(z)
        batch, width, length = z_e.shape
        vectors = F.normalize(z_e.transpose(1, 2).reshape(-1, width))
        rows = F.normalize(self.codebook.weight)
        distance = vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ rows.t() + rows.pow(2).sum(1, keepdim=True).t()
        indices = (-distance).max(1)[1].view(batch, length)
        z_q = self.codebook(indices).transpose(1, 2)
        z_q = z_e + (z_q - z_e)  # the straight-through form of the original, kept for identical rounding
        return self.out_proj(z_q), indices

    def decode(self, indices: Tensor) -> Tensor:
        return self.out_proj(self.codebook(indices).transpose(1, 2))


class ResidualQuantizer(nn.Module):
    def __init__(self, dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.quantizers = nn.ModuleList(VectorQuantizer(dim, codebook_size, codebook_dim) for _ in range(n_codebooks))

    def encode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Each stage quantises what the previous ones left → (sum of stages [B, dim, T], codes [B, n, T])."""
        total, residual, codes = 0, z, []
        for quantizer in self.quantizers:
            z_q, indices = quantizer.encode(residual)
            total = total + z_q
            residual = residual - z_q
            codes.append(indices)
        return total, torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        total = 0.0
        for i, quantizer in enumerate(self.quantizers):
            total = total + quantizer.decode(codes[:, i])
        return total


class DownsampleQuantizer(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        dim = config.latent_dim
        self.semantic_quantizer = ResidualQuantizer(dim, 1, config.semantic_codebook_size, config.codebook_dim)
        self.quantizer = ResidualQuantizer(dim, config.n_codebooks, config.codebook_size, config.codebook_dim)
        factors = config.downsample_factor
        self.downsample = nn.Sequential(
            *[nn.Sequential(CausalConv(dim, dim, f, stride=f), ConvNeXtBlock(dim)) for f in factors]
        )
        self.upsample = nn.Sequential(
            *[nn.Sequential(CausalTransposedConv(dim, dim, f, stride=f), ConvNeXtBlock(dim)) for f in reversed(factors)]
        )
        self.pre_module = WindowLimitedTransformer(config.quantizer_transformer)
        self.post_module = WindowLimitedTransformer(config.quantizer_transformer)

    def encode(self, latent: Tensor) -> Tensor:
        """Encoder latent [B, dim, 4T] → codes [B, 1 + n_codebooks, T] (semantic codebook first)."""
        return self.quantize(self.pre_module(self.downsample(latent)))

    def quantize(self, z: Tensor) -> Tensor:
        """Frames [B, dim, T] → their codes [B, 1 + n_codebooks, T] (each frame on its own)."""
        semantic_z, semantic_codes = self.semantic_quantizer.encode(z)
        _, residual_codes = self.quantizer.encode(z - semantic_z)
        return torch.cat([semantic_codes, residual_codes], dim=1)

    def embed(self, codes: Tensor) -> Tensor:
        """Codes [B, 1 + n, T] → their summed vectors [B, dim, T]; codes above a codebook's size are clamped."""
        semantic = codes[:, :1].clamp(max=self.semantic_quantizer.codebook_size - 1)
        residual = codes[:, 1:].clamp(max=self.quantizer.codebook_size - 1)
        return self.semantic_quantizer.decode(semantic) + self.quantizer.decode(residual)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, 1 + n, T] → decoder input [B, dim, 4T]."""
        return self.upsample(self.post_module(self.embed(codes)))
