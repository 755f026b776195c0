"""Prompt layout of the original `encode_tokens` (SPEC-text §3.2), for a prompt string already built
by the front end (core/frontend.py): the string's token ids as the text row (codebook rows 0), then
one column per reference frame: (pad token | VQ codes + 2). Language-blind: ids and codes only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .generate import CODE_OFFSET
from .tokenizer import TextTokenizer


def encode_prompt(
    tokenizer: TextTokenizer,
    prompt: str,
    reference_codes: Tensor | None = None,
    num_codebooks: int = 4,
    codebook_size: int | None = None,
) -> Tensor:
    """[1 + num_codebooks, L (+ T)]; `codebook_size` (the LM's entries per codebook) bounds the codes.

    dtype follows the original: int32, promoted to the reference codes' dtype (int64 from .npy
    files) when they are given; this is why codes_N.npy is int32 or int64.
    """
    tokens = torch.tensor([tokenizer.encode(prompt)], dtype=torch.int)
    layout = torch.cat([tokens, torch.zeros((num_codebooks, tokens.size(1)), dtype=torch.int)], dim=0)
    if reference_codes is None:
        return layout
    if reference_codes.ndim != 2 or reference_codes.size(0) != num_codebooks:
        raise ValueError(f"reference codes must have shape [{num_codebooks}, T], got {list(reference_codes.shape)}")
    if reference_codes.dtype.is_floating_point or reference_codes.dtype == torch.bool:
        raise ValueError(f"reference codes must be integers, got {reference_codes.dtype}")
    if codebook_size is not None and reference_codes.numel():
        low, high = int(reference_codes.min()), int(reference_codes.max())
        if low < 0 or high + CODE_OFFSET >= codebook_size:
            raise ValueError(
                f"reference codes must be in 0..{codebook_size - CODE_OFFSET - 1} (the LM's codebooks), "
                f"got {low}..{high}"
            )
    codes = reference_codes + CODE_OFFSET
    pad_row = torch.full((1, codes.size(1)), tokenizer.pad_token_id, dtype=torch.int)
    return torch.cat([layout, torch.cat([pad_row, codes], dim=0)], dim=1)
