"""What every route shares: settings, request models, the model registry, the work queue, the voice
store and the two folder guards; plus the one way to run model work for a request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from core.engine import TTSEngine

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

    async def run_with_model(self, name: str, work: Callable[[TTSEngine], T]) -> T:
        """Run `work(engine)` on the queue, holding a lease on model `name` until it finishes.

        The lease is returned by the job itself, so a client that disconnects cannot release the
        model while its generation is still running.
        """
        try:
            bundle = self.registry.acquire(name)
        except ModelLoading:
            raise ApiError(503, f"Model {name!r} is still loading; retry shortly.", headers={"Retry-After": "5"},
                           code="model_loading") from None
        except ModelNotFound:
            raise ApiError(404, "Cannot find model.", code="model_not_found") from None
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
