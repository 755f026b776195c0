"""Helpers for the HTTP tests: a work dir with tiny checkpoints, a real server process, test audio.

The work dir mirrors a user's setup: `checkpoints/` holds the tiny models under the official file
names (plus their JSON configs and the tokenizer files), `references/` a clip and its codes, and
the server runs with that dir as its working directory, so the original's relative paths work.
"""

from __future__ import annotations

import io
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
import soundfile as sf
import torch

from tests.paths import PARITY, ROOT, process_env

SR = 22050

# SPEC-server §8.3: the web UI's load body, with the UI's defaults except the configs of the tiny models.
WEBUI_LOAD = {
    "device": "cuda",
    "llama": {
        "config_name": "checkpoints/llama.json",
        "checkpoint_path": "checkpoints/text2semantic-400m-v0.2-4k.pth",
        "precision": "float16",
        "tokenizer": "fishaudio/speech-lm-v1",
        "compile": True,
    },
    "vqgan": {"config_name": "checkpoints/vqgan_config.json", "checkpoint_path": "checkpoints/vqgan-v1.pth"},
}
FAST = {"max_new_tokens": 8, "seed": 1}  # random weights never stop on their own
S1_FOLDER = "openaudio-s1-mini"  # the golden random-weight S1 folder, as `add_s1_model` places it
S1_LOAD = {"device": "cpu", "s1": {"folder": S1_FOLDER}}  # its PUT /v1/models body


def tone(seconds: float, sr: int = SR, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave = wave.astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def audio_bytes(audio: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sr, format=fmt, subtype=subtype)
    return buffer.getvalue()


def make_workdir(folder: Path) -> Path:
    """checkpoints/ with the tiny models under the official names, references/ with a clip."""
    ckpt = folder / "checkpoints"
    ckpt.mkdir(parents=True)
    lm = torch.load(PARITY / "llama_state_dict.pt", weights_only=True)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in lm.items()}, "global_step": 0},
        ckpt / "text2semantic-400m-v0.2-4k.pth",
    )
    shutil.copy(PARITY / "vqgan_state_dict.pt", ckpt / "vqgan-v1.pth")
    shutil.copy(PARITY / "cli_configs" / "llama.json", ckpt / "llama.json")
    shutil.copy(PARITY / "vqgan_config.json", ckpt / "vqgan_config.json")
    for item in (PARITY / "tokenizer").iterdir():  # as `fishtts download` leaves them
        shutil.copy(item, ckpt / item.name)
    shutil.copytree(PARITY / "tokenizer", ckpt / "tokenizer")
    refs = folder / "references"
    refs.mkdir()
    sf.write(refs / "0_input.wav", tone(2.0), SR)
    np.save(refs / "0_input.npy", np.random.default_rng(0).integers(0, 160, size=(4, 40), dtype=np.int64))
    (folder / "load_default.json").write_text(_json(WEBUI_LOAD), encoding="utf-8")
    return folder


def add_s1_model(folder: Path) -> Path:
    """The golden S1-mini folder (laid out as the official one: tests/core/s1/support.py) in the work
    dir's checkpoints, and its load body as `load_s1.json` (for `--load s1=load_s1.json`)."""
    from tests.core.s1.support import S1_CHECKPOINT  # (built on first import: only modules that serve S1 pay)

    shutil.copytree(S1_CHECKPOINT, folder / "checkpoints" / S1_FOLDER)
    (folder / "load_s1.json").write_text(_json(S1_LOAD), encoding="utf-8")
    return folder


def _json(data) -> str:
    import json

    return json.dumps(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m server` in a subprocess, the way a user starts it."""

    def __init__(
        self, workdir: Path, *args: str, load: bool = True, env: dict[str, str] | None = None, timeout: float = 90
    ):
        self.workdir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"server-{self.port}.log", "wb")
        argv = [sys.executable, "-m", "server", "--listen", f"127.0.0.1:{self.port}", "--log-level", "warning", *args]
        if load:
            argv += ["--load", "default=load_default.json"]
        env = process_env(**{"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})  # (env may override)
        self.process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_healthy(models=["default"] if load else [], timeout=timeout)

    def wait_healthy(self, models: list[str], timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                health = requests.get(self.url + "/v1/health", timeout=2).json()
                loaded = {m["name"] for m in health["models"]}
                if set(models) <= loaded:
                    return health
                if set(models) & set(health.get("load_errors", {})):
                    raise RuntimeError(f"load failed: {health['load_errors']}")
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not healthy in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.workdir / f"server-{self.port}.log").read_text(errors="replace")[-5000:]

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        stop_process(self.process, self.log)


def stop_process(process: subprocess.Popen, log) -> None:
    """TERM, then KILL after 15 s; close the process's log file."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    log.close()


def assert_json_error(response: requests.Response, status: int) -> dict:
    """The original's error shape, with a request id and no server path."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["statusCode"] == status and body["error"] and body["message"], body
    assert body["requestId"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "/tmp/" not in response.text and str(ROOT) not in response.text
    return body


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(io.BytesIO(data), dtype="float32")
    return audio, sr


def raw_post(server: Server, path: str, payload: bytes, content_type: str = "application/json") -> socket.socket:
    """A client on a raw socket, which can leave without a word: the request sent, nothing read."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def queue_pending(server: Server) -> int:
    """Requests the server's queue counts (running or waiting)."""
    return requests.get(server.url + "/v1/health", timeout=5).json()["queue"]["pending"]
