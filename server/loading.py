"""Turn a `PUT /v1/models/{name}` body into a checked plan, then into a loaded TTSEngine.

Every client-named file goes through the checkpoints-folder guard; configs are presets or JSON
files there (plain dataclass fields, nothing is instantiated by name); weights load with
`weights_only=True` (core.checkpoints); a tokenizer repo id is fetched only with --allow-downloads.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from core.checkpoints import HF_REPO_ID
from core.engine import TTSEngine
from core.lm.config import PRESETS as LM_PRESETS
from core.vqgan.config import PRESETS as VQGAN_PRESETS

from .errors import ApiError, scrub
from .paths import FolderGuard
from .schemas import LoadModelRequest
from .settings import Settings

log = logging.getLogger("fishtts.server")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class LoadPlan:
    llama_checkpoint: Path
    llama_config: str
    tokenizer: str
    vqgan_checkpoint: Path
    vqgan_config: str
    device: str | None
    precision: str
    compile: bool
    quantize: str | None
    max_batch_size: int | None
    vqgan_precision: str
    shown: dict  # the same choices as clients may see them (no server paths)

    def build(self, guard: FolderGuard) -> tuple[TTSEngine, dict]:
        try:
            engine = TTSEngine.load(
                llama_checkpoint=self.llama_checkpoint, llama_config=self.llama_config, tokenizer=self.tokenizer,
                vqgan_checkpoint=self.vqgan_checkpoint, vqgan_config=self.vqgan_config, device=self.device,
                precision=self.precision, compile=self.compile, quantize=self.quantize,
                max_batch_size=self.max_batch_size, vqgan_precision=self.vqgan_precision,
            )
        except ValueError as exc:  # CheckpointError, config and tokenizer problems: the client's files
            message = str(exc)
            if "Weights only load failed" in message:  # torch's long advice to unpickle it anyway: no
                message = message.split("Weights only load failed")[0] + "it holds more than tensors, and "\
                          "pickled objects are never loaded."
            raise ApiError(400, f"Cannot load the model: {scrub(message, guard.replacements())}") from None
        info = {
            "device": str(engine.device),
            "precision": str(engine.lm.output.weight.dtype).removeprefix("torch."),
            "compiled": self.compile,
            "quantize": self.quantize or "none",
            "vqgan_precision": self.vqgan_precision,
            "lm_paths": engine.lm_paths,
            "max_batch_size": engine.max_batch_size,
            "context": engine.lm.config.max_seq_len,
            **self.shown,
        }
        return engine, info


def plan_load(body: LoadModelRequest, settings: Settings, guard: FolderGuard) -> LoadPlan:
    llama_checkpoint = _weights_file(body.llama.checkpoint_path, guard, "llama.checkpoint_path")
    vqgan_checkpoint = _weights_file(body.vqgan.checkpoint_path, guard, "vqgan.checkpoint_path")
    llama_config = _config(body.llama.config_name, LM_PRESETS, guard, "llama.config_name")
    vqgan_config = _config(body.vqgan.config_name, VQGAN_PRESETS, guard, "vqgan.config_name")
    tokenizer = _tokenizer(body.llama.tokenizer, llama_checkpoint, guard, settings.allow_downloads)
    compile_ = bool(body.llama.compile and settings.compile)
    if body.llama.compile and not settings.compile:
        log.info("compile requested for a model but the server runs without --compile; loading uncompiled")
    shown = {
        "llama": {"checkpoint_path": _shown(llama_checkpoint, guard), "config_name": _shown(llama_config, guard),
                  # The official repo id stays as sent (even when served from the checkpoints folder),
                  # so the shown value can be sent back in a PUT.
                  "tokenizer": HF_REPO_ID if body.llama.tokenizer == HF_REPO_ID else _shown(tokenizer, guard)},
        "vqgan": {"checkpoint_path": _shown(vqgan_checkpoint, guard), "config_name": _shown(vqgan_config, guard)},
    }
    return LoadPlan(
        llama_checkpoint=llama_checkpoint, llama_config=llama_config, tokenizer=tokenizer,
        vqgan_checkpoint=vqgan_checkpoint, vqgan_config=vqgan_config,
        device=choose_device(body.device, settings.device),
        precision=body.llama.precision or ("float16" if settings.half else "bfloat16"),
        compile=compile_, quantize=_quantize(body.llama.quantize, settings.quantize),
        max_batch_size=settings.max_batch_size or None, shown=shown,
        vqgan_precision=body.vqgan.precision or settings.vqgan_precision,
    )


def _quantize(requested: str | None, server_default: str) -> str | None:
    choice = server_default if requested is None else requested
    return None if choice in ("", "none") else choice


def choose_device(requested: str | None, server_device: str | None) -> str | None:
    """--device wins; the original's default 'cuda' falls back to the CPU on a machine without CUDA."""
    if server_device:
        return server_device
    if requested in (None, "auto"):
        return None
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            log.warning("device %r requested but CUDA is not available; loading on the CPU", requested)
            return "cpu"
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ApiError(400, f"device: {requested!r} does not exist on this server.", param="device")
    return requested


def _weights_file(user_path: str, guard: FolderGuard, field: str) -> Path:
    path = guard.resolve(user_path, field=field)
    if not path.is_file():
        raise ApiError(400, f"{field}: {user_path!r} is not a file.", param=field)
    return path


def _config(name: str, presets: dict, guard: FolderGuard, field: str) -> str:
    if name in presets:
        return name
    if not name.lower().endswith(".json"):
        raise ApiError(400, f"{field}: unknown config {name!r}; use {', '.join(sorted(presets))} or a .json file "
                            "in the checkpoints folder.", param=field)
    path = guard.resolve(name, field=field)
    if not path.is_file():
        raise ApiError(400, f"{field}: {name!r} is not a file.", param=field)
    return str(path)


def _tokenizer(spec: str, llama_checkpoint: Path, guard: FolderGuard, allow_downloads: bool) -> str:
    field = "llama.tokenizer"
    looks_like_repo = bool(_REPO_ID.match(spec)) and not spec.endswith(".json")
    try:
        path = guard.resolve(spec, field=field)
    except ApiError as exc:
        if not looks_like_repo or exc.status == 400:
            raise
    else:
        if path.is_file() and path.name == "tokenizer.json":
            return str(path.parent)
        if path.is_dir() and (path / "tokenizer.json").is_file():
            return str(path)
        raise ApiError(400, f"{field}: {spec!r} is not a folder with tokenizer.json.", param=field)
    if spec == HF_REPO_ID:
        # `fishtts download` puts the official tokenizer next to the checkpoints.
        for folder in (guard.root, llama_checkpoint.parent):
            if (folder / "tokenizer.json").is_file():
                return str(folder)
    if not allow_downloads:
        raise ApiError(403, f"{field}: {spec!r} is not in the checkpoints folder and downloads are disabled; "
                            "put its files there or start the server with --allow-downloads.", param=field)
    if Path(spec).exists():  # core would read a same-named local folder first: it lies outside the guard
        raise ApiError(403, f"{field}: {spec!r} is outside the checkpoints folder.", param=field)
    return spec


def _shown(choice: str | Path, guard: FolderGuard) -> str:
    """A preset name or repo id as given; a resolved file as its place in the checkpoints folder."""
    return guard.display(Path(choice)) if Path(choice).is_absolute() else str(choice)
