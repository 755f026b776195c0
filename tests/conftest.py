"""Shared fixtures: tiny random-weight checkpoints in the real file formats, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
PARITY = DATA / "parity"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return PARITY


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The parity models written like the official files.

    LM: a Lightning checkpoint (`{"state_dict": {"model.<key>": ...}}`, with the persistent buffers);
    VQGAN: the flat state dict `tools/extract_model.py` writes; configs as JSON; the tiny tokenizer.
    """
    folder = tmp_path_factory.mktemp("checkpoints")
    lm = torch.load(PARITY / "llama_state_dict.pt", weights_only=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in lm.items()}, "global_step": 0}, folder / "text2semantic-tiny.pth")
    vq = torch.load(PARITY / "vqgan_state_dict.pt", weights_only=True)
    torch.save(vq, folder / "vqgan-tiny.pth")
    return {
        "lm": folder / "text2semantic-tiny.pth",
        "lm_config": PARITY / "cli_configs" / "llama.json",
        "vqgan": folder / "vqgan-tiny.pth",
        "vqgan_config": PARITY / "vqgan_config.json",
        "tokenizer": PARITY / "tokenizer",
    }


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoints):
    from core.engine import TTSEngine

    return TTSEngine.load(
        llama_checkpoint=tiny_checkpoints["lm"], llama_config=str(tiny_checkpoints["lm_config"]),
        tokenizer=tiny_checkpoints["tokenizer"], vqgan_checkpoint=tiny_checkpoints["vqgan"],
        vqgan_config=str(tiny_checkpoints["vqgan_config"]), device="cpu",
    )


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m core ARGS` the way a user would, returning the finished process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def synthesize_speech(path: Path, text: str = "This is a short reference clip for voice cloning.",
                      voice: str = "en", rate: int | None = None) -> Path:
    """Real speech from espeak-ng (a Debian package the test script installs)."""
    cmd = ["espeak-ng", "-v", voice, "-w", str(path), text]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    if rate is not None:
        import soundfile as sf
        import soxr

        audio, sr = sf.read(path, dtype="float32")
        sf.write(path, soxr.resample(audio, sr, rate), rate)
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    return synthesize_speech(tmp_path_factory.mktemp("audio") / "reference.wav")
