"""What every route shares (settings, model registry, work queue, voice store, folder guards), the
`get_ctx` dependency that hands it to the routes, and `admit`: the one way a request gets a model.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from core.engine import TTSEngine
from core.paths import FolderGuard
from core.reference import MIN_REFERENCE_PEAK_DB, MIN_REFERENCE_SECONDS

from .registry import Bundle, ModelNotFound, ModelRegistry
from .schemas import check_text_length
from .settings import Settings
from .voices import VoiceStore
from .work_queue import WorkQueue

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)


@dataclass
class ServerContext:
    settings: Settings
    registry: ModelRegistry
    queue: WorkQueue
    voices: VoiceStore
    checkpoints: FolderGuard
    references: FolderGuard
    load_errors: dict[str, str] = field(default_factory=dict)  # startup loads that failed, for /v1/health
    # Who sets the models when clients may not (a Ray Serve deployment config); PUT/DELETE then answer 409.
    models_fixed_by: str | None = None
    # Loads one at a time (the registry's rule), the ones waiting on the event loop, not on worker threads
    load_turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def create(cls, settings: Settings) -> ServerContext:
        settings.references_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            settings=settings,
            registry=ModelRegistry(settings.max_models),
            queue=WorkQueue(settings.workers, settings.max_queue),
            voices=VoiceStore(settings.references_dir),
            checkpoints=FolderGuard(settings.checkpoints_dir, "checkpoints", "checkpoints"),
            references=FolderGuard(settings.references_dir, "references", "references"),
        )

    def replacements(self) -> dict[str, str]:
        """Server folders as clients know them, for error messages."""
        return {**self.checkpoints.replacements(), **self.references.replacements()}

    def clip_limits(self, voice: bool = True) -> dict:
        """A clip's bounds (core.request.Reference's): its length, and for a voice (not a clip the codec merely
        encodes) its loudness."""
        limits = {"min_seconds": MIN_REFERENCE_SECONDS, "max_seconds": self.settings.max_reference_seconds}
        return {**limits, "min_peak_db": MIN_REFERENCE_PEAK_DB} if voice else limits

    def check_model(self, name: str) -> None:
        """404 for a name that is neither loaded nor loading (before any other work on the request)."""
        if name not in self.registry.names() and name not in self.registry.loading():
            raise ModelNotFound(name)

    def admit(self, name: str) -> Admission:
        """A lease on model `name` and a place in the queue, at once or not at all (404 / 503)."""
        bundle = self.registry.acquire(name)
        try:
            self.queue.reserve()
        except BaseException:
            self.registry.release(bundle)
            raise
        return Admission(self, bundle)


async def get_ctx(request: Request) -> ServerContext:
    """The routes' dependency: the context of the app that received the request. Async, as every
    dependency here: FastAPI runs a plain function on the shared worker-thread pool, so requests blocked
    in that pool (loads waiting their turn, once) would hold up every route, /v1/health included."""
    return request.app.state.ctx


async def _disconnected(client: Request) -> None:
    """Returns once the client has gone (its body is read, so the next message is the disconnect)."""
    while (await client.receive())["type"] != "http.disconnect":
        pass


async def client_left_first(client: Request, awaited: asyncio.Future) -> bool:
    """Wait for `awaited` or for the client to leave, whichever comes first; True if the client left first."""
    gone = asyncio.ensure_future(_disconnected(client))
    for task in (awaited, gone):  # (their errors retrieved even where nobody awaits them)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        await asyncio.wait((awaited, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return gone.done() and not gone.cancelled() and not awaited.done()


def text_limited(model: type[B]):
    """`Annotated[model, Depends(...)]`: the JSON body as `model`, checked against --max-text-length."""

    async def body(data, request):
        check_text_length(data, (await get_ctx(request)).settings.max_text_length)
        return data

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    body.__signature__ = inspect.Signature(  # real types: FastAPI reads the body's model from here
        [inspect.Parameter("data", kind, annotation=model), inspect.Parameter("request", kind, annotation=Request)],
        return_annotation=model,
    )
    return Annotated[model, Depends(body)]


class Admission:
    """One admitted request: holds its model lease and queue place until it is closed *and* its work
    on the worker threads has ended, so a client that goes away cannot free a model under a running
    generation. Use it as `async with ctx.admit(name) as admission:`; a streamed response's generation
    runs to its end on a worker thread and holds the admission until then, not while a slow client
    reads (server/audio_buffer.py)."""

    def __init__(self, ctx: ServerContext, bundle: Bundle):
        self.ctx, self.bundle, self.engine = ctx, bundle, bundle.engine
        self.began = time.perf_counter()
        self._lock = threading.Lock()
        self._running = 0
        self._closed = False

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def start(self, work: Callable[[TTSEngine], T]) -> Future:
        """Start `work(engine)` on a worker thread; the admission is held until it ends (callbacks
        added to the returned future run after its release)."""
        with self._lock:
            self._running += 1
        try:
            future = self.ctx.queue.submit(work, self.engine)
        except BaseException:  # the pool is shut down: the server is stopping
            self._ended()
            raise
        future.add_done_callback(lambda _: self._ended())
        return future

    async def run_watched(self, client: Request, work: Callable[[TTSEngine], T], stop: Callable[[], None]) -> T:
        """`work(engine)` on a worker thread, awaited while `client` is watched: should it leave first, work
        still waiting for a worker is dropped (its queue place free at once), running work is told by `stop()`,
        and once that has ended ClientDisconnect is raised (nobody to answer). A few clients that gave up
        would otherwise hold the queue for as long as their work takes."""
        job = self.start(work)
        result = asyncio.wrap_future(job)

        def drop() -> None:
            if not job.cancel():
                stop()

        try:
            left = await client_left_first(client, result)
        except asyncio.CancelledError:  # the request itself cancelled: Ray Serve's answer to a client gone
            drop()  # (else it ran to its end, holding a queue place Serve had already given to another request)
            raise
        if left:
            drop()
            await asyncio.wait((result,))  # (the admission is held until the work has stopped)
            raise ClientDisconnect()
        return await result

    async def run(self, work: Callable[[TTSEngine], T]) -> T:
        """`work(engine)` on a worker thread, awaited; an accepted piece of work always runs to its end,
        even when the request awaiting it is cancelled."""
        result = asyncio.wrap_future(self.start(work))
        result.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits
        return await asyncio.shield(result)

    def close(self) -> None:
        with self._lock:
            self._closed, release = True, not self._closed and self._running == 0
        if release:
            self._release()

    def _ended(self) -> None:
        with self._lock:
            self._running -= 1
            release = self._closed and self._running == 0
        if release:
            self._release()

    def _release(self) -> None:
        self.ctx.queue.record(time.perf_counter() - self.began)
        self.ctx.queue.release()
        self.ctx.registry.release(self.bundle)
