"""Server settings: one dataclass; every field is a `--flag` and a `FISHTTS_*` environment variable.

The click options of `fishtts serve` / `python -m server` are generated from the fields below, so a
setting is declared once (name, default, help) and shows up in `--help`, the env and the README.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from core.checkpoints import DEFAULT_CHECKPOINTS_DIR
from core.engine import (
    DEFAULT_VQGAN_PRECISION,
    DEVICE_NAMES,
    DEVICE_PATTERN,
    MAX_BATCH_SIZE,
    QUANT_MODES,
    VQGAN_PRECISIONS,
)

ENV_PREFIX = "FISHTTS_"
MAX_TEXT_LENGTH = 1000
LOG_LEVELS = ("debug", "info", "warning", "error")  # the ones both logging and uvicorn know


def _opt(default, help: str, **click_kwargs):
    return field(default=default, metadata={"help": help, "click": click_kwargs})


@dataclass
class Settings:
    listen: str = _opt("127.0.0.1:8000", "HOST:PORT to bind ([::1]:8000 for IPv6). Loopback unless you opt in.")
    checkpoints_dir: Path = _opt(
        DEFAULT_CHECKPOINTS_DIR, "The only folder clients may name checkpoints, configs and tokenizers in."
    )
    references_dir: Path = _opt(
        Path("references"), "Saved voices, and the only folder `prompt_tokens` paths may point into."
    )
    load: tuple[str, ...] = _opt(
        (),
        "Load a model bundle at start: NAME (official files in the checkpoints dir) or NAME=BODY.json "
        "(a PUT /v1/models body). Repeatable.",
        multiple=True,
    )
    device: str | None = _opt(
        None, f"{DEVICE_NAMES} for every bundle (auto: CUDA when available; default: the client's choice)."
    )
    half: bool = _opt(False, "float16 instead of bfloat16 when a load request names no precision (CUDA only).")
    compile: bool = _opt(
        False, "Allow torch.compile of the decode step (a client's `compile: true` is ignored without it)."
    )
    api_key: str | None = _opt(None, "Require `Authorization: Bearer KEY` on every route but /v1/health and the docs.")
    cors_origins: str | None = _opt(None, "Comma-separated origins allowed by CORS (default: no CORS headers at all).")
    allowed_hosts: str | None = _opt(
        None,
        "Comma-separated host names clients may call the server by, besides "
        "loopback names, IP addresses and the --listen host (a guard against DNS "
        "rebinding; '*' allows any).",
    )
    allow_downloads: bool = _opt(False, "Let a load request fetch a tokenizer given as a Hugging Face repo id.")
    max_text_length: int = _opt(MAX_TEXT_LENGTH, "Longest `text` / `input` / transcript, in characters.")
    max_upload_mb: float = _opt(
        20.0,
        "Largest request body in MiB (uploads included); bigger bodies get 413. Bodies held at once, "
        "over all requests, are bounded to twice --max-queue of them (beyond: 503 + Retry-After).",
    )
    body_timeout: float = _opt(
        30.0,
        "Refuse (408) a request body that stops arriving for this many seconds, or one past 64 KiB that "
        "averages under 64 KiB/s after them: a stalled upload would otherwise hold what it sent in memory "
        "for as long as its client likes. "
        "A request's head (its request line and headers) that takes longer closes its connection.",
    )
    max_reference_seconds: float = _opt(30.0, "Longest reference clip; longer clips get 422 (5-10 s works best).")
    max_models: int = _opt(4, "Model bundles loaded at once; loading one more under a new name gets 409.")
    max_queue: int = _opt(16, "Synthesis requests running or waiting; beyond it the server answers 503 + Retry-After.")
    workers: int = _opt(
        16,
        "Worker threads that prepare requests and wait for their audio (the model itself runs "
        "on each model's scheduler thread, which batches their generations); the rest wait "
        "in the queue.",
    )
    max_batch_size: int = _opt(
        0, "Sequences one model decodes together (0 = sized to the device: 8 on CPU, 16 on CUDA)."
    )
    quantize: str = _opt(
        "",
        "int8 or int4: store every LM's weights as int8 / int4 unless its load request says otherwise "
        "(faster on CPU, approximate; see the README).",
    )
    vqgan_precision: str = _opt(
        DEFAULT_VQGAN_PRECISION,
        "auto, float32 or bfloat16: the VQGAN's decode precision unless a load request says otherwise "
        "(bfloat16: faster on CPUs with AMX / AVX512-BF16; auto: bfloat16 where it measures clearly faster here).",
    )
    stream_send_timeout: float = _opt(
        30.0,
        "Close a streamed response whose client has taken nothing for this many "
        "seconds (its generation is not held up by slow readers meanwhile).",
    )
    log_level: str = _opt(
        "info", f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]} (health polls are logged at debug only)."
    )

    def __post_init__(self):
        self.checkpoints_dir = Path(self.checkpoints_dir)
        self.references_dir = Path(self.references_dir)
        self.load = tuple(self.load or ())
        for name in ("max_text_length", "max_models", "max_queue", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.max_batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"max_batch_size must be from 0 to {MAX_BATCH_SIZE}")
        if self.quantize not in ("", *QUANT_MODES):
            raise ValueError(f"quantize must be one of {', '.join(QUANT_MODES)} or empty")
        if self.vqgan_precision not in VQGAN_PRECISIONS:
            raise ValueError(f"vqgan_precision must be one of {', '.join(VQGAN_PRECISIONS)}")
        if self.device and not re.match(DEVICE_PATTERN, self.device):
            raise ValueError(f"device must be {DEVICE_NAMES}, got {self.device!r}")
        for name in ("max_upload_mb", "body_timeout", "max_reference_seconds", "stream_send_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a number > 0")
        self.log_level = self.log_level.lower()
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_bodies_bytes(self) -> int:
        """Request bodies held at once, over all requests in progress: twice the largest bodies of the
        requests the queue admits (those beyond it are refused once read)."""
        return 2 * self.max_queue * self.max_body_bytes

    @property
    def allowed_host_names(self) -> list[str]:
        return [self.host_port[0], *(h.strip() for h in (self.allowed_hosts or "").split(",") if h.strip())]

    @property
    def allowed_origins(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        """Settings from `FISHTTS_*` variables (for embedding the app without the CLI)."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is None:
                continue
            default = f.default if f.default is not MISSING else None
            if isinstance(default, bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, tuple):
                values[f.name] = tuple(raw.split())
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                values[f.name] = type(default)(raw)
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)

    @classmethod
    def env_text(cls, name: str, value: object) -> str:
        """A setting's value (a config file's: a bool, a number, a list) as from_env reads its variable: a list
        space-separated for a list setting (`load`), comma-separated for the others (`allowed_hosts`)."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, tuple)):
            default = next(f.default for f in fields(cls) if f.name == name)
            return (" " if isinstance(default, tuple) else ",").join(str(v) for v in value)
        return str(value)


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)
