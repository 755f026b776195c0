"""Sampling one token from a 1-D logit vector, in the original's order (SPEC §6.2).

repetition penalty → top-p on the un-tempered logits → temperature → softmax → an exponential race
(`argmax(p / q)`, q ~ Exp(1)), which is a multinomial draw. The race draws exactly one `exponential_`
vector as wide as the distribution from the given generator (the global one by default): seeded runs
then reproduce the original's frames on the CPU. `top_p` → 0 is greedy (random numbers are still drawn).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

WINDOW = 16  # frames of repetition-penalty history


@dataclass(frozen=True)
class SamplingSettings:
    """Defaults of the original CLI / `generate_long`."""

    temperature: float = 0.8
    top_p: float = 0.8
    repetition_penalty: float = 1.1

    def __post_init__(self):
        if not 0 < self.temperature < 2:
            raise ValueError(f"temperature must lie in (0, 2), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not 0 < self.repetition_penalty < 2:
            raise ValueError(f"repetition_penalty must lie in (0, 2), got {self.repetition_penalty}")

    def as_tensors(self, device: torch.device) -> SamplingTensors:
        # float32 tensors, like the original's fixed parameter tensors, so arithmetic rounds the same way
        def make(value: float) -> Tensor:
            return torch.tensor(value, dtype=torch.float32, device=device)

        return SamplingTensors(make(self.temperature), make(self.top_p), make(self.repetition_penalty))


@dataclass(frozen=True)
class SamplingTensors:
    temperature: Tensor
    top_p: Tensor
    repetition_penalty: Tensor


def penalize(logits: Tensor, previous: Tensor, penalty: Tensor) -> Tensor:
    """Divide positive / multiply negative logits of every id in `previous` by the penalty."""
    index = previous.long()
    score = torch.gather(logits, -1, index)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(-1, index, score)


def logits_to_probs(logits: Tensor, params: SamplingTensors, previous: Tensor | None = None) -> Tensor:
    if previous is not None:
        logits = penalize(logits, previous, params.repetition_penalty)
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    remove_sorted = cumulative > params.top_p
    remove_sorted[0] = False  # always keep the most likely entry
    remove = remove_sorted.scatter(-1, sorted_indices, remove_sorted)
    logits = logits.masked_fill(remove, -float("inf"))
    logits = logits / torch.clip(params.temperature, min=1e-5)
    return torch.softmax(logits, dim=-1)


def sample_token(
    logits: Tensor, params: SamplingTensors, previous: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """One id (a 0-d int tensor) from 1-D `logits`."""
    probs = logits_to_probs(logits, params, previous)
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / race, dim=-1).to(torch.int)
