"""An unexpected failure inside generation: 500 with only a request id, and no lock or lease left held.

In-process (Starlette's TestClient) because the fault is injected into the engine.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient

import core.lm.stepper
import core.scheduler
from core.lm.generate import Sequence
from tests.server.helpers import FAST, WEBUI_LOAD


def test_crash_inside_generation_is_a_clean_500_and_releases_everything(client, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("CUDA exploded in /home/someone/secret/place")

    monkeypatch.setattr(core.lm.stepper, "decode_logits", explode)  # inside the batch scheduler's thread
    with caplog.at_level(logging.ERROR, logger="fishtts.server"):
        response = client.post("/v1/models/default/invoke", json={"text": "hello", **FAST})
    assert response.status_code == 500
    body = response.json()
    assert body["statusCode"] == 500 and body["error"] == "Internal Server Error"
    assert body["requestId"] in body["message"]
    assert "secret" not in response.text and "exploded" not in response.text and "Traceback" not in response.text
    assert any(body["requestId"] in record.getMessage() for record in caplog.records)  # the details are logged

    monkeypatch.undo()
    health = client.get("/v1/health").json()
    assert health["models"][0]["active_requests"] == 0 and health["queue"]["pending"] == 0
    assert client.post("/v1/models/default/invoke", json={"text": "hello", **FAST}).status_code == 200  # no lock held
    assert client.delete("/v1/models/default").status_code == 200  # no lease held


@pytest.fixture
def loaded(client):
    """The model 'default' is loaded (an earlier test may have deleted it)."""
    if "default" not in client.app.state.ctx.registry.names():
        assert client.put("/v1/models/default", json=WEBUI_LOAD).status_code == 200
    return client


def test_a_failure_in_one_requests_sampling_fails_it_alone(loaded, monkeypatch):
    """A fault injected into one sequence's sampling on the scheduler thread: that request gets a 500 with
    its request id, a request decoding in the same batch finishes, and the model goes on serving."""
    accept = Sequence.accept
    marker = 0.123  # the temperature that marks the request whose sampling fails

    def faulty_accept(self, out):
        if self.params.temperature == marker and self.steps == 3:
            raise RuntimeError("injected sampling fault")
        return accept(self, out)

    monkeypatch.setattr(Sequence, "accept", faulty_accept)
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(
            loaded.post,
            "/v1/models/default/invoke",
            json={"text": "hello", "max_new_tokens": 40, "seed": 1, "temperature": marker},
        )
        good = pool.submit(
            loaded.post, "/v1/models/default/invoke", json={"text": "hello there", "max_new_tokens": 40, "seed": 2}
        )
        bad, good = bad.result(timeout=120), good.result(timeout=120)
    assert bad.status_code == 500 and bad.json()["requestId"] in bad.json()["message"]
    assert good.status_code == 200
    monkeypatch.undo()
    assert loaded.post("/v1/models/default/invoke", json={"text": "hello", **FAST}).status_code == 200


def test_an_overflowing_penalty_is_refused_before_it_reaches_the_model(loaded):
    for route, body in (
        ("/v1/models/default/invoke", {"text": "hello"}),
        ("/v1/audio/speech", {"model": "tts-1", "input": "hello", "voice": "x"}),
    ):
        response = loaded.post(route, json={**body, **FAST, "repetition_penalty": 1e-300})
        assert response.status_code in (400, 422), response.text
    assert loaded.get("/v1/health").status_code == 200


def test_a_dead_scheduler_fails_fast_shows_in_health_and_a_reload_cures_it(loaded, caplog):
    """The scheduler thread itself dies (a fault injected into its loop): the request that woke it and every
    later one get 503 at once, /v1/health answers 503 naming the model, and loading the model again works."""
    ctx = loaded.app.state.ctx
    bundle = ctx.registry.acquire("default")
    scheduler = bundle.engine.scheduler
    ctx.registry.release(bundle)

    def broken_admit():
        raise RuntimeError("injected scheduler fault")

    scheduler._admit = broken_admit  # the loop calls it on every wake-up
    with caplog.at_level(logging.ERROR):
        first = loaded.post("/v1/models/default/invoke", json={"text": "hello", **FAST})
    assert first.status_code == 503 and first.json()["statusCode"] == 503, first.text
    assert not scheduler._thread.is_alive()
    start = time.monotonic()
    for payload in ({"text": "again", **FAST}, {"text": "streamed", **FAST, "streaming": True}):
        later = loaded.post("/v1/models/default/invoke", json=payload)
        assert later.status_code == 503 and "load" in later.json()["message"], later.text
    assert time.monotonic() - start < 5
    health = loaded.get("/v1/health")
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "default" in health.json()["reason"] and health.json()["models"][0]["failed"]

    assert loaded.put("/v1/models/default", json=WEBUI_LOAD).status_code == 200
    assert loaded.get("/v1/health").status_code == 200
    assert loaded.post("/v1/models/default/invoke", json={"text": "hello", **FAST}).status_code == 200


def test_a_500_is_answered_and_logged_once_never_raised_to_the_server(loaded, monkeypatch, caplog):
    """Starlette's handler for `Exception` answers and then re-raises, so uvicorn logged every traceback a
    second time; now nothing reaches the server (a TestClient that raises server exceptions gets the 500)."""

    def explode(*args, **kwargs):
        raise RuntimeError("injected decode fault")

    monkeypatch.setattr(core.lm.stepper, "decode_logits", explode)
    strict = TestClient(loaded.app, base_url="http://127.0.0.1", raise_server_exceptions=True)
    with caplog.at_level(logging.ERROR):
        response = strict.post("/v1/models/default/invoke", json={"text": "hello", **FAST})
    assert response.status_code == 500
    rid = response.json()["requestId"]
    tracebacks = [r for r in caplog.records if r.exc_info and rid in r.getMessage()]
    assert len(tracebacks) == 1
