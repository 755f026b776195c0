"""What every route shares: settings, request models, the model registry, the work queue, the voice
store and the two folder guards; plus the one way to run model work for a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from core.engine import TTSEngine
from core.speech import SpeechStream

from .audio_buffer import AudioBuffer
from .errors import ApiError
from .paths import FolderGuard
from .registry import ModelFailed, ModelLoading, ModelNotFound, ModelRegistry
from .schemas import Schemas, make_schemas
from .settings import Settings
from .voices import VoiceStore
from .work_queue import QueueFull, WorkQueue

T = TypeVar("T")


def model_failed(name: str, reason: str) -> ApiError:
    return ApiError(503, f"Model {name!r} failed: {reason}; load it again (PUT /v1/models/{name}).",
                    code="model_failed")


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
        except ModelFailed as exc:
            raise model_failed(name, exc.args[0]) from None

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

    def stream_with_model(self, name: str, start: Callable[[TTSEngine], SpeechStream]) -> AudioBuffer:
        """Run `start(engine)` (a SpeechStream) on the queue to its end, its chunks into the returned
        buffer. The queue place and the model lease are held while it generates, not while a client
        reads (server/audio_buffer.py); closing the buffer early (a client that went away) cancels
        the generation, which frees the model's batch slots at its next step."""
        bundle = self._lease(name)
        buffer = AudioBuffer(asyncio.get_running_loop())

        def generate() -> None:
            error = None
            try:
                stream = start(bundle.engine)
                if buffer.attach(stream):
                    for chunk in stream:
                        if not buffer.put(chunk):
                            stream.cancel()
                            break
                else:
                    stream.cancel()
            except BaseException as exc:  # noqa: BLE001 - delivered to the reader
                error = exc
            finally:
                self.registry.release(bundle)
                buffer.end(error)

        try:
            self.queue.submit(generate)
        except BaseException:
            self.registry.release(bundle)
            raise
        return buffer
