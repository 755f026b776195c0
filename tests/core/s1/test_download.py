"""S1 download errors, against a real local HTTP server standing in for the Hub (HF endpoint on 127.0.0.1)."""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.s1.download import S1_FILENAMES, S1DownloadError, download_s1

from .support import S1_CHECKPOINT


class GatedHub(BaseHTTPRequestHandler):
    """Answers every file request like the Hub answers a gated repo without access."""

    def refuse(self):
        self.send_response(401 if "Bearer" not in self.headers.get("Authorization", "") else 403)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model fishaudio/openaudio-s1-mini is restricted.")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = refuse

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def gated_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), GatedHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_missing_token_says_how_to_get_access(tmp_path, gated_endpoint, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(S1DownloadError, match="gated and no token given.*set HF_TOKEN"):
        download_s1(tmp_path, endpoint=gated_endpoint)


def test_refused_token_is_named_as_refused(tmp_path, gated_endpoint, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(S1DownloadError, match="token was refused"):
        download_s1(tmp_path, endpoint=gated_endpoint)


def test_files_already_present_are_kept_without_any_request(tmp_path):
    for name in S1_FILENAMES:
        shutil.copy(S1_CHECKPOINT / name, tmp_path / name)
    paths = download_s1(tmp_path, endpoint="http://127.0.0.1:9")
    assert [p.name for p in paths] == list(S1_FILENAMES)


def test_the_cli_download_of_s1_without_a_token_says_what_to_do(tmp_path, gated_endpoint):
    from tests.helpers import run_cli

    result = run_cli(
        ["download", "--model", "openaudio-s1-mini", "--checkpoints-dir", tmp_path / "s1"],
        cwd=tmp_path,
        env={"HF_TOKEN": "", "HF_ENDPOINT": gated_endpoint, "HF_HUB_OFFLINE": "0"},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "HF_TOKEN" in result.stderr
