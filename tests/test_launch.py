"""./launch.sh end to end with tiny checkpoints: API and UI come up, the page loads, SIGTERM or Ctrl-C
stops both with no process left; one dying stops the other; a missing download goes to HF_ENDPOINT;
a taken port is refused with a clear message."""

from __future__ import annotations

import http.server
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.server.helpers import ROOT, free_port, make_workdir
from tests.webui.support import alive, clean_env, descendants

START_TIMEOUT = 240  # bootstrap check, API start, model load, UI start on a slow 2-core machine


class Launch:
    """./launch.sh with tiny checkpoints; `terminal=True` runs it on a pseudo-terminal (Ctrl-C = ^C typed)."""

    def __init__(self, workdir: Path, terminal: bool = False, **env: str):
        self.api_port, self.ui_port = free_port(), free_port()
        self.api_url, self.ui_url = f"http://127.0.0.1:{self.api_port}", f"http://127.0.0.1:{self.ui_port}/"
        self.log_path = workdir / f"launch-{self.api_port}.log"
        settings = {
            "FISHTTS_LISTEN": f"127.0.0.1:{self.api_port}",
            "GRADIO_SERVER_PORT": str(self.ui_port),
            # relative to where the script starts (it runs from its checkout: they had been read there)
            "FISHTTS_CHECKPOINTS_DIR": "checkpoints",
            "FISHTTS_REFERENCES_DIR": "references",
            "FISHTTS_LOAD": "default=load_default.json",
            "FISHTTS_DEVICE": "cpu",
            "FISHTTS_START_TIMEOUT": "0900",  # (a leading zero: 900 s, not a bad octal number for bash)
        }
        settings.update(env)
        self.terminal_output = bytearray()
        if terminal:
            self.master, slave = pty.openpty()
            # `setsid --ctty`: a new session whose controlling terminal is the pty, as in a shell window
            self.process = subprocess.Popen(
                ["setsid", "--ctty", str(ROOT / "launch.sh")],
                cwd=workdir,
                env=clean_env(**settings),
                stdin=slave,
                stdout=slave,
                stderr=slave,
            )
            os.close(slave)
            threading.Thread(target=self._drain, daemon=True).start()
            return
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(ROOT / "launch.sh")],
                cwd=workdir,
                env=clean_env(**settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.terminal_output += chunk

    def press_ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the terminal sends SIGINT to its foreground process group

    def output(self) -> str:
        if self.terminal_output or not self.log_path.exists():
            return self.terminal_output.decode(errors="replace")
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while "[launch] ready" not in self.output():
            assert self.process.poll() is None, (
                f"launch.sh exited with {self.process.returncode}:\n{self.output()[-4000:]}"
            )
            assert time.monotonic() < deadline, self.output()[-4000:]
            time.sleep(0.5)

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"launch.sh did not exit:\n{self.output()[-4000:]}") from None

    def kill_all(self) -> None:
        for pid in descendants(self.process.pid) | {self.process.pid}:
            try:
                subprocess.run(["kill", "-KILL", str(pid)], check=False, capture_output=True)
            except OSError:
                pass


@pytest.fixture
def workdir(tmp_path) -> Path:
    return make_workdir(tmp_path)


def wait_gone(pids: set[int], timeout: float = 20) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    return {pid for pid in pids if alive(pid)}


@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_launch_starts_both_and_a_signal_stops_everything(workdir, stop):
    launch = Launch(workdir, terminal=stop == "Ctrl-C")
    try:
        launch.wait_ready()
        health = requests.get(launch.api_url + "/v1/health", timeout=5).json()
        assert [m["name"] for m in health["models"]] == ["default"]
        page = requests.get(launch.ui_url, timeout=10)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert launch.ui_url in launch.output()  # the URL is printed
        children = descendants(launch.process.pid)
        assert len(children) >= 2, launch.output()

        if stop == "Ctrl-C":
            launch.press_ctrl_c()
        else:
            launch.process.send_signal(signal.SIGTERM)
        assert launch.wait_exit() == (130 if stop == "Ctrl-C" else 143)
        assert wait_gone(children) == set(), launch.output()[-3000:]
        with pytest.raises(requests.ConnectionError):
            requests.get(launch.api_url + "/v1/health", timeout=2)
    finally:
        launch.kill_all()


def test_ctrl_c_while_starting_stops_everything(workdir):
    launch = Launch(workdir, terminal=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "starting the API" not in launch.output():
            assert launch.process.poll() is None and time.monotonic() < deadline, launch.output()[-3000:]
            time.sleep(0.1)
        time.sleep(1)  # the API is starting; the script polls its health
        children = descendants(launch.process.pid)
        launch.press_ctrl_c()
        assert launch.wait_exit() == 130, launch.output()[-3000:]
        assert wait_gone(children) == set()
    finally:
        launch.kill_all()


def test_a_second_ctrl_c_stops_everything_at_once(workdir):
    launch = Launch(workdir, terminal=True)
    try:
        launch.wait_ready()
        children = descendants(launch.process.pid)
        launch.press_ctrl_c()
        while "stopping" not in launch.output():
            time.sleep(0.05)
        launch.press_ctrl_c()
        assert launch.wait_exit() == 130
        assert "stopping now" in launch.output()
        left = {pid for pid in children if alive(pid)}
        assert left == set(), f"still shutting down after the script exited: {left}\n{launch.output()[-2500:]}"
    finally:
        launch.kill_all()


def fishtts_sh_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout with fishtts.sh whose setup and CLI are stand-ins; the CLI writes what it was given to the
    returned file, a line per call."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "fishtts.sh", checkout)
    said = tmp_path / "said.txt"
    (checkout / "scripts" / "bootstrap.sh").write_text("#!/bin/sh\n")
    (checkout / ".venv" / "bin" / "fishtts").write_text(f'#!/bin/sh\necho "$* | $FISHTTS_CHECKPOINTS_DIR" >> {said}\n')
    for script in (checkout / "scripts" / "bootstrap.sh", checkout / ".venv" / "bin" / "fishtts"):
        script.chmod(0o755)
    return checkout, said


def test_fishtts_sh_reads_a_relative_checkpoints_dir_from_where_it_starts(tmp_path):
    """As launch.sh does: `FISHTTS_CHECKPOINTS_DIR=models` is the caller's ./models, not the checkout's (the
    script runs in its checkout; the files found there had been downloaded again)."""
    checkout, said = fishtts_sh_checkout(tmp_path)
    user = tmp_path / "user"
    (user / "models").mkdir(parents=True)
    for name in ("vqgan-v1.pth", "text2semantic-400m-v0.2-4k.pth", "tokenizer.json"):
        (user / "models" / name).write_bytes(b"")
    env = {**os.environ, "FISHTTS_CHECKPOINTS_DIR": "models"}
    result = subprocess.run([str(checkout / "fishtts.sh"), "tts", "--text", "hi"], cwd=user, env=env, timeout=60)
    assert result.returncode == 0
    assert said.read_text() == f"tts --text hi | {user}/models\n"  # no download; the CLI looks in ./models


@pytest.mark.parametrize("model", [["--model", "checkpoints/openaudio-s1-mini"], ["--model=checkpoints/s1"]])
def test_fishtts_sh_downloads_no_v02_files_for_an_s1_model(tmp_path, model):
    """`--model` names an OpenAudio S1-mini folder: the v0.2 checkpoints it does not read are not fetched
    (they had been, ~1 GB, before the command ran)."""
    checkout, said = fishtts_sh_checkout(tmp_path)
    env = {**os.environ, "FISHTTS_CHECKPOINTS_DIR": str(tmp_path / "empty")}
    result = subprocess.run([str(checkout / "fishtts.sh"), "tts", *model, "--text", "hi"], env=env, timeout=60)
    assert result.returncode == 0
    assert said.read_text() == f"tts {' '.join(model)} --text hi | {tmp_path / 'empty'}\n"  # no `download` call


def test_when_one_process_dies_the_other_is_stopped(workdir):
    launch = Launch(workdir)
    try:
        launch.wait_ready()
        children = descendants(launch.process.pid)
        server = [pid for pid in children if b"-m\x00server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(server) == 1, launch.output()
        subprocess.run(["kill", "-KILL", str(server[0])], check=True)
        assert launch.wait_exit() != 0
        assert wait_gone(children) == set()
        assert "the API exited" in launch.output()
        with pytest.raises(requests.ConnectionError):
            requests.get(launch.ui_url, timeout=2)
    finally:
        launch.kill_all()


def test_missing_checkpoints_are_downloaded_from_HF_ENDPOINT(tmp_path):
    """No official files and FISHTTS_LOAD unset: `fishtts download` runs against the mirror first
    (here a local stand-in that has nothing, so the launch stops before starting anything)."""
    requested = []

    class Mirror(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            requested.append(self.path)
            self.send_error(404)

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    mirror = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    try:
        (tmp_path / "checkpoints").mkdir()
        launch = Launch(
            tmp_path,
            FISHTTS_LOAD="",
            HF_ENDPOINT=f"http://127.0.0.1:{mirror.server_port}",
            HF_HUB_OFFLINE="0",
            HF_HOME=str(tmp_path / "hf-home"),
        )
        assert launch.wait_exit(timeout=120) == 1
    finally:
        mirror.shutdown()
    assert any(path.startswith("/fishaudio/speech-lm-v1/") for path in requested), requested
    assert "downloading the checkpoints" in launch.output() and "the download failed" in launch.output()
    assert "starting the API" not in launch.output()


def test_refuses_a_port_in_use(workdir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launch = Launch(workdir, GRADIO_SERVER_PORT=str(port))
        assert launch.wait_exit(timeout=60) == 1
    assert f"port {port} on 127.0.0.1 is already in use" in launch.output()
    assert "GRADIO_SERVER_PORT" in launch.output() and "starting the API" not in launch.output()


@pytest.mark.parametrize(
    "setting, said",
    [
        ({"GRADIO_SERVER_PORT": "notaport"}, "is not a port (1-65535)"),
        ({"GRADIO_SERVER_PORT": "70000"}, "is not a port (1-65535)"),
        ({"FISHTTS_LISTEN": "localhost"}, "is not HOST:PORT"),
        ({"FISHTTS_LISTEN": "8419"}, "is not HOST:PORT (e.g. 127.0.0.1:8419)"),  # (had been "port 8419 on 8419")
        ({"FISHTTS_START_TIMEOUT": "10m"}, "is not a whole number of seconds"),  # (had said "API is up")
    ],
)
def test_refuses_a_bad_setting_naming_the_variable(workdir, setting, said):
    (variable,) = setting
    launch = Launch(workdir, **setting)
    assert launch.wait_exit(timeout=60) == 2
    output = launch.output()
    assert said in output and variable in output, output
    assert "Traceback" not in output and "already in use" not in output and "starting the API" not in output


def test_refuses_one_port_for_both_before_loading(workdir):
    """Both checks passed (nothing listened yet), the model loaded, then the UI died on Gradio's traceback."""
    port = free_port()
    launch = Launch(workdir, FISHTTS_LISTEN=f"127.0.0.1:{port}", GRADIO_SERVER_PORT=str(port))
    assert launch.wait_exit(timeout=60) == 2
    assert f"both ask for port {port}" in launch.output() and "starting the API" not in launch.output()


def test_a_failed_model_load_stops_the_launch(workdir):
    """The API answers /v1/health with 503 after a failed --load: the script reports it and exits 1
    (instead of waiting for a 200 that never comes)."""
    body = json.loads((workdir / "load_default.json").read_text())
    body["vqgan"]["checkpoint_path"] = "checkpoints/missing.pth"
    (workdir / "bad_load.json").write_text(json.dumps(body))
    launch = Launch(workdir, FISHTTS_LOAD=f"default={workdir / 'bad_load.json'}")
    try:
        assert launch.wait_exit(timeout=120) == 1
    finally:
        launch.kill_all()
    assert "the model failed to load" in launch.output()
    assert "starting the web UI" not in launch.output()
