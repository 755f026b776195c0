"""The zero-shot prompt of S1 (SPEC §5) as a `[1 + N, L]` integer matrix.

Parts, each tokenised on its own (no BPE merge across parts):
`<|interleave|>`, then per reference `<|speaker:0|>`, transcript, its codes, `<|im_end|>`; then
`<|speaker:0|>` and the text to speak. Row 0 holds token ids (a code frame's row 0 is its semantic
token), rows 1..N the codes of frame positions and 0 at text positions. Text is used as given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokenizer import IM_END_TOKEN, INTERLEAVE_TOKEN, SPEAKER_TOKEN, S1Tokenizer


@dataclass
class Reference:
    """One voice reference: its codec codes `[num_codebooks, T]` and their transcript."""

    codes: torch.Tensor
    text: str


def text_columns(tokenizer: S1Tokenizer, text: str, num_codebooks: int) -> torch.Tensor:
    ids = tokenizer.encode(text)
    columns = torch.zeros((num_codebooks + 1, len(ids)), dtype=torch.int)
    columns[0] = torch.tensor(ids, dtype=torch.int)
    return columns


def code_columns(tokenizer: S1Tokenizer, codes: torch.Tensor, num_codebooks: int) -> torch.Tensor:
    if codes.dim() != 2 or codes.size(0) != num_codebooks:
        raise ValueError(f"reference codes must be [{num_codebooks}, T], got {tuple(codes.shape)}")
    codes = codes.to(torch.int).cpu()
    if codes.numel() and (int(codes.min()) < 0 or int(codes[0].max()) >= tokenizer.num_semantic):
        raise ValueError(f"reference codes out of range (semantic codes must lie in [0, {tokenizer.num_semantic}))")
    columns = torch.empty((num_codebooks + 1, codes.size(1)), dtype=torch.int)
    columns[0] = codes[0] + tokenizer.semantic_begin_id
    columns[1:] = codes
    return columns


def build_prompt(tokenizer: S1Tokenizer, text: str, references: list[Reference], num_codebooks: int) -> torch.Tensor:
    """The prompt matrix `[1 + num_codebooks, L]` (int32) for `text` spoken in the references' voice."""
    speaker = SPEAKER_TOKEN.format(speaker=0)
    parts = [text_columns(tokenizer, INTERLEAVE_TOKEN, num_codebooks)]
    for reference in references:
        parts += [
            text_columns(tokenizer, speaker, num_codebooks),
            text_columns(tokenizer, reference.text, num_codebooks),
            code_columns(tokenizer, reference.codes, num_codebooks),
            text_columns(tokenizer, IM_END_TOKEN, num_codebooks),
        ]
    parts += [text_columns(tokenizer, speaker, num_codebooks), text_columns(tokenizer, text, num_codebooks)]
    return torch.cat(parts, dim=1)


def reference_length(prompt: torch.Tensor, im_end_id: int) -> int:
    """Positions up to the last reference's `<|im_end|>` (0 without references): the part of `prompt` that
    does not depend on the text to speak (core/lm/prefixes.py keeps its keys and values)."""
    ends = (prompt[0] == im_end_id).nonzero()
    return int(ends[-1]) + 1 if len(ends) else 0
