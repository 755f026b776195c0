"""Temporary audio files handed to Gradio (results, saved voices' clips), pruned after an hour; WAV wrapping."""

from __future__ import annotations

import io
import tempfile
import time
import uuid
import wave
from pathlib import Path

MAX_AGE_S = 3600


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """16-bit mono PCM as a WAV file (the stdlib's wave: no numpy or soundfile needed here)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def output_dir() -> Path:
    # Under the system temp dir: Gradio serves files from there without extra allowed_paths.
    folder = Path(tempfile.gettempdir()) / "fishtts-webui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_temp(data: bytes, stem: str, suffix: str) -> str:
    """Write `data` to a fresh file named `<stem><suffix>` (the name users see when downloading)."""
    prune_old()
    folder = output_dir() / uuid.uuid4().hex
    folder.mkdir()
    path = folder / f"{stem}{suffix}"
    path.write_bytes(data)
    return str(path)


def prune_old(max_age_s: float = MAX_AGE_S) -> None:
    cutoff = time.time() - max_age_s
    for folder in output_dir().iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                for file in folder.iterdir():
                    file.unlink()
                folder.rmdir()
        except OSError:
            pass  # another session pruning at the same time, or not ours to remove
