"""A saved voice's clip is encoded once, when it is saved: requests that speak in it (invoke, streamed,
the OpenAI route) read its kept codes and never run the codec's encoder again."""

from __future__ import annotations

import base64

import pytest

from core.families.fish_speech import FishSpeech
from tests.server.helpers import FAST, audio_bytes, read_wav, tone


@pytest.fixture
def encodes(monkeypatch) -> list[int]:
    """Every reference encode of the v0.2 family (the VQGAN's), as the clip's sample count."""
    calls: list[int] = []
    encode = FishSpeech.encode

    def counted(self, audio):
        calls.append(len(audio))
        return encode(self, audio)

    monkeypatch.setattr(FishSpeech, "encode", counted)
    return calls


def test_a_saved_voice_is_encoded_once_not_per_request(client, encodes):
    clip = base64.b64encode(audio_bytes(tone(2.0))).decode()
    voice = {"id": "kept", "name": "Kept", "transcript": "hello there", "audio": clip}
    assert client.post("/v1/references", json=voice).status_code == 201
    assert len(encodes) == 1
    for body in ({"text": "one", **FAST}, {"text": "two", "streaming": True, **FAST}):
        spoken = client.post("/v1/models/default/invoke", json={**body, "reference_id": "kept"})
        assert spoken.status_code == 200, spoken.text
        assert read_wav(spoken.content)[0].size > 0
    speech = {"model": "tts-1", "voice": "kept", "input": "three", "response_format": "wav", **FAST}
    assert client.post("/v1/audio/speech", json=speech).status_code == 200
    assert len(encodes) == 1  # the clip's codes were kept, not encoded again per request
