"""Helpers the tests share: the CLI as a user runs it, and real speech to use as a reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tests.paths import PYTHONPATH


def assert_same_pcm(streamed: np.ndarray, whole: np.ndarray) -> None:
    """A streamed response's int16 samples against the non-streamed one's: the same frames, decoded in
    smaller chunks (float rounding of the same sums), so at most one step of int16 apart."""
    streamed, whole = np.asarray(streamed), np.asarray(whole)
    assert streamed.shape == whole.shape
    assert np.abs(streamed.astype(np.int32) - whole.astype(np.int32)).max(initial=0) <= 1


def load_tiny_lm(checkpoints: dict, **options):
    """A TTSEngine with the tiny LM (no VQGAN) of the `tiny_checkpoints` fixture; `options` as TTSEngine.load's."""
    from core.engine import TTSEngine

    return TTSEngine.load(
        lm_checkpoint=checkpoints["lm"],
        lm_config=str(checkpoints["lm_config"]),
        tokenizer=checkpoints["tokenizer"],
        vqgan_checkpoint=None,
        **options,
    )


def run_cli(
    args: list[str], cwd: Path | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m fishtts ARGS` the way a user would (offline unless `env` says otherwise)."""
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fishtts", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def synthesize_speech(
    path: Path,
    text: str = "This is a short reference clip for voice cloning.",
    voice: str = "en",
    rate: int | None = None,
) -> Path:
    """Real speech from espeak-ng (a Debian package the test script installs)."""
    cmd = ["espeak-ng", "-v", voice, "-w", str(path), text]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    if rate is not None:
        import soundfile as sf
        import soxr

        audio, sr = sf.read(path, dtype="float32")
        sf.write(path, soxr.resample(audio, sr, rate), rate)
    return path


def load_tiny_engine(tiny_checkpoints: dict):
    """An engine on the tiny checkpoints (CPU, float32 VQGAN): the shared one, or a test's own to close."""
    from core.engine import TTSEngine

    return TTSEngine.load(
        lm_checkpoint=tiny_checkpoints["lm"],
        lm_config=str(tiny_checkpoints["lm_config"]),
        tokenizer=tiny_checkpoints["tokenizer"],
        vqgan_checkpoint=tiny_checkpoints["vqgan"],
        vqgan_config=str(tiny_checkpoints["vqgan_config"]),
        device="cpu",
        vqgan_precision="float32",
    )


def frames_beside(engine, work, request, timeout: float = 60.0):
    """Run `work()` (codec work through `engine`) beside a generation of `request` (ignoring its stop),
    both handed to the scheduler while a task holds its thread, so they start in the same round: what
    `work()` returned, and how many frames the generation had made by then."""
    import threading
    import time

    scheduler = engine.scheduler
    frames, done = [], []
    held, release = threading.Event(), threading.Event()
    scheduler.call(lambda: held.set() or release.wait(timeout))
    assert held.wait(timeout)
    generation = threading.Thread(
        target=lambda: engine.generate_codes(request, progress=lambda: frames.append(1), ignore_stop=True)
    )
    worker = threading.Thread(target=lambda: done.append((work(), len(frames))))
    generation.start()
    worker.start()
    deadline = time.monotonic() + timeout
    while not (scheduler._waiting and scheduler._tasks) and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    worker.join(timeout)
    generation.join(timeout)
    return done[0]


def set_speedup(monkeypatch, module, name: str) -> SimpleNamespace:
    """`module.name`, a measured speed-up, replaced by the one the test sets (`.value`), its calls' models
    kept (`.timings`: a cached choice measures nothing)."""
    state = SimpleNamespace(value=None, timings=[])

    def speedup(model):
        state.timings.append(model)
        return state.value

    monkeypatch.setattr(module, name, speedup)
    return state


def set_packing_speedup(monkeypatch, tmp_path, packing) -> SimpleNamespace:
    """An empty cache and oneDNN present, and the packing module's measured speed-up as the test sets it
    (`set_speedup`)."""
    import torch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    return set_speedup(monkeypatch, packing, "packed_speedup")
