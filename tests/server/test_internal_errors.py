"""An unexpected failure inside generation: 500 with only a request id, and no lock or lease left held.

In-process (Starlette's TestClient) because the fault is injected into the engine.
"""

from __future__ import annotations

import logging

import core.scheduler
from tests.server.helpers import FAST


def test_crash_inside_generation_is_a_clean_500_and_releases_everything(client, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("CUDA exploded in /home/someone/secret/place")

    monkeypatch.setattr(core.scheduler, "decode_step", explode)  # inside the batch scheduler's thread
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
