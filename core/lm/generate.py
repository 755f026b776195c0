"""Autoregressive generation of semantic frames: one prefill, then one cached step per frame.

A frame is a column [1 + num_codebooks] = (text token, codebook values in the LM's 0..167 space).
Rules of the original (SPEC-generation §5.2-5.3): the prefill frame never ends generation (codebook
entries 0 and 1 masked, its text token not checked for EOS); later steps mask only entry 0 and stop
on EOS in the text row or the end value 1 in any codebook; the repetition penalty uses each
codebook's last 16 decode-loop frames and never touches the text row.

A `Sequence` is one generation in progress with its own cache slot, position, sampling parameters,
random generator and repetition window; `decode_step` advances any set of them by one frame in one
batched forward. `generate` runs one prompt (N samples as one batch); the engine's scheduler runs
many requests through `prefill_many` (the jobs admitted together: one packed forward for a quantized
model, each prompt from where its voice's kept prefix ends) and `decode_logits`.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .kernels import single_threaded_torch
from .model import ForwardResult, Transformer
from .prefixes import MIN_PREFIX, PrefixCache
from .quantize import is_quantized
from .sampling import SamplingParams, draw, draw_anyway, logits_to_probs, sample_fast, sample_frames_native

log = logging.getLogger(__name__)

REPETITION_WINDOW = 16
CODEBOOK_PAD = 0  # codebook value that embeds as nothing
CODEBOOK_END = 1  # codebook value that ends the audio
CODE_OFFSET = 2  # LM codebook value = VQ index + 2
FAST_TOP_P_CANDIDATES = 256  # `fast_sampling`: look for the text token's nucleus among the top 256 first
# Prompt positions per packed prefill call (prefill_many), and per scheduler admission round: bounds
# how long one round's prefill holds up the running decode batch. (measured: see the README)
BATCHED_PREFILL_ROWS = 768


def budget_new_frames(prompt_len: int, max_frames: int, max_seq_len: int) -> int:
    """The original's rule (its `max_new_tokens`): 0 means "fill the context"; never run past the context."""
    if prompt_len >= max_seq_len:
        raise ValueError(
            f"the prompt (the text, with the reference's codes and transcript) is {prompt_len} tokens; the model's "
            f"context is {max_seq_len}: shorten the text or the reference"
        )
    if max_frames < 0:
        raise ValueError("max_new_tokens must be >= 0")
    room = max_seq_len - prompt_len
    return room if max_frames == 0 else min(max_frames, room)


def sample_frame(
    out: ForwardResult,
    params: SamplingParams,
    window: Tensor | None,
    mask_end: bool,
    code_limit: int | None,
    generator: torch.Generator | None,
    fast_sampling: bool = False,
) -> Tensor:
    """Sample [B, 1 + C] from the last position's logits (all rows share params and generator).
    `mask_end` forbids the end value too (the prefill frame, and runs that ignore stops)."""
    token_logits, code_logits = out.token_logits[:, -1].float(), out.codebook_logits[:, -1]
    if fast_sampling:  # the whole frame in one call where it serves (the same rules)
        masked, limit_from = forbidden_codes(mask_end, code_limit)
        frame = sample_frames_native(
            token_logits, code_logits, params, window, masked, limit_from, generator, FAST_TOP_P_CANDIDATES
        )
        if frame is not None:
            return frame
    code_probs = codebook_probs(code_logits, params, window, mask_end, code_limit)
    if fast_sampling:
        token = sample_fast(token_logits, params, generator, FAST_TOP_P_CANDIDATES)
    else:
        token = draw(logits_to_probs(token_logits, params), generator)
    batch, num_codebooks, size = code_probs.shape
    codes = draw(code_probs.view(batch * num_codebooks, size), generator)
    return torch.cat([token[:, None], codes.view(batch, num_codebooks)], dim=1)


def forbidden_codes(mask_end: bool, code_limit: int | None) -> tuple[int, int | None]:
    """The codebook values never sampled: those below the first (the padding value, and the end value too
    with `mask_end`) and those from the second on (values the VQGAN cannot decode: its codebooks are
    smaller than the LM's heads; None: no such limit)."""
    return (CODEBOOK_END if mask_end else CODEBOOK_PAD) + 1, None if code_limit is None else code_limit + CODE_OFFSET


def codebook_probs(
    logits: Tensor, params: SamplingParams, window: Tensor | None, mask_end: bool, code_limit: int | None
) -> Tensor:
    """The codebooks' distributions [B, C, V] from their logits [B, C, V] and penalty windows [B, C, W]."""
    logits = logits.to(torch.float32, copy=True)  # masked in place
    batch, num_codebooks, size = logits.shape
    masked, limit_from = forbidden_codes(mask_end, code_limit)
    logits[..., :masked] = float("-inf")
    if limit_from is not None:
        logits[..., limit_from:] = float("-inf")
    previous = None if window is None else window.reshape(batch * num_codebooks, -1)
    return logits_to_probs(logits.view(batch * num_codebooks, size), params, previous).view(batch, num_codebooks, size)


def stop_rows(frames: Tensor, eos_token_id: int | Tensor) -> Tensor:
    """Which frames [R, 1 + C] end generation (after the first): EOS as the text token, or the end value
    in any codebook (`eos_token_id` one, or one a row)."""
    return (frames[:, 0] == eos_token_id) | (frames[:, 1:] == CODEBOOK_END).any(dim=1)


@dataclass(frozen=True)
class SampledFrame:
    """A sequence's next frame, sampled ahead of its `accept` by `sample_together`."""

    frame: Tensor  # [1 + C]
    stops: bool  # by stop_rows' rule (accept applies ignore_stop)


def sample_together(sequences: list[Sequence], results: list[ForwardResult]) -> list[ForwardResult | SampledFrame]:
    """What each sequence's `accept` would sample from its logits, with the distributions of sequences
    under the same rules computed in one set of ops (row by row, so each row as alone) instead of one
    set per sequence, which is where a GPU step's time went with several sequences. Each row is then
    drawn from its sequence's own generator, in sequence order, token then codes (accept's order:
    several sequences may share one generator); a device sync per set of rules and one for the stops,
    not two a sequence.

    A sequence left out (its first frame, fast sampling, a distribution with NaN) keeps its logits,
    so its `accept` samples it alone and a failure there stays with that sequence."""
    groups: dict[tuple, list[int]] = {}
    for i, seq in enumerate(sequences):
        if seq.steps > 0 and not seq.fast_sampling:
            groups.setdefault((seq.params, seq.ignore_stop, seq.code_limit), []).append(i)
    probs: dict[int, tuple[Tensor, Tensor]] = {}  # sequence -> its token's [1, V] and codebooks' [C, V]
    for (params, ignore_stop, code_limit), rows in groups.items():
        token_probs = logits_to_probs(torch.cat([results[i].token_logits[:, -1] for i in rows]).float(), params)
        code_probs = codebook_probs(
            torch.cat([results[i].codebook_logits[:, -1] for i in rows]),
            params,
            torch.stack([sequences[i].history for i in rows]),
            ignore_stop,
            code_limit,
        )
        finite = ~(token_probs.isnan().any(dim=-1) | code_probs.isnan().flatten(1).any(dim=-1))
        for r, (i, ok) in enumerate(zip(rows, finite.tolist(), strict=True)):
            if ok:
                probs[i] = token_probs[r : r + 1], code_probs[r]
    out: list[ForwardResult | SampledFrame] = list(results)
    drawn = sorted(probs)  # in sequence order, which a shared generator's stream depends on
    if drawn:
        each = []
        for i in drawn:
            (token_probs, code_probs), generator = probs[i], sequences[i].generator
            each.append(torch.cat([draw_anyway(token_probs, generator), draw_anyway(code_probs, generator)]))
        frames = torch.stack(each)
        eos = torch.tensor([sequences[i].eos_token_id for i in drawn])
        stops = stop_rows(frames.cpu(), eos).tolist()  # (the ids to the host, not the ids to the device)
        for i, frame, stop in zip(drawn, frames, stops, strict=True):
            out[i] = SampledFrame(frame, stop)
    return out


@dataclass(eq=False)
class Sequence:
    """One generation: its prompt and rules (set by the caller) and its progress (set here)."""

    prompt: Tensor  # [1 + C, T]
    budget: int  # most frames to generate, the stop frame included (budget_new_frames)
    params: SamplingParams
    eos_token_id: int
    generator: torch.Generator | None = None
    code_limit: int | None = None
    fast_sampling: bool = False  # see sampling.sample_fast: the same tokens but for rounding at the threshold
    ignore_stop: bool = False  # never sample the end value, run the whole budget (benchmarks: random weights)
    prefix_length: int = 0  # leading prompt positions only the voice decides, kept between requests (prefixes.py)
    slot: int = -1
    steps: int = 0  # frames generated
    last: Tensor | None = None  # the newest frame [1 + C]: the next input
    finished: bool = False
    frames: list[Tensor] = field(default_factory=list)  # every frame generated, in order
    history: Tensor | None = None  # [C, REPETITION_WINDOW]: the last decode-loop codebook values

    @property
    def position(self) -> int:
        """Where `last` goes when it is fed back."""
        return self.prompt.shape[1] + self.steps - 1

    ends_with_audio = False  # the last frame (stop, or the budget's last) is never decoded, as the original

    @staticmethod
    def audio_codes(frame: Tensor) -> Tensor:
        """A frame's VQ codes for the codec, [C, 1]."""
        return frame[1:, None].long() - CODE_OFFSET

    def accept(self, out: ForwardResult | SampledFrame) -> Tensor:
        """Sample the next frame from this sequence's logits [1, 1, ...] (or take the one sample_together
        drew) and advance."""
        first = self.steps == 0
        if isinstance(out, SampledFrame):
            frame, stops = out.frame, out.stops
        else:
            window = None if first else self.history.unsqueeze(0)
            frame = sample_frame(
                out, self.params, window, first or self.ignore_stop, self.code_limit, self.generator, self.fast_sampling
            )[0]
            stops = None
        if first:
            self.history = torch.zeros(frame.numel() - 1, REPETITION_WINDOW, dtype=torch.int, device=frame.device)
            stopped = False  # the prefill frame never ends generation
        else:
            self.history[:, (self.steps - 1) % REPETITION_WINDOW] = frame[1:]
            if stops is None:
                stops = bool(stop_rows(frame[None], self.eos_token_id)[0])
            stopped = not self.ignore_stop and stops
        self.steps += 1
        self.last = frame
        self.finished = stopped or self.steps >= self.budget
        self.frames.append(frame)
        return frame


def prefill(
    model: Transformer, sequences: list[Sequence], slots: list[int], prefixes: PrefixCache | None = None
) -> None:
    """Run the (shared) prompt of `sequences` once into slots[0], give every slot a copy, and sample
    each sequence's first frame from the same logits with its own generator. With `prefixes`, the
    prompt's reusable prefix is copied from there, or prefilled on its own and kept (prefixes.py)."""
    _prefill_rest(model, sequences, slots, _prefill_prefix(model, sequences[0], slots[0], prefixes))


def _prefill_prefix(model: Transformer, sequence: Sequence, slot: int, prefixes: PrefixCache | None) -> int:
    """How many of `sequence`'s prompt positions are in cache `slot` now: its `prefix_length`, copied from
    `prefixes` or prefilled there alone and kept, where the model `regroups_prefill`; else 0."""
    start = sequence.prefix_length
    if prefixes is None or not regroups_prefill(model) or not MIN_PREFIX <= start < sequence.prompt.shape[1]:
        return 0
    key = PrefixCache.key(sequence.prompt[:, :start])
    if not prefixes.restore(model, key, start, slot):
        model.prefill_cache(sequence.prompt[:, :start].to(model.output.weight.device).unsqueeze(0), slot)
        prefixes.keep(model, key, start, slot)
    return start


def _prefill_rest(model: Transformer, sequences: list[Sequence], slots: list[int], start: int) -> None:
    prompt = sequences[0].prompt[:, start:]
    out = model.prefill(prompt.to(model.output.weight.device).unsqueeze(0), slots[0], start)
    _start(model, sequences, slots, out)


def _start(model: Transformer, sequences: list[Sequence], slots: list[int], out: ForwardResult) -> None:
    """slots[0] holds the shared prompt and `out` its last logits: copy it to the other slots, sample each
    sequence's first frame with its own generator."""
    if len(sequences) > 1:
        for layer in model.layers:
            layer.attention.kv_cache.copy_slot(slots[0], slots[1:], sequences[0].prompt.shape[1])
    for seq, slot in zip(sequences, slots):
        seq.slot = slot
        seq.accept(out)


def regroups_prefill(model: Transformer) -> bool:
    """Whether a prompt's prefill may run in other groupings of positions, which round differently: several
    prompts packed into one forward (`prefill_many`) and a voice's prefix apart from the rest (prefixes.py).
    For quantized weights, whose prefill widens every weight once per call (so G prompts pay it once); not
    for float32, whose matmul rounding changes with the row count (golden parity wants each prompt whole in
    a call of its own, and its prefill has no per-call widening to share)."""
    return is_quantized(model)


def prefill_many(
    model: Transformer, jobs: list[tuple[list[Sequence], list[int]]], prefixes: PrefixCache | None = None
) -> list[Exception | None]:
    """`prefill` for several jobs (each: sequences sharing one prompt, and their slots); per job, the
    error that stopped it (None: its sequences have their first frames).

    With `regroups_prefill`, the prompts (past their kept prefixes) run packed in calls of up to
    BATCHED_PREFILL_ROWS positions (a longer prompt alone); otherwise one job per call. A failed packed
    call (one bad prompt fails the whole forward) is redone one job at a time, so a bad job fails alone."""
    errors: list[Exception | None] = [None] * len(jobs)
    starts = [0] * len(jobs)
    for j, (sequences, slots) in enumerate(jobs):
        try:
            starts[j] = _prefill_prefix(model, sequences[0], slots[0], prefixes)
        except Exception as exc:  # noqa: BLE001 - this job's own failure
            errors[j] = exc
    ready = [j for j in range(len(jobs)) if errors[j] is None]
    lengths = [jobs[j][0][0].prompt.shape[1] - starts[j] for j in ready]
    for call in _prefill_calls(model, lengths):
        call = [ready[i] for i in call]
        outs = None
        if len(call) > 1:
            try:
                outs = _forward_many(model, [jobs[j] for j in call], [starts[j] for j in call])
            except Exception:  # noqa: BLE001 - which job caused it is found by redoing them one by one
                log.info("a batched prefill of %d jobs failed; prefilling them one by one", len(call), exc_info=True)
        for i, j in enumerate(call):
            sequences, slots = jobs[j]
            try:
                if outs is None:
                    _prefill_rest(model, sequences, slots, starts[j])
                else:
                    _start(model, sequences, slots, outs[i])
            except Exception as exc:  # noqa: BLE001 - this job's own failure
                errors[j] = exc
    return errors


def _prefill_calls(model: Transformer, lengths: list[int]) -> list[list[int]]:
    """Indices into `lengths` (the positions each prompt has left to prefill) per prefill call, in order."""
    if not regroups_prefill(model):
        return [[j] for j in range(len(lengths))]
    calls: list[list[int]] = []
    rows = 0
    for j, length in enumerate(lengths):
        if calls and rows + length <= BATCHED_PREFILL_ROWS:
            calls[-1].append(j)
            rows += length
        else:
            calls.append([j])
            rows = length
    return calls


def _forward_many(
    model: Transformer, jobs: list[tuple[list[Sequence], list[int]]], starts: list[int]
) -> list[ForwardResult]:
    device = model.output.weight.device
    prompts = [seqs[0].prompt[:, start:].to(device) for (seqs, _), start in zip(jobs, starts, strict=True)]
    out = model.prefill_many(prompts, [slots[0] for _, slots in jobs], starts)
    return [ForwardResult(out.token_logits[g : g + 1], out.codebook_logits[g : g + 1]) for g in range(len(jobs))]


def decode_step(model: Transformer, sequences: list[Sequence], static_slots: int | None = None) -> list[Tensor]:
    """Advance every sequence by one frame in one batched forward; returns their new frames.

    `static_slots=n` decodes all n cache slots with the static-shape path (fixed shapes for CUDA
    graphs): slots without a sequence compute a throwaway row at position 0, which the prefill of
    the slot's next sequence overwrites before anything reads it.
    """
    with decode_threads(model):
        results = sample_together(sequences, decode_logits(model, sequences, static_slots))
        return [seq.accept(out) for seq, out in zip(sequences, results, strict=True)]


def decode_threads(model: Transformer):
    """The context a decode step runs in: on CPU, torch's small ops on one thread (see kernels)."""
    return single_threaded_torch() if model.output.weight.device.type == "cpu" else nullcontext()


def decode_logits(
    model: Transformer, sequences: list[Sequence], static_slots: int | None = None
) -> list[ForwardResult]:
    """The batched forward of `decode_step`: each sequence's logits [1, 1, ...], not yet sampled
    (`sample_together` samples them, and leaves a sequence whose rows fail to its own `accept`)."""
    device = model.output.weight.device
    decode = getattr(model, "compiled_decode", None) or model.decode
    if static_slots is None:
        rows = list(range(len(sequences)))
        x = torch.stack([seq.last for seq in sequences]).unsqueeze(-1)
        slots = torch.tensor([seq.slot for seq in sequences], device=device)
        positions = torch.tensor([seq.position for seq in sequences], device=device)
        out = decode(x, slots, positions, False)
    else:
        rows = [seq.slot for seq in sequences]
        x = torch.zeros(static_slots, sequences[0].last.numel(), dtype=sequences[0].last.dtype, device=device)
        positions = torch.zeros(static_slots, dtype=torch.long, device=device)
        for seq in sequences:
            x[seq.slot], positions[seq.slot] = seq.last, seq.position
        out = decode(x.unsqueeze(-1), torch.arange(static_slots, device=device), positions, True)
    return [ForwardResult(out.token_logits[r : r + 1], out.codebook_logits[r : r + 1]) for r in rows]


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    params: SamplingParams,
    num_samples: int = 1,
    code_limit: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    static_cache: bool = False,
    ignore_stop: bool = False,
    fast_sampling: bool = False,
    progress=None,
) -> list[Tensor]:
    """Generated frames per sample, each [1 + C, n] in the prompt's dtype (stop frame included).

    The samples run as one batch (one prefill, then one forward per step for all of them); a list of
    generators gives each sample its own random stream. `static_cache=True` decodes over the whole
    cache with masks (fixed shapes for CUDA graphs).
    `progress`, if given, is called once per step (e.g. a tqdm bar's update).
    """
    cfg = model.config
    rows, prompt_len = prompt.shape
    if rows != 1 + cfg.num_codebooks:
        raise ValueError(f"prompt must have {1 + cfg.num_codebooks} rows, got {rows}")
    budget = budget_new_frames(prompt_len, max_new_tokens, cfg.max_seq_len)
    generators = generator if isinstance(generator, list) else [generator] * num_samples
    sequences = [
        Sequence(prompt, budget, params, eos_token_id, g, code_limit, fast_sampling, ignore_stop) for g in generators
    ]
    model.setup_caches(num_samples, prompt_len + budget, zeroed=static_cache or None)
    prefill(model, sequences, list(range(num_samples)))
    if progress is not None:
        progress()
    while not all(seq.finished for seq in sequences):
        decode_step(model, [seq for seq in sequences if not seq.finished], num_samples if static_cache else None)
        if progress is not None:
            progress()
    return [torch.stack(seq.frames, dim=1).to(prompt.dtype).cpu() for seq in sequences]


def frames_to_codes(frames: Tensor) -> Tensor:
    """VQ codes [C, n - 1] from generated frames: the last frame (stop or budget) is dropped."""
    return frames[1:, :-1] - CODE_OFFSET
