"""Prompt layout of the original `encode_tokens` (SPEC-text §3.2).

`<s> [INST] {[SPK: name] }{reference text} {text} [/INST]` as the text row (codebook rows 0), then
one column per reference frame: (pad token | VQ codes + 2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .generate import CODE_OFFSET
from .tokenizer import TextTokenizer

DEFAULT_ORDER = "zh,jp,en"


def build_prompt_string(text: str, prompt_text: str | None = None, use_g2p: bool = True,
                        speaker: str | None = None, order: str = DEFAULT_ORDER) -> str:
    from .. import text as text_frontend  # lazy: jieba & co. load only when g2p is used

    if not text_frontend.clean_text(text).strip():
        raise text_frontend.TextError("the text has nothing to speak after cleaning (only unsupported characters?)")
    string = text if prompt_text is None else f"{prompt_text} {text}"
    if use_g2p:
        string = text_frontend.phones_to_prompt(text_frontend.g2p(string, order=order))
    else:
        string = text_frontend.clean_text(string)
    if speaker is not None:
        string = f"[SPK: {speaker}] {string}"
    return f"[INST] {string} [/INST]"


def encode_prompt(tokenizer: TextTokenizer, text: str, *, prompt_text: str | None = None,
                  prompt_tokens: Tensor | None = None, use_g2p: bool = True, speaker: str | None = None,
                  order: str = DEFAULT_ORDER, num_codebooks: int = 4) -> Tensor:
    """[1 + num_codebooks, L (+ T)].

    dtype follows the original: int32, promoted to the reference codes' dtype (int64 from .npy
    files) when they are given; this is why codes_N.npy is int32 or int64.
    """
    string = build_prompt_string(text, prompt_text, use_g2p, speaker, order)
    tokens = torch.tensor([tokenizer.encode(string)], dtype=torch.int)
    prompt = torch.cat([tokens, torch.zeros((num_codebooks, tokens.size(1)), dtype=torch.int)], dim=0)
    if prompt_tokens is None:
        return prompt
    if prompt_tokens.ndim != 2 or prompt_tokens.size(0) != num_codebooks:
        raise ValueError(f"reference codes must have shape [{num_codebooks}, T], got {list(prompt_tokens.shape)}")
    if prompt_tokens.dtype.is_floating_point or prompt_tokens.dtype == torch.bool:
        raise ValueError(f"reference codes must be integers, got {prompt_tokens.dtype}")
    codes = prompt_tokens + CODE_OFFSET
    pad_row = torch.full((1, codes.size(1)), tokenizer.pad_token_id, dtype=torch.int)
    return torch.cat([prompt, torch.cat([pad_row, codes], dim=0)], dim=1)
