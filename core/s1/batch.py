"""Cross-request batching for the Dual-AR: many generations in flight, each in its own KV-cache slot.

`prefill` runs one sequence's prompt into its slot and samples its first frame; `decode_step` advances
any set of sequences by one frame in one batched slow step (each row attends over its own slot) and
one batched fast stack. Every sequence keeps its own sampling settings, generator and penalty
history, so a seeded sequence makes the same frames alone or batched (up to float rounding of the
batched matrix products, which can only matter at exact near-ties). The rules are those of
generate.py: a scheduler drives these two functions instead of `generate`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..lm import paths
from ..lm.prefixes import MIN_PREFIX, PrefixCache
from ..lm.step_threads import StepThreads
from .compile import compiled_steps
from .generate import frame_budget, penalty_window, sample_frames
from .lm import DualARTransformer
from .sampling import WINDOW, SamplingSettings, SamplingTensors

# Prompt positions prefilled per scheduler admission round (one prompt longer than that alone): bounds
# how long one round holds up the running decode batch. Prompts are prefilled one by one.
PREFILL_ROWS = 768


@dataclass(eq=False)
class S1Sequence:
    """One generation: what the caller sets (prompt and rules) and its progress (set here)."""

    prompt: Tensor  # [1 + N, L]
    im_end_id: int
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    max_new_frames: int = 0  # 0: up to max_seq_len
    generator: torch.Generator | None = None
    prefix_length: int = 0  # prompt positions that depend on the references only (prompt.reference_length)
    slot: int = -1
    budget: int = 0
    frames: list[Tensor] = field(default_factory=list)
    history: Tensor | None = None  # [1 + N, max(16, budget)]: frames of the decode loop (not the prefill's)
    sampling: SamplingTensors | None = None  # the settings on the model's device (made once, at prefill)
    stopped: bool = False  # ended on <|im_end|>
    finished: bool = False

    @property
    def position(self) -> int:
        """Where the newest frame goes when it is fed back."""
        return self.prompt.size(1) + len(self.frames) - 1

    @property
    def last(self) -> Tensor | None:
        return self.frames[-1] if self.frames else None

    @property
    def ends_with_audio(self) -> bool:
        """Whether the last frame is audio: yes unless it is the <|im_end|> frame."""
        return not self.stopped

    @staticmethod
    def audio_codes(frame: Tensor) -> Tensor:
        """A frame's codes for the codec, [N, 1]."""
        return frame[1:, None].long()

    def window(self) -> Tensor | None:
        return None if not self.frames else penalty_window(self.history, len(self.frames) - 1)

    def accept(self, frame: Tensor) -> Tensor:
        if self.frames:
            self.history[:, len(self.frames) - 1] = frame
        self.frames.append(frame)
        self.stopped = bool(frame[0] == self.im_end_id)
        self.finished = self.stopped or len(self.frames) >= self.budget
        return frame

    def codes(self) -> Tensor:
        """[N, F] for the codec, without the <|im_end|> frame."""
        frames = torch.stack(self.frames, dim=1).cpu()
        return (frames[1:, :-1] if self.stopped else frames[1:]).clone()


@torch.inference_mode()
def prefill(model: DualARTransformer, sequence: S1Sequence, slot: int, prefixes: PrefixCache | None = None) -> Tensor:
    """Run `sequence`'s prompt into cache `slot` (set up with enough slots and length) → its first frame.
    With `prefixes`, a reusable prefix is prefilled on its own, or copied from there (prefixes.py)."""
    device = model.norm.weight.device
    length = sequence.prompt.size(1)
    sequence.budget = frame_budget(model, length, sequence.max_new_frames)
    if length + sequence.budget > model.cache_length or slot >= model.cache_batch:
        raise ValueError(f"slot {slot} / {length + sequence.budget} positions exceed the caches set up")
    sequence.slot = slot
    sequence.history = torch.zeros(
        (sequence.prompt.size(0), max(WINDOW, sequence.budget)), dtype=torch.int, device=device
    )
    prompt = sequence.prompt.to(device=device, dtype=torch.int)[None]
    start = sequence.prefix_length if prefixes is not None and MIN_PREFIX <= sequence.prefix_length < length else 0
    if start:
        key = PrefixCache.key(sequence.prompt[:, :start])
        if not prefixes.restore(model, key, start, slot):
            model.slow_stack(prompt[..., :start], torch.arange(start, device=device), slot=slot)
            prefixes.keep(model, key, start, slot)
    logits, hidden = model.forward_slow(prompt[..., start:], torch.arange(start, length, device=device), slot=slot)
    sequence.sampling = sequence.settings.as_tensors(device)
    frame = sample_frames(model, logits, hidden, [sequence.sampling], [None], [sequence.generator])[0]
    sequence.accept(frame)
    return frame


@torch.inference_mode()
def next_frames(model: DualARTransformer, sequences: list[S1Sequence], static_slots: int | None = None) -> list[Tensor]:
    """Every (unfinished) sequence's next frame, all in one batched step, not yet accepted.

    `static_slots=n` steps all n cache slots with fixed shapes (`decode_static`, what CUDA graphs
    replay; compile.py's compiled steps when the model has them), sampling the sequences' rows only."""
    if any(s.finished for s in sequences):
        raise ValueError("decode_step got a finished sequence")
    device = model.norm.weight.device
    columns = torch.stack([s.frames[-1] for s in sequences]).unsqueeze(-1)
    fast_step, rows = None, None
    if static_slots is None:
        logits, hidden = model.forward_slow_rows(columns, [s.slot for s in sequences], [s.position for s in sequences])
    else:
        steps = compiled_steps(model)
        rows = torch.tensor([s.slot for s in sequences], device=device)
        every = torch.zeros((static_slots, *columns.shape[1:]), dtype=columns.dtype, device=device)
        positions = torch.zeros(static_slots, dtype=torch.long, device=device)
        every[rows] = columns
        positions[rows] = torch.tensor([s.position for s in sequences], device=device)
        logits, hidden = steps.slow(every, positions)
        fast_step = steps.fast
    frames = sample_frames(
        model,
        logits,
        hidden,
        [s.sampling for s in sequences],
        [s.window() for s in sequences],
        [s.generator for s in sequences],
        rows,
        fast_step,
    )
    return list(frames)


@torch.inference_mode()
def decode_step(model: DualARTransformer, sequences: list[S1Sequence]) -> list[Tensor]:
    """Advance every (unfinished) sequence by one frame, all in one batched step; returns the new frames."""
    return [s.accept(frame) for s, frame in zip(sequences, next_frames(model, sequences), strict=True)]


class S1Stepper:
    """The Dual-AR as core/scheduler.py drives it. The fast stack samples inside the batched step, so a
    failing draw fails that step's batch (v0.2's stepper samples after its model step, and a sequence
    whose rows fail there samples alone). On CPU each step runs torch's own ops on one thread or on its
    pool, whichever measures faster here (step_threads.py)."""

    prefill_rows = PREFILL_ROWS

    def __init__(self, model: DualARTransformer):
        self.model = model
        self.prefixes = PrefixCache()
        self.step_threads = StepThreads(cpu=model.norm.weight.device.type == "cpu")

    def setup_caches(self, slots: int, zeroed: bool) -> None:
        self.model.setup_caches(slots, self.model.config.max_seq_len, zeroed=zeroed or None)

    def prefill(self, jobs: list[tuple[list[S1Sequence], list[int]]]) -> list[Exception | None]:
        """Each job's sequences prefilled one at a time (samples of one prompt too); per job, the error
        that stopped it."""
        errors: list[Exception | None] = []
        for sequences, slots in jobs:
            try:
                for sequence, slot in zip(sequences, slots, strict=True):
                    prefill(self.model, sequence, slot, self.prefixes)
            except Exception as exc:  # noqa: BLE001 - this job's own failure
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    def forward(self, sequences: list[S1Sequence], static_slots: int | None) -> list[Tensor]:
        return self.step_threads.run(lambda: next_frames(self.model, sequences, static_slots))

    def threads(self):
        return contextlib.nullcontext()  # (chosen per step inside forward, which alone is timed)

    def bound(self):
        return paths.bound(self.model)
