"""Helpers for the web UI and launch.sh tests: the UI as a subprocess, headless Chromium, process trees.

The API side comes from tests/server/helpers.py (tiny checkpoints under the official names, a real
`python -m server`), so these tests exercise the same server users run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.paths import process_env
from tests.server.helpers import ROOT, free_port, stop_process

CHROMIUM = os.environ.get("FISHTTS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifacts_dir() -> Path:
    """Where browser tests leave screenshots for CI to keep (TEST_ARTIFACTS_DIR overrides)."""
    folder = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's own FISHTTS_/GRADIO_ settings (the tests' pinned ones kept)."""
    fixed = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return process_env(("FISHTTS_", "GRADIO_", "HF_"), **{**fixed, **extra})  # (extra may override)


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None, what: str = "service") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not answering at {url} after {timeout} s")


class WebUI:
    """`python -m webui` against an API, the way launch.sh starts it."""

    def __init__(self, api_url: str, log_dir: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_dir / f"webui-{self.port}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - open while the process runs
        env = clean_env(
            FISHTTS_API_URL=api_url, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(self.port), **env
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webui"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            wait_http(self.url, 90, self.process, "web UI")
        except RuntimeError:
            self.stop()
            raise RuntimeError(self.output()) from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        stop_process(self.process, self.log)


def require_browser():
    """Playwright (PyPI) and Debian's chromium; never a downloaded browser."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    return playwright


# -- process trees (Linux /proc; no psutil needed) -------------------------------------------------


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"
