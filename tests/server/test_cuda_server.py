"""The server on a GPU, loaded with the web UI's own load body (cuda, float16, compile), the way most
users with a GPU run it, and S1-mini compiled beside it: a real process, real HTTP. Runs only where
CUDA exists."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile as sf
import torch

from tests.server.helpers import S1_FOLDER, add_s1_model, make_workdir
from tests.tolerances import MIN_SNR_DB, snr_db

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")

SERVER_ARGS = ("--compile",)  # a client's `compile: true` counts only when the operator allows it
SERVER_TIMEOUT = 600  # the load compiles the decode step (and warms it up) before the model is served
INVOKE = "/v1/models/default/invoke"
HOP = 512  # the VQGAN's samples per code frame


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return add_s1_model(make_workdir(tmp_path_factory.mktemp("work-cuda")))


def invoke(server, **fields) -> requests.Response:
    body = {"text": "a sentence spoken on the graphics card", "max_new_tokens": 24, "seed": 5, **fields}
    return requests.post(server.url + INVOKE, json=body, timeout=300, stream=True)


def test_the_web_ui_load_body_gives_a_compiled_float16_model_on_the_gpu(server):
    (model,) = requests.get(server.url + "/v1/health", timeout=10).json()["models"]
    assert model["device"].startswith("cuda") and model["precision"] == "float16" and model["compiled"], model


def test_synthesis_streams_the_same_audio_as_the_whole_response(server):
    """The same codes either way; the VQGAN's convs run on cuDNN, in TF32 by default (10 significant bits,
    more than bfloat16's 8), and a chunk's convs may sum in another order than the whole's: so the
    streamed audio is held to the bar for a bfloat16 decode, not to the bits."""
    whole = invoke(server)
    streamed = invoke(server, streaming=True)
    assert whole.status_code == streamed.status_code == 200, whole.text
    audio, rate = sf.read(io.BytesIO(whole.content), dtype="float32")
    assert rate == 22050 and 0 < audio.size <= 24 * HOP and np.abs(audio).max() > 0
    pcm, _ = sf.read(io.BytesIO(b"".join(streamed.iter_content(chunk_size=None))), dtype="float32")
    assert pcm.shape == audio.shape and snr_db(audio, pcm) >= MIN_SNR_DB


def test_concurrent_requests_are_batched_and_all_succeed(server):
    """The batch scheduler on the GPU: four requests at once give as much audio as each alone (random
    weights never stop early; float16 sums may round differently in another batch size, so not the bits)."""
    texts = [f"request number {n} on the card" for n in range(4)]
    alone = [invoke(server, text=t).content for t in texts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda t: invoke(server, text=t), texts))
    assert all(r.status_code == 200 for r in together), [r.text[:200] for r in together]
    for single, batched in zip(alone, (r.content for r in together), strict=True):
        a, _ = sf.read(io.BytesIO(single), dtype="int16")
        b, _ = sf.read(io.BytesIO(batched), dtype="int16")
        assert a.size > 0 and a.shape == b.shape
    health = requests.get(server.url + "/v1/health", timeout=10).json()
    assert health["status"] == "ok" and health["models"][0]["active_requests"] == 0


def test_s1_loads_compiled_on_the_gpu_and_speaks(server):
    """S1-mini's decode captured in CUDA graphs at load (core/s1/compile.py), then a request through them."""
    body = {"device": "cuda", "s1": {"folder": S1_FOLDER, "compile": True}}
    loaded = requests.put(server.url + "/v1/models/s1", json=body, timeout=600)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["compiled"] and loaded.json()["device"].startswith("cuda"), loaded.json()
    spoken = requests.post(
        server.url + "/v1/models/s1/invoke",
        json={"text": "a compiled sentence", "max_new_tokens": 8, "seed": 5},
        timeout=300,
    )
    assert spoken.status_code == 200, spoken.text
    audio, _ = sf.read(io.BytesIO(spoken.content), dtype="float32")
    assert audio.size > 0 and np.isfinite(audio).all()
