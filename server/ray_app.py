"""Ray Serve: the same HTTP API on many replicas, across GPUs and machines (`pip install fishtts[ray]`).

    serve run server.ray_app:app checkpoints_dir=/srv/fishtts/checkpoints load=default max_replicas=4
    serve deploy serve_config.yaml

Each replica is the single-process server's own app (`create_app(settings)`: every route, middleware
and error shape) holding its models and its batch scheduler; Serve's HTTP proxy spreads requests over
the replicas and adds or removes replicas on the number of requests in flight. The models are the
deployment's (arguments `load` and `models`), loaded before a replica takes traffic; PUT/DELETE
/v1/models answer 409. Saved voices live in `references_dir`, a folder every replica mounts.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve import Application
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.engine import default_max_batch

from .app import create_app, parse_load_spec
from .routes.models import load_bundle
from .schemas import MODEL_NAME_PATTERN, LoadModelRequest
from .settings import ENV_PREFIX, Settings, env_name

DEPLOYMENT_NAME = "fishtts"
# server settings a deployment decides, refused as arguments rather than silently ignored
SET_BY_DEPLOYMENT = {
    "workers": "a replica's batch (max_batch_size)",
    "max_queue": "twice a replica's batch plus max_waiting",
    "listen": "Serve's (http_options: host and port)",
}
REPLICA_HEADER = b"x-fishtts-replica"
MODELS_SET_BY = "the Ray Serve deployment config"


@dataclass
class Scaling:
    """Deployment arguments that are not server settings."""

    min_replicas: int = 1
    max_replicas: int = 1
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica: 1 on GPU nodes (the replica then loads on the GPU Ray gives it)
    max_waiting: int = 0  # requests a replica queues behind a full batch (0 = one more batch)

    def __post_init__(self):
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.max_waiting < 0:
            raise ValueError("num_cpus, num_gpus and max_waiting must be >= 0")


def split_args(args: dict[str, Any]) -> tuple[Settings, Scaling, dict[str, dict]]:
    """`serve run` key=value strings or a config's `args` mapping -> settings, scaling, models to load.

    Settings fields take the same values as their `FISHTTS_*` variables (which are read too, where the
    application is built); `load` takes `--load` specs (space-separated, or a list); `models` maps
    names to PUT /v1/models bodies.
    """
    setting_names = {f.name for f in fields(Settings)}
    scaling_names = {f.name for f in fields(Scaling)}
    if set_here := sorted(set(args) & set(SET_BY_DEPLOYMENT)):
        raise ValueError("; ".join(f"{name} is {SET_BY_DEPLOYMENT[name]}" for name in set_here))
    unknown = sorted(set(args) - setting_names - scaling_names - {"models"})
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)}; use server settings "
            f"({', '.join(sorted(setting_names - set(SET_BY_DEPLOYMENT)))}), {', '.join(sorted(scaling_names))} "
            "or models"
        )
    scaling = Scaling(**{k: _scaling_value(k, v) for k, v in args.items() if k in scaling_names and v is not None})
    # FISHTTS_* variables where the application is built (e.g. the API key), then the arguments (a blank one,
    # YAML's null, is not given: FISHTTS_API_KEY stays the key)
    environ = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    environ.update(
        {env_name(k): Settings.env_text(k, v) for k, v in args.items() if k in setting_names and v is not None}
    )
    settings = Settings.from_env(environ)
    models = {}
    for spec in settings.load:
        name, body = parse_load_spec(spec)  # a BODY.json is read here, where the application is built
        models[name] = body
    declared = args.get("models") or {}
    if not isinstance(declared, dict):
        raise TypeError("models: a mapping of model names to PUT /v1/models bodies (in a config file's args)")
    for name, body in declared.items():
        if name in models or not re.match(MODEL_NAME_PATTERN, name):
            raise ValueError(f"models: {name!r} is declared twice or is not a valid model name")
        models[name] = LoadModelRequest.model_validate(body)
    if not models:
        raise ValueError("declare the models to serve: load=NAME[=BODY.json] or a `models` mapping")
    # (the fields given only: an S1 body filled with the v0.2 sections' defaults is refused as both)
    return (
        replica_settings(settings, scaling),
        scaling,
        {n: b.model_dump(exclude_unset=True) for n, b in models.items()},
    )


def replica_settings(settings: Settings, scaling: Scaling) -> Settings:
    """What one replica runs with: absolute folders (replicas do not share the builder's working
    directory), the device Ray gives it, and a queue sized to its batch."""
    if scaling.num_gpus == 0 and (settings.device or "cpu") != "cpu":
        raise ValueError(f"device={settings.device} needs num_gpus=1 (Ray assigns each replica its GPU)")
    if scaling.num_gpus > 0 and (settings.device or "cuda") != "cuda":
        raise ValueError(f"device={settings.device}: with num_gpus, a replica sees only the GPU Ray gave it (cuda)")
    batch = settings.max_batch_size or default_max_batch(torch.device("cpu"))  # pinned: autoscaling targets it
    return replace(
        settings,
        checkpoints_dir=Path(settings.checkpoints_dir).expanduser().absolute(),
        references_dir=Path(settings.references_dir).expanduser().absolute(),
        load=(),  # loaded by the replica before it takes traffic, not in the background
        device=settings.device or ("cuda" if scaling.num_gpus else "cpu"),
        max_batch_size=batch,
        workers=batch,
        # Twice what Serve sends it (serve_ongoing): Serve frees a request's place as soon as its client
        # leaves, the replica only once its work has stopped (a decode step later), and in between Serve
        # sends the next; with equal limits the replica refused it with 503 busy (7-15 of 16 requests
        # right after 16 clients gave up), which Serve's own queue is there to spare the clients.
        max_queue=2 * serve_ongoing(batch, scaling),
    )


def serve_ongoing(batch: int, scaling: Scaling) -> int:
    """The requests Serve gives one replica at once: its batch plus max_waiting."""
    return batch + (scaling.max_waiting or batch)


def deployment_options(settings: Settings, scaling: Scaling) -> dict:
    """Serve's knobs: a replica takes at most what it batches plus its queue; autoscaling aims at a
    full batch per replica before it adds one."""
    return {
        "max_ongoing_requests": serve_ongoing(settings.max_batch_size, scaling),
        "autoscaling_config": {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "initial_replicas": max(scaling.min_replicas, 1),
            "target_ongoing_requests": settings.max_batch_size,
        },
        "ray_actor_options": {"num_cpus": scaling.num_cpus, "num_gpus": scaling.num_gpus},
    }


class ReplicaHeader:
    """`X-Fishtts-Replica` on every response; and one `X-Request-ID`: Serve's proxy adds the id it gave
    the request, so ours is dropped. (Ours is the same id, except for a client id that is not a plain
    token, which the proxy passes on and we replace: the error body then names ours.) A client gone is
    the ASGI disconnect message, as uvicorn sends it: Serve's `receive` raises its TaskCancelledError
    instead, which the app logged as a failed request, with its traceback, after answering it 200."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        proxy_id = dict(scope["headers"]).get(b"x-request-id")

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if not (proxy_id and k == b"x-request-id")]
                message["headers"] = [*headers, (REPLICA_HEADER, self.replica)]
            await send(message)

        async def receive_or_disconnect() -> Message:
            try:
                return await receive()
            except TaskCancelledError:
                return {"type": "http.disconnect"}

        await self.app(scope, receive_or_disconnect, send_tagged)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class FishTTSReplica:
    def __init__(self, settings: Settings, models: dict[str, dict]):
        self.settings, self.models, self.ctx = settings, models, None

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        app = create_app(self.settings)
        self.ctx = app.state.ctx
        self.ctx.models_fixed_by = MODELS_SET_BY
        for name, body in self.models.items():
            try:
                await run_in_threadpool(load_bundle, self.ctx, name, LoadModelRequest.model_validate(body))
            except Exception as exc:  # noqa: BLE001 - the replica fails to start; Serve reports it and retries
                raise RuntimeError(f"model {name!r}: {getattr(exc, 'message', exc)}") from None
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_tag)
        return app

    def check_health(self) -> None:
        """Serve replaces a replica whose models went missing or failed (a dead scheduler thread: its PUT, the
        single server's cure, is not taken here)."""
        if self.ctx is None:
            return
        described = {d["name"]: d for d in self.ctx.registry.describe()}
        if missing := sorted(set(self.models) - set(described)):
            raise RuntimeError(f"models not loaded: {missing}")
        if failed := {name: d["failed"] for name, d in described.items() if d["failed"]}:
            raise RuntimeError(f"models failed: {failed}")


def app(args: dict[str, Any]) -> Application:
    """The application builder that `serve run server.ray_app:app k=v ...` and `serve deploy` call."""
    settings, scaling, models = split_args(args)
    return FishTTSReplica.options(**deployment_options(settings, scaling)).bind(settings, models)


def _scaling_value(name: str, value: Any) -> int | float:
    kind = type(getattr(Scaling, name))
    try:
        number = float(value) if kind is float else int(str(value).strip())  # (1.7 replicas is no count)
    except (ValueError, TypeError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{name}: {value!r} is not a {'number' if kind is float else 'whole number'}")
    return number
