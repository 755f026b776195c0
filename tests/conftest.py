"""Shared fixtures: tiny random-weight checkpoints in the real file formats, and a CLI runner."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils.cpp_extension import get_default_build_root

from tests.helpers import synthesize_speech
from tests.paths import PARITY, PINNED_SETTINGS

# The tests' autotune choices (tiny models' shapes) go to a cache of their own, not the user's
# ~/.cache/fishtts; the compiled kernels stay in torch's usual folder (they take a while to build).
# Set at import, so every server or CLI the tests start inherits it.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", get_default_build_root())
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="fishtts-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
os.environ.update(PINNED_SETTINGS)  # (in-process engines and CLIs; servers get them from their helpers)


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
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in lm.items()}, "global_step": 0}, folder / "text2semantic-tiny.pth"
    )
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
    from tests.helpers import load_tiny_engine

    return load_tiny_engine(tiny_checkpoints)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    return synthesize_speech(tmp_path_factory.mktemp("audio") / "reference.wav")


# -- the HTTP API: one workdir, one real server and one in-process client per test module ------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's folder: checkpoints/ (the tiny models under the official names), references/."""
    from tests.server.helpers import make_workdir

    return make_workdir(tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def server(request, workdir):
    """`python -m server` in a real process on the module's workdir, with the official model loaded;
    a module sets SERVER_ARGS / SERVER_ENV / SERVER_TIMEOUT (seconds to become healthy) for its own options.
    For lifecycle, streaming over the wire and kill tests (and the web UI's)."""
    from tests.server.helpers import Server

    module = request.module
    srv = Server(
        workdir,
        *getattr(module, "SERVER_ARGS", ()),
        env=getattr(module, "SERVER_ENV", None),
        timeout=getattr(module, "SERVER_TIMEOUT", 90),
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(request, workdir):
    """The same app in-process (FastAPI's TestClient) with the model loaded, for routing and
    validation; a module sets SERVER_SETTINGS (Settings fields) for its own options."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings
    from tests.server.helpers import WEBUI_LOAD

    settings = Settings(
        checkpoints_dir=workdir / "checkpoints",
        references_dir=workdir / "references",
        **getattr(request.module, "SERVER_SETTINGS", {}),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)  # the original's relative paths (checkpoints/...) are read from here
        with TestClient(
            create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False
        ) as test_client:
            assert test_client.put("/v1/models/default", json=WEBUI_LOAD).status_code == 200
            yield test_client
