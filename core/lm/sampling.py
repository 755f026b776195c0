"""Turning logits into a sampled id, in the original's order of operations.

Order (SPEC-generation §5.1): repetition penalty -> top-p on the un-tempered logits (dropping the
token that crosses the threshold, keeping at least one) -> temperature -> top-k -> softmax ->
exponential-race draw. Every function works on a batch of rows: logits [N, V].

On CPU the sort and the draw run in C++ (csrc/sampling.cpp, ~4x cheaper for a decode step's frame) with
the same results: the sorted values alone give the nucleus's size, and the draw advances the generator
as exponential_ does but takes the logarithm only for the ids top-p kept.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .kernels import cpu_kernels_available

# The bounds of the sampling options (the server's request schemas show these same numbers).
# The penalty divides or multiplies logits: within [0.01, 10] a logit grows at most 100x, so no
# float32 logit a model produces can overflow (1e-300 made every penalised logit inf, then NaN).
MAX_TEMPERATURE = 10.0
MIN_TEMPERATURE_DIVISOR = 1e-5  # the original divides by max(temperature, this) (logits / 1e-5 stays finite)
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 10.0
MAX_TOP_K = 1000


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or +inf logits (or masked every id): nothing meaningful to draw from."""


NON_FINITE = "the model produced NaN or infinite logits"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float | None = 0.5
    top_k: int | None = None
    repetition_penalty: float = 1.5

    def __post_init__(self):  # written so that NaN fails every check
        for name in ("temperature", "top_p", "top_k", "repetition_penalty"):
            value, whole = getattr(self, name), name == "top_k"
            if value is None and name in ("top_p", "top_k"):  # (off)
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
                raise ValueError(f"{name} must be a {'whole ' if whole else ''}number, got {value!r}")
        if not 0 < self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in (0, {MAX_TEMPERATURE:g}]")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k is not None and not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in 1..{MAX_TOP_K}")
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise ValueError(f"repetition_penalty must be in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}]")


def apply_repetition_penalty(logits: Tensor, previous: Tensor, penalty: float) -> Tensor:
    """Penalise each id present in `previous` [N, W] once (no compounding for repeats)."""
    index = previous.long()
    score = torch.gather(logits, dim=-1, index=index)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(dim=-1, index=index, src=score)


def sort_descending(logits: Tensor) -> tuple[Tensor, Tensor]:
    """torch.sort(descending=True), where the C++ sampler does not serve; on CPU numpy's argsort (~1.5x
    faster on 36k logits) gives the same sorted values (equal logits may come in another order); numpy
    has no bfloat16."""
    if logits.device.type != "cpu" or logits.dtype not in (torch.float32, torch.float64):
        return torch.sort(logits, dim=-1, descending=True)
    indices = torch.from_numpy(np.argsort(-logits.numpy(), axis=-1))
    return logits.gather(-1, indices), indices


def apply_top_p(logits: Tensor, top_p: float) -> Tensor:
    """Mask all but the nucleus, as the original's full sort does, bit for bit (but for which of several
    equal logits at the cut stays: torch.sort leaves ties in no defined order; the C++ path keeps the
    lowest ids)."""
    if native_sampler_serves(logits):
        sorted_logits = torch.ops.fishtts.sort_values_descending(logits)
        if sorted_logits.numel():  # else a NaN or +inf logit, which the full sort below treats as the original
            # The same sorted values give the same softmax and running sum; the nucleus is its k largest.
            cum_probs = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
            kept = (cum_probs <= top_p).sum(dim=-1).clamp_(min=1)  # a prefix (the sum never falls), >= 1
            return torch.ops.fishtts.keep_largest(logits, sorted_logits, kept)
    sorted_logits, sorted_indices = sort_descending(logits)
    cum_probs = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    remove_sorted = cum_probs > top_p
    remove_sorted[..., 0] = False  # always keep the most likely entry
    remove = remove_sorted.scatter(dim=-1, index=sorted_indices, src=remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def apply_top_k(logits: Tensor, top_k: int) -> Tensor:
    values, _ = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)
    pivot = values[..., -1:]
    return torch.where(logits < pivot, float("-inf"), logits)


def logits_to_probs(logits: Tensor, params: SamplingParams, previous: Tensor | None = None) -> Tensor:
    if previous is not None and params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, previous, params.repetition_penalty)
    if params.top_p is not None and params.top_p < 1.0:
        logits = apply_top_p(logits, params.top_p)
    logits = logits / max(params.temperature, MIN_TEMPERATURE_DIVISOR)
    if params.top_k is not None:
        logits = apply_top_k(logits, params.top_k)
    return torch.softmax(logits, dim=-1)


def draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """argmax(p / q), q ~ Exp(1): a multinomial draw. Returns [N] int.

    Softmax gives NaN exactly when a row held NaN or +inf logits or masked every id; argmax would
    then pick an arbitrary (often forbidden) id, so such rows raise instead (one device sync).
    """
    if native_sampler_serves(probs):
        chosen = torch.ops.fishtts.exponential_race(probs, generator)
        if chosen.numel() == 0:
            raise NonFiniteLogits(NON_FINITE)
        return chosen
    if bool(torch.isnan(probs).any()):
        raise NonFiniteLogits(NON_FINITE)
    return torch_draw(probs, generator)


def draw_anyway(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """`draw`, but rows of NaN are drawn from by torch's rule (an arbitrary id) instead of raising, so
    nothing waits for a device sync to check them."""
    if native_sampler_serves(probs):
        chosen = torch.ops.fishtts.exponential_race(probs, generator)
        if chosen.numel():
            return chosen
    return torch_draw(probs, generator)


def torch_draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / q, dim=-1).to(torch.int)


_native: dict[str, bool] = {}


def native_sampler_serves(rows: Tensor) -> bool:
    """csrc/sampling.cpp's sort and draw take float32 CPU rows [N, V] where they give torch's results.

    The draw mirrors torch's CPU exponential_ (its generator's draws and formula), which another torch
    build could change: it is checked against torch itself once per process, and torch draws otherwise.
    """
    if rows.device.type != "cpu" or rows.dtype != torch.float32 or rows.dim() != 2 or not cpu_kernels_available():
        return False
    if "ok" not in _native:  # (only the draw's check is kept: kernels switched off for a while are not)
        _native["ok"] = native_draw_matches_torch()
    return _native["ok"]


def native_draw_matches_torch() -> bool:
    """Rows of equal probabilities (the winner is the smallest q, which every draw decides) and rows of
    mostly zeros (draws skipped): the same ids, and the generators left in the same state."""
    shape = torch.Generator().manual_seed(0)
    flat = torch.ones(8, 512)
    sparse = torch.rand(8, 4096, generator=shape) * (torch.rand(8, 4096, generator=shape) < 0.01)
    for probs in (flat, sparse):
        ours, theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        if not torch.equal(torch.ops.fishtts.exponential_race(probs, ours), torch_draw(probs, theirs)):
            return False
        if not torch.equal(ours.get_state(), theirs.get_state()):
            return False
    return True


def nucleus(logits: Tensor, top_p: float, candidates: int) -> tuple[Tensor, Tensor] | None:
    """The entries apply_top_p keeps for a row [V], as (logits, ids) sorted descending, if they are
    among the top `candidates`; None when only the full sort holds them (a flat distribution)."""
    if candidates >= logits.numel():
        return None
    values, ids = torch.topk(logits, candidates)
    cum_probs = torch.cumsum(torch.exp(values - torch.logsumexp(logits, dim=-1)), dim=-1)
    if not bool(cum_probs[-1] > top_p):
        return None
    keep = cum_probs <= top_p
    keep[0] = True
    return values[keep], ids[keep]


def sample_fast(
    logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None, candidates: int = 256
) -> Tensor:
    """Like `sample` for rows [N, V] without a penalty, but the nucleus is looked for among the top
    `candidates` first and only those are drawn from: ~30x cheaper than sorting 36k text logits on
    CPU. The kept set is the same unless a cumulative probability lies within float rounding of top_p
    (its normaliser is summed in another order); the random stream is consumed differently."""
    if params.top_p is None or params.top_p >= 1.0:
        return sample(logits, params, None, generator)
    tokens = []
    for row in logits:
        found = nucleus(row, params.top_p, candidates)
        if found is None:
            tokens.append(sample(row[None], params, None, generator))
            continue
        values, ids = found
        values = values / max(params.temperature, MIN_TEMPERATURE_DIVISOR)
        if params.top_k is not None:
            values = apply_top_k(values, params.top_k)
        tokens.append(ids[draw(torch.softmax(values, dim=-1), generator)].view(1).to(torch.int))
    return torch.cat(tokens)


def sample_frames_native(
    token_logits: Tensor,
    code_logits: Tensor,
    params: SamplingParams,
    window: Tensor | None,
    masked: int,
    limit_from: int | None,
    generator: torch.Generator | None,
    candidates: int,
) -> Tensor | None:
    """Frames [N, 1 + C] (int32) from token logits [N, V] (by `sample_fast`'s rule) and codebook logits [N, C, K]
    (by `logits_to_probs` with the penalty window [N, C, W], entries below `masked` and from `limit_from` on
    forbidden) in one C++ call (csrc/sampling.cpp: a frame's ~25 small ops cost twice as much right after a
    decode step as warm); the same draws but for float rounding at a cut. None where it does not serve
    (no nucleus to look for, not float32 CPU rows, or what the call leaves to the ops: then nothing was drawn)."""
    if params.top_p is None or params.top_p >= 1.0:
        return None
    if not (native_sampler_serves(token_logits) and native_sampler_serves(code_logits.flatten(0, 1))):
        return None
    penalty = params.repetition_penalty if window is not None else 1.0
    frames = torch.ops.fishtts.sample_frames(
        token_logits,
        code_logits,
        None if window is None else window.to(torch.int32),
        max(params.temperature, MIN_TEMPERATURE_DIVISOR),
        params.top_p,
        params.top_k or 0,
        penalty,
        masked,
        code_logits.size(-1) if limit_from is None else limit_from,
        candidates,
        generator,
    )
    return frames if frames.numel() else None


def sample(
    logits: Tensor, params: SamplingParams, previous: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    return draw(logits_to_probs(logits, params, previous), generator)
