"""Starting the server: bad options stop it with one line and exit 2; a failed --load shows in /v1/health
(503 with the reason) instead of an "ok"; health polls stay out of the log at the default level.
Stopping it: Ctrl-C ends generations still running once uvicorn's graceful wait is over, and answers
their requests with a JSON 503."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from core.device import resolve_device
from server.errors import scrub
from server.schemas import LoadModelRequest
from server.settings import Settings
from tests.paths import process_env
from tests.server.helpers import ROOT, Server, add_s1_model, make_workdir


def run_server(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", "--listen", "127.0.0.1:1", *args],
        cwd=cwd,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unknown_device_is_refused_at_start(tmp_path):
    result = run_server("--device", "tpu", cwd=tmp_path)
    assert result.returncode == 2 and "tpu" in result.stderr and "Traceback" not in result.stderr
    assert "cpu, cuda, cuda:N or auto" in result.stderr  # what it takes, `auto` included


def test_device_auto_is_the_default_choice():
    """`auto` (the server's --device, a load request's `device`, the CLI's --device) is what no choice
    means: CUDA where present, else the CPU; the help texts name it."""
    assert resolve_device("auto") == resolve_device(None)
    assert Settings(device="auto").device == "auto"
    assert LoadModelRequest(device="auto").device == "auto"
    help_text = subprocess.run(
        [sys.executable, "-m", "fishtts", "tts", "--help"], env=process_env(), capture_output=True, text=True
    ).stdout
    assert "auto" in " ".join(help_text.split()).split("--device", 1)[1][:200]


@pytest.mark.parametrize(
    "option, value",
    [("--log-level", "trace"), ("--log-level", "loud"), ("--max-upload-mb", "inf"), ("--max-batch-size", "100000000")],
)
def test_an_option_value_the_server_cannot_use_is_one_line_and_exit_2(tmp_path, option, value):
    """(`trace`, which uvicorn knows and logging does not, and an infinite size were tracebacks; a batch
    whose caches cannot be allocated started, said "ok" and failed every request with a 500)"""
    result = run_server(option, value, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Invalid value" in result.stderr


def test_an_uncreatable_references_dir_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_server("--references-dir", "a-file/references", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "Error" in line or "Traceback" in line]
    assert len(lines) == 1 and "--references-dir" in lines[0], result.stderr


def test_health_reports_a_failed_load_and_polls_are_not_logged(tmp_path):
    workdir = make_workdir(tmp_path)
    server = Server(
        workdir, "--load", "default", "--checkpoints-dir", "no-such-folder", "--log-level", "info", load=False
    )
    try:
        deadline = time.monotonic() + 60
        while (health := requests.get(server.url + "/v1/health", timeout=5)).json()["status"] == "ok":
            assert time.monotonic() < deadline, "the failed load never showed in /v1/health"
            time.sleep(0.2)
        assert health.status_code == 503 and "--load default failed" in health.json()["reason"]
        assert "default" in health.json()["load_errors"]
        for _ in range(3):
            requests.get(server.url + "/v1/health", timeout=5)
        assert requests.get(server.url + "/v1/models", timeout=5).status_code == 200
        time.sleep(0.5)
        log = server.output()
        assert "GET /v1/models" in log  # the access log is on...
        assert "/v1/health" not in log  # ...but not for health polls
    finally:
        server.stop()


def test_the_server_and_the_command_line_read_one_checkpoints_variable():
    from core.checkpoints import CHECKPOINTS_DIR_ENV
    from server.settings import env_name

    assert env_name("checkpoints_dir") == CHECKPOINTS_DIR_ENV


def test_the_scrubber_hides_real_paths_only():
    assert scrub("hi </s> there") == "hi </s> there"
    assert scrub("1/2 and a/b") == "1/2 and a/b"
    assert "secret" not in scrub(f"cannot open {ROOT}/secret/file.pth") and "<path>" in scrub(f"at {ROOT}/x")
    assert scrub(r"C:\Users\me\model.pth is missing") == "<path> is missing"


def test_ctrl_c_stops_running_generations_and_answers_them_in_json(tmp_path):
    server = Server(add_s1_model(make_workdir(tmp_path)), "--load", "s1=load_s1.json", "--log-level", "info")
    answers = []

    def long_request(seed: int) -> None:  # (tiny S1: 15 of these run ~20 s, past uvicorn's 10 s graceful wait)
        body = {"text": "Hello there, this is a long test sentence.", "max_new_tokens": 2560, "seed": seed}
        try:
            response = requests.post(server.url + "/v1/models/s1/invoke", json=body, timeout=120)
            answers.append((response.status_code, response.headers.get("content-type")))
        except requests.ConnectionError:
            answers.append(("dropped", None))

    clients = [threading.Thread(target=long_request, args=(seed,)) for seed in range(15)]
    for client in clients:
        client.start()
    time.sleep(1.5)
    stopped = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    server.process.wait(timeout=60)
    exited = time.monotonic() - stopped
    for client in clients:
        client.join()
    log = server.output()
    server.stop()
    assert exited < 16, f"the server took {exited:.1f} s to exit (its workers finished every generation)"
    assert all(a in ((200, "audio/wav"), (503, "application/json")) for a in answers), answers
    assert (503, "application/json") in answers  # (else nothing was still running: the test tested nothing)
    assert "Traceback" not in log and "shutting down" in log
