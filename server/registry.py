"""Loaded model bundles by name, safe to load, replace and delete while requests use them.

Every request that uses a bundle holds a lease from the moment it is accepted until its response is
ready. Replacing or deleting a bundle unpublishes it at once (new requests no longer see it), then
waits until its last lease is returned before freeing it, so a running generation is never pulled
out from under. Loads run one at a time (they are the memory-hungry part); a replacement is loaded
before the old bundle is retired, so a failed load leaves the old one in service.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.engine import TTSEngine


@dataclass
class Bundle:
    name: str
    engine: TTSEngine
    info: dict  # what the client may see: device, precision, file names, ...
    loaded_at: float = field(default_factory=time.time)
    leases: int = 0

    @property
    def failure(self) -> str | None:
        """Why the bundle cannot serve (its scheduler thread died), as clients may see it."""
        error = None if self.engine is None else self.engine.failure
        return None if error is None else f"its scheduler thread died ({error.__class__.__name__})"

    def describe(self) -> dict:
        return {
            "name": self.name,
            **self.info,
            "active_requests": self.leases,
            "loaded_at": self.loaded_at,
            "failed": self.failure,
        }


class ModelNotFound(KeyError):
    pass


class TooManyModels(RuntimeError):
    pass


class ModelLoading(KeyError):
    """The name is being loaded and has no previous version to serve meanwhile."""


class ModelFailed(KeyError):
    """The bundle's scheduler died: it serves nothing until it is loaded again."""


class ModelRegistry:
    def __init__(self, max_models: int = 4):
        self.max_models = max_models
        self._bundles: dict[str, Bundle] = {}
        self._loading: set[str] = set()
        self._changed = threading.Condition()
        self._load_lock = threading.Lock()

    # -- requests ---------------------------------------------------------------------------

    def acquire(self, name: str) -> Bundle:
        with self._changed:
            bundle = self._bundles.get(name)
            if bundle is None:
                raise ModelLoading(name) if name in self._loading else ModelNotFound(name)
            if bundle.failure is not None:
                raise ModelFailed(name, bundle.failure)
            bundle.leases += 1
            return bundle

    def release(self, bundle: Bundle) -> None:
        with self._changed:
            bundle.leases -= 1
            self._changed.notify_all()

    # -- admin (blocking: call from a worker thread) ------------------------------------------

    def load(self, name: str, build: Callable[[], tuple[TTSEngine, dict]]) -> Bundle:
        """Build a bundle and publish it under `name`, retiring the one it replaces."""
        with self._load_lock:
            with self._changed:
                if name not in self._bundles and len(self._bundles) >= self.max_models:
                    raise TooManyModels(name)
                self._loading.add(name)
            try:
                engine, info = build()
            finally:
                with self._changed:
                    self._loading.discard(name)
            bundle = Bundle(name, engine, info)
            with self._changed:
                old = self._bundles.get(name)
                self._bundles[name] = bundle
            if old is not None:
                self._retire(old)
            return bundle

    def delete(self, name: str) -> None:
        with self._changed:
            bundle = self._bundles.pop(name, None)
            if bundle is None:
                raise ModelLoading(name) if name in self._loading else ModelNotFound(name)
        self._retire(bundle)

    def _retire(self, bundle: Bundle) -> None:
        with self._changed:
            self._changed.wait_for(lambda: bundle.leases == 0)
        bundle.engine.close()  # stops its scheduler thread
        bundle.engine = None  # drop the last reference to the weights
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close_all(self) -> None:
        """The server is stopping: every model's work stops now (what is running fails), so the worker
        threads return and the process can exit, instead of finishing generations no one will receive."""
        with self._changed:
            bundles = list(self._bundles.values())
        for bundle in bundles:
            bundle.engine.close()

    # -- views --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._changed:
            return sorted(self._bundles)

    def describe(self) -> list[dict]:
        with self._changed:
            return [b.describe() for _, b in sorted(self._bundles.items())]

    def loading(self) -> list[str]:
        with self._changed:
            return sorted(self._loading)
