"""Turn a `PUT /v1/models/{name}` body into a checked plan, then into a loaded TTSEngine.

Every client-named file goes through the checkpoints-folder guard (core/paths.py); configs and the
tokenizer are resolved by core's rules with that guard as their root; weights load with
`weights_only=True` (core.checkpoints); a tokenizer repo id is fetched only with --allow-downloads.
An OpenAudio S1-mini body (`s1`) names one folder, which goes through the same guard (and none of
whose entries may lead out of it); core's loader names what is wrong inside it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from core.checkpoints import HF_REPO_ID, TOKENIZER_FILENAMES, resolve_config
from core.engine import LM_PRESETS, VQGAN_PRESETS, TTSEngine, resolve_tokenizer_dir
from core.paths import BadPath, FolderGuard, NotInFolder, OutsideFolder
from core.request import default_sampling, sampling_fields

from .errors import ApiError, scrub
from .schemas import LoadModelRequest
from .settings import Settings

log = logging.getLogger("fishtts.server")


@dataclass
class LoadPlan:
    load: Callable[[], TTSEngine]  # TTSEngine.load or TTSEngine.load_s1 with the checked arguments
    shown: dict  # the choices as clients may see them (no server paths)
    replacements: dict  # server paths -> client names, for messages
    field: str | None = None  # the body field its files came from, when one names them all

    def build(self) -> tuple[TTSEngine, dict]:
        try:
            engine = self.load()
        except (ValueError, FileNotFoundError) as exc:  # the client's files: unreadable, misshapen, missing
            message = str(exc)
            if "Weights only load failed" in message:  # torch's long advice to unpickle it anyway: no
                message = (
                    message.split("Weights only load failed")[0] + "it holds more than tensors, and "
                    "pickled objects are never loaded."
                )
            message = f"Cannot load the model: {scrub(message, self.replacements)}"
            raise ApiError(400, message, param=self.field) from None
        engine.warm_up()  # before the model is served: its first request then runs as fast as the rest
        info = engine.info
        return engine, {
            "family": info.family,
            "device": info.device,
            "precision": info.precision,
            "compiled": info.compiled,
            "quantize": info.quantize,
            "max_batch_size": info.max_batch_size,
            "context": info.context,
            "sample_rate": info.sample_rate,
            "frame_rate": info.frame_rate,
            "num_codebooks": info.num_codebooks,
            "codebook_size": info.codebook_size,
            "phonemes": info.phonemes,  # whether use_g2p, order and speaker apply to its requests
            "sampling": dataclasses.asdict(default_sampling(info.family)),  # what fields left out become
            "sampling_fields": list(sampling_fields(info.family)),  # the others are refused for this model
            "vqgan_precision": info.vqgan_precision,
            "lm_paths": info.lm_paths,
            **self.shown,
        }


def plan_load(body: LoadModelRequest, settings: Settings, guard: FolderGuard) -> LoadPlan:
    """Every client-named file through the folder guard, configs and tokenizer by core's rules;
    a ValueError (an unknown preset, a folder without tokenizer.json) is the body's: 400."""
    if body.s1 is not None:
        return plan_s1_load(body, settings, guard)
    lm_checkpoint = _weights_file(body.llama.checkpoint_path, guard, "llama.checkpoint_path")
    vqgan_checkpoint = _weights_file(body.vqgan.checkpoint_path, guard, "vqgan.checkpoint_path")
    try:
        lm_config = resolve_config(body.llama.config_name, LM_PRESETS, "config", root=guard, field="llama.config_name")
        vqgan_config = resolve_config(
            body.vqgan.config_name, VQGAN_PRESETS, "config", root=guard, field="vqgan.config_name"
        )
        tokenizer = resolve_tokenizer_dir(
            body.llama.tokenizer,
            lm_checkpoint.parent,
            root=guard,
            allow_download=settings.allow_downloads,
            field="llama.tokenizer",
        )
    except (BadPath, OutsideFolder, NotInFolder):
        raise
    except ValueError as exc:
        raise ApiError(400, scrub(str(exc), guard.replacements()), param=str(exc).partition(":")[0]) from None
    if guard.contains(tokenizer):  # (else it came from Hugging Face: --allow-downloads)
        shown_tokenizer = guard.display(tokenizer)
        _none_lead_out((tokenizer / name for name in TOKENIZER_FILENAMES), shown_tokenizer, guard, "llama.tokenizer")
    shown = {
        "llama": {
            "checkpoint_path": _shown(lm_checkpoint, guard),
            "config_name": _shown(lm_config, guard),
            # The official repo id stays as sent (even when served from the checkpoints folder),
            # so the shown value can be sent back in a PUT.
            "tokenizer": HF_REPO_ID if body.llama.tokenizer == HF_REPO_ID else _shown(tokenizer, guard),
        },
        "vqgan": {"checkpoint_path": _shown(vqgan_checkpoint, guard), "config_name": _shown(vqgan_config, guard)},
    }
    load = functools.partial(
        TTSEngine.load,
        lm_checkpoint=lm_checkpoint,
        lm_config=str(lm_config),
        tokenizer=str(tokenizer),
        vqgan_checkpoint=vqgan_checkpoint,
        vqgan_config=str(vqgan_config),
        device=choose_device(body.device, settings.device),
        precision=_precision(body.llama.precision, settings),
        compile=_compile(body.llama.compile, settings),
        quantize=_quantize(body.llama.quantize, settings.quantize),
        max_batch_size=settings.max_batch_size or None,
        vqgan_precision=body.vqgan.precision or settings.vqgan_precision,
    )
    return LoadPlan(load, shown, guard.replacements())


def plan_s1_load(body: LoadModelRequest, settings: Settings, guard: FolderGuard) -> LoadPlan:
    """An OpenAudio S1-mini folder inside the checkpoints folder; core names what is wrong in its files."""
    spec, field = body.s1, "s1.folder"
    folder = guard.resolve(spec.folder, field=field)
    if not folder.is_dir():
        raise ApiError(400, f"{field}: {spec.folder!r} is not a folder.", param=field)
    _none_lead_out(folder.iterdir(), spec.folder, guard, field)
    load = functools.partial(
        TTSEngine.load_s1,
        folder,
        device=choose_device(body.device, settings.device),
        precision=_precision(spec.precision, settings),
        quantize=_quantize(spec.quantize, settings.quantize),
        compile=_compile(spec.compile, settings),
        max_batch_size=settings.max_batch_size or None,
        vqgan_precision=spec.codec_precision or settings.vqgan_precision,
    )
    return LoadPlan(load, {"s1": {"folder": guard.display(folder)}}, guard.replacements(), field)


def _none_lead_out(entries: Iterable[Path], shown: str, guard: FolderGuard, field: str) -> None:
    """The loaders open these files by name, not through the guard: none may be a link out of the folder."""
    for entry in entries:
        try:
            target = entry.resolve()
        except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
            raise ApiError(400, f"{field}: {entry.name!r} in {shown!r} is a loop of links.", param=field) from None
        if not guard.contains(target):
            raise OutsideFolder(f"{field}: {entry.name!r} in {shown!r} leads outside the checkpoints folder.", field)


def _precision(requested: str | None, settings: Settings) -> str:
    return requested or ("float16" if settings.half else "bfloat16")


def _compile(requested: bool, settings: Settings) -> bool:
    if requested and not settings.compile:
        log.info("compile requested for a model but the server runs without --compile; loading uncompiled")
    return bool(requested and settings.compile)


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


def _shown(choice: str | Path, guard: FolderGuard) -> str:
    """A preset name or repo id as given; a resolved file as its place in the checkpoints folder."""
    return guard.display(Path(choice)) if Path(choice).is_absolute() else str(choice)
