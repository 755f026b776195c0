"""What every route shares: settings, request models, the model registry, the work queue, the voice
store and the two folder guards; plus the one way to run model work for a request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from core.engine import TTSEngine
from core.speech import SpeechStream

from .errors import ApiError
from .paths import FolderGuard
from .registry import ModelLoading, ModelNotFound, ModelRegistry
from .schemas import Schemas, make_schemas
from .settings import Settings
from .voices import VoiceStore
from .work_queue import QueueFull, WorkQueue

T = TypeVar("T")


@dataclass
class ServerContext:
    settings: Settings
    schemas: Schemas
    registry: ModelRegistry
    queue: WorkQueue
    voices: VoiceStore
    checkpoints: FolderGuard
    references: FolderGuard
    load_errors: dict[str, str] = field(default_factory=dict)  # startup loads that failed, for /v1/health
    # Who sets the models when clients may not (a Ray Serve deployment config); PUT/DELETE then answer 409.
    models_fixed_by: str | None = None

    @classmethod
    def create(cls, settings: Settings) -> "ServerContext":
        settings.references_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            settings=settings,
            schemas=make_schemas(settings.max_text_length),
            registry=ModelRegistry(settings.max_models),
            queue=WorkQueue(settings.workers, settings.max_queue),
            voices=VoiceStore(settings.references_dir),
            checkpoints=FolderGuard(settings.checkpoints_dir, "checkpoints", "checkpoints"),
            references=FolderGuard(settings.references_dir, "references", "references"),
        )

    def replacements(self) -> dict[str, str]:
        return {**self.checkpoints.replacements(), **self.references.replacements()}

    def check_model(self, name: str) -> None:
        if name not in self.registry.names() and name not in self.registry.loading():
            raise ApiError(404, "Cannot find model.", code="model_not_found")

    def _lease(self, name: str):
        try:
            return self.registry.acquire(name)
        except ModelLoading:
            raise ApiError(503, f"Model {name!r} is still loading; retry shortly.", headers={"Retry-After": "5"},
                           code="model_loading") from None
        except ModelNotFound:
            raise ApiError(404, "Cannot find model.", code="model_not_found") from None

    async def run_with_model(self, name: str, work: Callable[[TTSEngine], T]) -> T:
        """Run `work(engine)` on the queue, holding a lease on model `name` until it finishes.

        The lease is returned by the job itself, so a client that disconnects cannot release the
        model while its generation is still running.
        """
        bundle = self._lease(name)
        engine = bundle.engine

        def job() -> T:
            try:
                return work(engine)
            finally:
                self.registry.release(bundle)

        try:
            return await self.queue.run(job)
        except QueueFull:
            self.registry.release(bundle)
            raise

    async def stream_with_model(self, name: str, start: Callable[[TTSEngine], SpeechStream]
                                ) -> AsyncIterator[np.ndarray]:
        """Start `start(engine)` (a SpeechStream) and iterate its chunks. The queue place and the model
        lease are held until the stream ends; closing the iterator early (a client that went away)
        cancels the generation, which frees the model's batch slots at its next step."""
        bundle = self._lease(name)
        try:
            self.queue.reserve()
        except QueueFull:
            self.registry.release(bundle)
            raise
        began = time.perf_counter()
        try:
            stream = await run_in_threadpool(start, bundle.engine)
        except BaseException:
            self.queue.release()
            self.registry.release(bundle)
            raise

        async def chunks() -> AsyncIterator[np.ndarray]:
            iterator = iter(stream)
            try:
                while (chunk := await run_in_threadpool(next, iterator, None)) is not None:
                    yield chunk
            finally:
                stream.cancel()  # a no-op once it has ended
                self.queue.record(time.perf_counter() - began)
                self.queue.release()
                self.registry.release(bundle)

        return chunks()
