"""The audio of one streamed response, between the generation (a worker thread) and the client.

The generation never waits for the client: it runs to its end, puts its chunks here and returns its
queue place and model lease, so a client that reads slowly (or not at all) holds neither. The chunks
wait for the client up to a cap; a client that falls further behind loses its stream (the
generation is cancelled, the response ends early). A client that goes away closes the buffer, which
cancels the generation at its next step.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from core.audio import SAMPLE_RATE
from core.engine import SpeechStream

MAX_BUFFERED_SECONDS = 300.0  # of audio per response not yet taken by its client (~26 MB of float32)
_END = object()


class BufferOverflow(RuntimeError):
    """The client took its audio much slower than it was generated."""


class AudioBuffer:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_samples: int = int(MAX_BUFFERED_SECONDS * SAMPLE_RATE),
        sample_rate: int = SAMPLE_RATE,
    ):
        self._loop, self.max_samples, self.sample_rate = loop, max_samples, sample_rate
        self._queue: asyncio.Queue = asyncio.Queue()  # touched on the event loop only
        self._lock = threading.Lock()
        self._buffered = 0  # samples put and not yet taken
        self._closed = False
        self._stream: SpeechStream | None = None

    # -- the generation's side (a worker thread) --------------------------------------------------

    def attach(self, stream: SpeechStream) -> bool:
        """The stream to cancel when the reader goes away; False if it has gone already."""
        with self._lock:
            self._stream = stream
            return not self._closed

    def closed(self) -> bool:
        """Whether the reader has gone (the generation's work is not wanted any more)."""
        return self._closed

    def put(self, chunk: np.ndarray) -> bool:
        """Hand a chunk to the reader; False when the generation should stop (reader gone, or too far behind)."""
        with self._lock:
            if self._closed:
                return False
            if self._buffered + chunk.size > self.max_samples:
                self._push(
                    BufferOverflow(
                        f"the client fell more than {self.max_samples / self.sample_rate:g} s of audio "
                        "behind; the stream was ended"
                    )
                )
                return False
            self._buffered += chunk.size
        self._push(chunk)
        return True

    def end(self, error: BaseException | None = None) -> None:
        self._push(_END if error is None else error)

    def _push(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    # -- the reader's side (the event loop) --------------------------------------------------------

    async def next(self) -> np.ndarray | None:
        """The next chunk, None at the end; raises the generation's error."""
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # later calls see the end too
            return None
        if isinstance(item, BaseException):
            raise item
        with self._lock:
            self._buffered -= item.size
        return item

    def close(self) -> None:
        """The reader is done (or gone): drop the rest and cancel the generation if it still runs."""
        with self._lock:
            self._closed, stream = True, self._stream
        if stream is not None:
            stream.cancel()  # a no-op once it has ended
