"""Sampling one token from a 1-D logit vector, in the original's order (SPEC §6.2).

repetition penalty → top-p on the un-tempered logits → temperature → softmax → an exponential race
(`argmax(p / q)`, q ~ Exp(1)), which is a multinomial draw. The race draws exactly one `exponential_`
vector as wide as the distribution from the given generator (the global one by default): seeded runs
then reproduce the original's frames on the CPU. `top_p` → 0 is greedy (random numbers are still drawn).
Top-p and the race are v0.2's (core/lm/sampling.py: the same rules, in C++ on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..lm.sampling import apply_top_p, draw_anyway, native_sampler_serves

WINDOW = 16  # frames of repetition-penalty history
MIN_TEMPERATURE = 1e-5  # the original divides by the temperature clipped here


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
    """One sequence's settings as 0-d tensors, or (`rows`) several sequences' as [R, 1], one row each."""

    temperature: Tensor
    top_p: Tensor
    repetition_penalty: Tensor

    @staticmethod
    def rows(each: list[SamplingTensors]) -> SamplingTensors:
        def stacked(values: list[Tensor]) -> Tensor:
            return torch.stack(values).view(-1, 1)

        return SamplingTensors(
            stacked([p.temperature for p in each]),
            stacked([p.top_p for p in each]),
            stacked([p.repetition_penalty for p in each]),
        )

    def row(self, index: int) -> SamplingTensors:
        """Row `index` of rows' settings, as rows [1, 1]."""
        return SamplingTensors(*(value[index : index + 1] for value in self.values()))

    def values(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.temperature, self.top_p, self.repetition_penalty

    @cached_property
    def per_row(self) -> list[tuple[float, float, float]]:
        """(temperature as divided by, top_p, penalty) of each row, as numbers: read once a frame, not a draw."""
        temperature, top_p, penalty = (value.reshape(-1).tolist() for value in self.values())
        return [(max(t, MIN_TEMPERATURE), p, r) for t, p, r in zip(temperature, top_p, penalty, strict=True)]

    def to(self, dtype: torch.dtype) -> SamplingTensors:
        """The settings in `dtype`, as logits_to_probs casts them for logits of that dtype (once a step
        instead of once a draw)."""
        return SamplingTensors(self.temperature.to(dtype), self.top_p.to(dtype), self.repetition_penalty.to(dtype))


def penalize(logits: Tensor, previous: Tensor, penalty: Tensor) -> Tensor:
    """Divide positive / multiply negative logits of every id in `previous` by the penalty."""
    index = previous.long()
    score = torch.gather(logits, -1, index)
    penalty = penalty.to(score.dtype)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(-1, index, score)


def logits_to_probs(logits: Tensor, params: SamplingTensors, previous: Tensor | None = None) -> Tensor:
    """Probabilities of 1-D `logits` (0-d settings, `previous` [W] ids), or of rows [R, V] (settings
    [R, 1], `previous` [R, W]): every op works within a row, so a row comes out as it would alone.

    The settings are cast to the logits' dtype: [R, 1] float32 settings would otherwise promote bfloat16
    logits to float32 where 0-d ones do not (and a CUDA 0-d tensor is cast to the logits' dtype too, as
    the original's are), so rows and a lone row round alike in every dtype."""
    rows = logits if logits.dim() == 2 else logits[None]
    if previous is not None:
        rows = penalize(rows, previous.view(rows.size(0), -1), params.repetition_penalty)
    rows = apply_top_p(rows, params.top_p.to(rows.dtype))  # v0.2's top-p, the same rule
    rows = rows / torch.clip(params.temperature, min=MIN_TEMPERATURE).to(rows.dtype)
    probs = torch.softmax(rows, dim=-1)
    return probs if logits.dim() == 2 else probs[0]


def sample_rows(
    logits: Tensor, params: SamplingTensors, previous: Tensor | None, generators: list[torch.Generator | None]
) -> Tensor:
    """One id per row of `logits` [R, V] (settings and `previous` as `logits_to_probs`'s rows), each drawn
    from its own generator: the distributions in one set of ops for all rows, then one race a row."""
    probs = logits_to_probs(logits, params, previous)
    # Non-finite rows are drawn from anyway, as the original does: the fast stack samples a step's rows
    # together, so raising would fail every sequence in the batch (batch.py), not just this one.
    return torch.cat([draw_anyway(probs[r : r + 1], generator) for r, generator in enumerate(generators)])


def sample_rows_fast(
    logits: Tensor, params: SamplingTensors, previous: Tensor | None, generators: list[torch.Generator | None]
) -> Tensor:
    """`sample_rows` for a quantized model: each row in one C++ call (csrc/sampling.cpp `sample_rows`: its ~20
    small ops cost ~3x as much right after a step as warm), else by the ops. The same draws from the same
    generators left in the same states, but where top-p's running sum lies within float rounding of its cut."""
    if not native_sampler_serves(logits):
        return sample_rows(logits, params, previous, generators)
    drawn = []
    for r, (generator, settings) in enumerate(zip(generators, params.per_row, strict=True)):
        row = logits if len(generators) == 1 else logits[r : r + 1]
        window = None if previous is None else previous[r : r + 1].to(torch.int32)
        chosen = torch.ops.fishtts.sample_rows(row, window, *settings, generator)
        if not chosen.numel():  # a logit not finite: the ops' rule for it (nothing was drawn)
            chosen = sample_rows(row, params.row(r), window, [generator])
        drawn.append(chosen)
    return drawn[0] if len(drawn) == 1 else torch.cat(drawn)


def sample_token(
    logits: Tensor, params: SamplingTensors, previous: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """One id (a 0-d int tensor) from 1-D `logits`."""
    return sample_rows(logits[None], params, None if previous is None else previous[None], [generator])[0]
