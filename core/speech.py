"""One synthesis request as a stream of audio chunks, in order, while the rest is still being made.

Text segments (core/text/split.py) each become one sequence in the batch scheduler, up to
`max_parallel` of them at a time; every frame goes into that segment's streaming codec decoder, whose
chunks are decoded on the scheduler thread as soon as no later code can change them, a segment's
only once the segments before it are generated (their audio is needed first). The consumer iterates
the chunks of segment 0, then 1, ...; where two segments meet, each side is faded over a few
milliseconds so the join cannot click.

Streaming or not, a request produces the same samples: the decode kernels are batch-invariant and
the chunks depend only on the codes, never on timing. `synthesize` is `concatenate(stream)`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import Tensor

from .scheduler import Cancelled, GeneratedSequence, Job, Scheduler

JOIN_FADE_SECONDS = 0.005
# Streamed, the later segments join once the first one's decoded audio is this far ahead of its playback:
# a prompt's prefill holds up the decode steps (~0.4 s for a 10 s reference on 2 cores), and joining at
# the first chunk stalled playback by ~0.7 s. They join too once it falls behind (slower than real time,
# playback stalls anyway, and decoding segments together is what makes up time).
JOIN_AHEAD_SECONDS = 1.0


class ChunkDecoder(Protocol):
    """A codec's streaming decoder as the stream drives it (core/vqgan/streaming.py, core/s1/codec/chunks.py)."""

    done: bool  # every pushed code's audio was returned

    def push(self, codes: Tensor) -> None: ...

    def chunk_ready(self, final: bool = False) -> bool: ...

    def chunks(self, final: bool = False, limit: int | None = None) -> list[np.ndarray]: ...


class StreamedSequence(GeneratedSequence, Protocol):
    ends_with_audio: bool  # whether the sequence's last frame is audio (else a stop frame)

    def audio_codes(self, frame: Tensor) -> Tensor: ...


@dataclass(eq=False)
class Segment:
    index: int
    sequence: StreamedSequence
    decoder: ChunkDecoder
    pending: Tensor | None = None  # the newest frame: kept back until we know it is not the stop frame
    generated: bool = False  # the LM is done with it
    decoding: bool = False  # a decode task is queued or running
    chunks: list[np.ndarray] = field(default_factory=list)  # decoded, not yet taken
    complete: bool = False  # every chunk is decoded


class SpeechStream:
    """Iterate for mono float32 chunks at the codec's rate; `cancel()` (or closing the iterator)
    stops the generation and frees the scheduler's slots."""

    def __init__(
        self,
        scheduler: Scheduler,
        new_decoder: Callable[[], ChunkDecoder],
        sample_rate: int,
        sequences: list[StreamedSequence],
        max_parallel: int = 4,
        progress: Callable[[], None] | None = None,
        first_audio_alone: bool = False,
    ):
        """`new_decoder()` makes one segment's codec decoder; `progress`, if given, is called (on the
        scheduler thread) for every generated frame. Up to `max_parallel` segments generate at once;
        `first_audio_alone`: the first alone until its audio is JOIN_AHEAD_SECONDS ahead of playback (from
        its first chunk), falls behind it, or is generated: a second prompt's prefill would delay the
        first audio, and the later segments' audio is needed only once the first has played."""
        if not sequences:
            raise ValueError("nothing to synthesize")
        self.scheduler = scheduler
        self.segments = [Segment(i, seq, new_decoder()) for i, seq in enumerate(sequences)]
        self.max_parallel = max(1, min(max_parallel, scheduler.max_batch))
        self.progress = progress
        self.sample_rate = sample_rate
        self.fade = int(JOIN_FADE_SECONDS * self.sample_rate)
        self._changed = threading.Condition()
        self._error: BaseException | None = None
        self._next_submit = 0
        self._generating = 0  # segments submitted and not yet generated
        self._parallel = 1 if first_audio_alone else self.max_parallel
        self._first_chunk_at: float | None = None  # when the first segment's first chunk was decoded
        self._first_decoded_s = 0.0  # seconds of the first segment's audio decoded
        self._cancelled = False
        self.started = time.perf_counter()
        self.first_audio_at: float | None = None
        self._submit()

    # -- the consumer ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            for segment in self.segments:
                yield from self._segment_chunks(segment)
        finally:
            self.cancel()  # closed before the end: stop the generation

    def _segment_chunks(self, segment: Segment) -> Iterator[np.ndarray]:
        last_segment = segment.index == len(self.segments) - 1
        first = True
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._error is not None or segment.chunks or segment.complete)
                if self._error is not None:
                    raise self._error
                if not segment.chunks:
                    return
                chunk = segment.chunks.pop(0)
                is_last = segment.complete and not segment.chunks
            if first and segment.index > 0:
                chunk = _fade(chunk, self.fade, rising=True)
            if is_last and not last_segment:
                chunk = _fade(chunk, self.fade, rising=False)
            first = False
            if self.first_audio_at is None:
                self.first_audio_at = time.perf_counter()
            yield chunk

    @property
    def finished(self) -> bool:
        """Every chunk was decoded and taken."""
        return all(s.complete and not s.chunks for s in self.segments)

    def cancel(self) -> None:
        """Stop generating (a no-op once the stream has ended); iterating raises Cancelled after it."""
        with self._changed:
            if self._cancelled or self.finished:
                return
            self._cancelled = True
            if self._error is None:
                self._error = Cancelled("the synthesis was cancelled")
            self._changed.notify_all()
        self.scheduler.cancel(self)

    @property
    def time_to_first_audio(self) -> float | None:
        return None if self.first_audio_at is None else self.first_audio_at - self.started

    # -- the scheduler thread --------------------------------------------------------------

    def _submit(self) -> None:
        """Submit the next segments until `_parallel` of them are generating."""
        while True:
            with self._changed:
                if self._cancelled or self._next_submit >= len(self.segments) or self._generating >= self._parallel:
                    return
                segment = self.segments[self._next_submit]
                self._next_submit += 1
                self._generating += 1
            job = Job(
                [segment.sequence],
                lambda _, frame, segment=segment: self._on_frame(segment, frame),
                lambda error, segment=segment: self._on_generated(segment, error),
                owner=self,
            )
            try:
                self.scheduler.submit(job)
            except RuntimeError as exc:  # closed: the model is being unloaded
                self._fail(exc)
                return

    def _on_frame(self, segment: Segment, frame: Tensor) -> None:
        if self.progress is not None:
            self.progress()
        if segment.pending is not None:
            segment.decoder.push(segment.sequence.audio_codes(segment.pending))
        segment.pending = frame
        self._maybe_decode(segment)

    def _on_generated(self, segment: Segment, error: BaseException | None) -> None:
        if error is not None:
            self._fail(error)
            return
        if segment.pending is not None and segment.sequence.ends_with_audio:
            segment.decoder.push(segment.sequence.audio_codes(segment.pending))
        segment.pending = None  # else the stop frame (or, for v0.2, the budget's last frame) is not audio
        segment.generated = True
        for later in self.segments[segment.index :]:  # a later one may have been waiting for this one
            self._maybe_decode(later)
        with self._changed:
            self._generating -= 1
            self._parallel = self.max_parallel
        self._submit()

    def _maybe_decode(self, segment: Segment) -> None:
        """Queue a decode task for the segment if it has audio to give and none is queued. A segment is
        decoded only once every earlier one is generated: its audio is not needed before theirs, and
        decoding it early would take time from the segment being played."""
        if segment.decoding or segment.complete or self._cancelled:
            return
        if not all(earlier.generated for earlier in self.segments[: segment.index]):
            return
        if not segment.decoder.chunk_ready(final=segment.generated) and not segment.generated:
            return
        segment.decoding = True
        try:
            task = self.scheduler.call(lambda: self._decode(segment), priority=segment.index, owner=self)
        except RuntimeError as exc:
            self._fail(exc)
            return
        task.add_done_callback(self._task_ended)

    def _task_ended(self, task) -> None:
        """`_decode` reports its own errors; a task that failed without running (the scheduler died) is
        reported here, or the consumer would wait for its chunks forever."""
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())

    def _decode(self, segment: Segment) -> None:
        """One chunk per task: the consumer gets each as soon as it is decoded, and LM steps run between."""
        try:
            final = segment.generated
            chunks = segment.decoder.chunks(final=final, limit=1)
        except Exception as exc:  # noqa: BLE001 - delivered to the consumer
            self._fail(exc)
            return
        with self._changed:
            segment.chunks.extend(chunks)
            segment.complete = final and segment.decoder.done
            segment.decoding = False
            if segment.index == 0 and chunks and self._parallel < self.max_parallel:
                now = time.perf_counter()
                self._first_chunk_at = self._first_chunk_at or now
                self._first_decoded_s += sum(c.size for c in chunks) / self.sample_rate
                ahead = self._first_decoded_s - (now - self._first_chunk_at)
                if ahead >= JOIN_AHEAD_SECONDS or ahead < 0:
                    self._parallel = self.max_parallel
            self._changed.notify_all()
        self._submit()
        self._maybe_decode(segment)

    def _fail(self, error: BaseException) -> None:
        with self._changed:
            if self._error is None:
                self._error = error
            self._changed.notify_all()
        if not isinstance(error, Cancelled):
            self.scheduler.cancel(self)


def _fade(chunk: np.ndarray, length: int, rising: bool) -> np.ndarray:
    """A raised-cosine fade over the first (rising) or last `length` samples."""
    n = min(length, chunk.size)
    if n == 0:
        return chunk
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float32))
    chunk = chunk.copy()
    if rising:
        chunk[:n] *= ramp
    else:
        chunk[-n:] *= ramp[::-1]
    return chunk
