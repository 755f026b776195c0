"""Locate, download and safely load checkpoint files.

Every weight file goes through `load_state_dict_file`: `torch.load(weights_only=True)`
never unpickles arbitrary objects, and the Lightning `{"state_dict": ...}` wrapping
is removed here so model loaders only see flat `dict[str, Tensor]`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pickle
import re
from pathlib import Path

import torch

from .paths import FolderGuard

FISH_SPEECH_V02 = "fish-speech-v0.2"  # the model families (core/families)
OPENAUDIO_S1_MINI = "openaudio-s1-mini"
FAMILIES = (FISH_SPEECH_V02, OPENAUDIO_S1_MINI)
HF_REPO_ID = "fishaudio/speech-lm-v1"
VQGAN_FILENAME = "vqgan-v1.pth"
LM_FILENAME = "text2semantic-400m-v0.2-4k.pth"
TOKENIZER_FILENAMES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_CHECKPOINTS_DIR = Path("checkpoints")
DEFAULT_S1_DIR = DEFAULT_CHECKPOINTS_DIR / OPENAUDIO_S1_MINI  # the S1 folder, as `fishtts download` lays it out
CHECKPOINTS_DIR_ENV = "FISHTTS_CHECKPOINTS_DIR"  # also the server's --checkpoints-dir variable (server/settings.py)


def checkpoints_dir() -> Path:
    """The command line's checkpoints folder: $FISHTTS_CHECKPOINTS_DIR when set (the folder launch.sh and the
    server use), else checkpoints/."""
    return Path(os.environ.get(CHECKPOINTS_DIR_ENV) or DEFAULT_CHECKPOINTS_DIR)


def resolve_config(
    name: str, presets: dict, what: str, *, root: FolderGuard | None = None, field: str = "config_name"
) -> str | Path:
    """The one rule for configs: a preset's name as is, else a .json file (inside `root` when given:
    the server's checkpoints folder). Nothing is instantiated by name; the file holds plain fields."""
    if name in presets:
        return name
    where = " in the checkpoints folder" if root is not None else ""
    if not str(name).lower().endswith(".json"):
        raise ValueError(f"{field}: unknown {what} {name!r}; use {', '.join(sorted(presets))} or a .json file{where}.")
    path = Path(name) if root is None else root.resolve(str(name), field=field)
    if not path.is_file():
        raise ValueError(f"{field}: unknown {what} {str(name)!r}; {name!r} is not a file{where}.")
    return path


def read_json_object(path: str | os.PathLike, what: str, error: type[ValueError] = ValueError) -> dict:
    """The JSON object in a user's config file, or `error` naming `what` and the file: missing, unreadable,
    not JSON, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


MAX_SEQ_LEN = 2**20  # a config's max_seq_len at most (tables are sized by it: 10^9 asked for 32 GB)


def is_whole_number(value, least: int = 0) -> bool:
    """An integer (not a bool) >= `least`: what a config's sizes and counts must be."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def check_config_numbers(
    config,
    *,
    sizes: tuple[str, ...] = (),
    counts: tuple[str, ...] = (),
    reals: tuple[str, ...] = (),
    error: type[ValueError] = ValueError,
) -> None:
    """`error` naming the field unless each of `sizes` is an integer >= 1, each of `counts` an integer >= 0
    and each of `reals` a finite number >= 0 (fields that may be None: left out by the caller when None).
    Config files are the user's: a size of -1 or 1.5 must be a message, not an error deep in a model."""
    for name in sizes + counts:
        value, least = getattr(config, name), 1 if name in sizes else 0
        if not is_whole_number(value, least):
            raise error(f"{name} must be a whole number >= {least}, got {value!r}")
    if "max_seq_len" in sizes and config.max_seq_len > MAX_SEQ_LEN:
        raise error(f"max_seq_len must be at most {MAX_SEQ_LEN:,}, got {config.max_seq_len!r}")
    for name in reals:
        value = getattr(config, name)
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise error(f"{name} must be a finite number >= 0, got {value!r}")


def check_config_flags(config, names: tuple[str, ...], error: type[ValueError] = ValueError) -> None:
    """`error` naming the field unless each of `names` is true or false (JSON's booleans: "yes" or 1 in a
    user's config would otherwise be read as true)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise error(f"{name} must be true or false, got {value!r}")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model config."""


def require_checkpoint(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pth` file into a flat state dict (tensors only, mmap where possible)."""
    path = require_checkpoint(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Legacy (non-zip) torch files cannot be memory-mapped.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
            raise _unloadable(path, exc) from None
    except Exception as exc:  # noqa: BLE001
        raise _unloadable(path, exc) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def _unloadable(path: Path, exc: Exception) -> CheckpointError:
    """One line for a file torch.load refused. (torch's own text for a weights-only refusal is a paragraph
    advising weights_only=False: never here, since such a file can run code.)"""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    which = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if isinstance(exc, pickle.UnpicklingError) and which:
        return CheckpointError(
            f"{path} holds Python objects besides tensors ({which[1]}): weights are loaded with weights_only=True, "
            "which refuses them"
        )
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
    reason = f"unpickling stopped at: {unpickler[1].strip()}" if unpickler else lines[0]
    return CheckpointError(f"{path} is not a loadable weights file: {reason}")


def describe_key_mismatch(missing: list[str], unexpected: list[str], limit: int = 10) -> str:
    """One readable line naming the keys that do not fit (the first `limit` of each)."""

    def head(keys: list[str]) -> str:
        keys = sorted(keys)
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    parts = []
    if missing:
        parts.append(f"missing keys: {head(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {head(unexpected)}")
    return "; ".join(parts)


def describe_shape_mismatch(expected: dict[str, torch.Size], given: dict[str, torch.Tensor], limit: int = 10) -> str:
    bad = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k])]
    lines = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k])}" for k in sorted(bad)[:limit]]
    if len(bad) > limit:
        lines.append(f"(+{len(bad) - limit} more)")
    return "; ".join(lines)


def download_checkpoints(
    target_dir: str | os.PathLike = DEFAULT_CHECKPOINTS_DIR, repo_id: str = HF_REPO_ID
) -> list[Path]:
    """Fetch the official files into `target_dir`, skipping those already present.

    huggingface_hub honours HF_ENDPOINT (mirrors) and shows tqdm progress bars.
    """
    from huggingface_hub import hf_hub_download

    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (VQGAN_FILENAME, LM_FILENAME, *TOKENIZER_FILENAMES):
        dest = target_dir / name
        if dest.is_file() and dest.stat().st_size > 0:
            paths.append(dest)
            continue
        paths.append(Path(hf_hub_download(repo_id=repo_id, filename=name, local_dir=target_dir)))
    return paths
