"""What this machine is, and the choices measured on it, kept per machine in ~/.cache/fishtts/
($XDG_CACHE_HOME respected; an unreadable file is ignored and rewritten). The LM's paths
(core/lm/autotune.py), the VQGAN's decode precision (core/vqgan/precision.py) and the codecs' conv
path (core/convs.py: choose_packing) are chosen this way."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd")


def _read_cpuinfo() -> tuple[str, set[str]]:
    """(model name, every feature flag) from /proc/cpuinfo (best effort elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in (platform.processor(), platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_info() -> dict:
    """{"model": name, "flags": the ones that matter here}."""
    model, flags = _read_cpuinfo()
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags]}


def cpu_flags_digest() -> str:
    """A short digest of every feature flag this CPU reports: what code built with -march=native may use."""
    return hashlib.sha1(" ".join(sorted(_read_cpuinfo()[1])).encode()).hexdigest()[:10]


def machine_key() -> list[str]:
    """What a measured choice holds for: the CPU, its flags, the thread count and the torch version."""
    cpu = cpu_info()
    return [cpu["model"], ",".join(cpu["flags"]), f"threads={torch.get_num_threads()}", f"torch={torch.__version__}"]


def cpu_has_fast_bfloat16() -> bool:
    """bfloat16 matmuls run natively (AVX512-BF16 / AMX) instead of being emulated (~75x slower)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def cache_file(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fishtts" / name


def read_cache(name: str) -> dict:
    try:
        data = json.loads(cache_file(name).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cache(name: str, data: dict) -> None:
    path = cache_file(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as exc:
        log.debug("could not write %s: %s", path, exc)


def measured_choice(cache_name: str, key: list[str], choices: tuple, measure: Callable[[], object]) -> object:
    """The choice kept for this machine and `key` in `cache_name`, else `measure()` (one of `choices`),
    kept there; an entry that is none of the choices is measured again."""
    full_key = "|".join([*machine_key(), *key])
    cache = read_cache(cache_name)
    kept = cache.get(full_key)
    if any(kept == choice and type(kept) is type(choice) for choice in choices):
        return kept
    cache[full_key] = measure()
    write_cache(cache_name, cache)
    return cache[full_key]


def best_times(settings: Sequence, apply: Callable[[object], None], run: Callable[[], object], runs: int) -> dict:
    """{setting: its best time in seconds over `runs` calls of run() after apply(setting)}. The settings are
    timed in turns, after a round that warms each up (oneDNN's kernels, caches), so that a shared VM's
    drift favours none of them. The caller puts its own setting back."""
    best = dict.fromkeys(settings, math.inf)
    for round_ in range(1 + runs):
        for setting in settings:
            apply(setting)
            start = time.perf_counter()
            run()
            if round_:
                best[setting] = min(best[setting], time.perf_counter() - start)
    return best
