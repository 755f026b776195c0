"""The OpenAI-compatible route, driven by the official `openai` client pointed at the server."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests
import soundfile as sf

from tests.server.helpers import SR, audio_bytes, tone

SAMPLING = {"max_new_tokens": 8, "seed": 3}


@pytest.fixture(scope="module")
def client(server):
    """OpenAI's own SDK against the real server, which has a saved voice 'alice'."""
    clip = base64.b64encode(audio_bytes(tone(2.0))).decode()
    voice = {"id": "alice", "name": "Alice", "transcript": "hello there", "audio": clip}
    assert requests.post(server.url + "/v1/references", json=voice, timeout=60).status_code == 201
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed-without---api-key", max_retries=0)


def speak(client, **kwargs) -> bytes:
    params = {"model": "tts-1", "voice": "alice", "input": "Hello from the OpenAI client.", "extra_body": SAMPLING}
    return client.audio.speech.create(**{**params, **kwargs}).content


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac"])
def test_speech_in_each_format(client, fmt):
    audio, sr = sf.read(io.BytesIO(speak(client, response_format=fmt)))
    assert sr == SR and audio.size > 0


def test_default_format_is_mp3(client, server):
    data = speak(client)
    assert data[:3] == b"ID3" or data[0] == 0xFF  # an MP3 stream
    assert sf.read(io.BytesIO(data))[0].size > 0


def test_the_sdks_custom_voice_object_names_a_saved_voice(client):
    """`voice={"id": ...}` is how the OpenAI SDK names a custom voice (a 400 before)."""
    assert speak(client, voice={"id": "alice"}, response_format="wav") == speak(client, response_format="wav")


def test_pcm_is_raw_16_bit(client):
    data = speak(client, response_format="pcm")
    assert len(data) % 2 == 0 and np.frombuffer(data, "<i2").size > 0


def test_streaming_response_and_model_names(client):
    with client.audio.speech.with_streaming_response.create(
        model="default", voice="alice", input="streamed", response_format="wav", extra_body=SAMPLING
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert sf.read(io.BytesIO(response.read()))[0].size > 0
    assert speak(client, model="gpt-4o-mini-tts", response_format="wav", speed=1.5, instructions="calm")


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"voice": "nobody"}, "voice"),
        ({"speed": 5.0}, "speed"),
        ({"speed": 0.1}, "speed"),
        ({"response_format": "opus"}, "response_format"),
        ({"response_format": "aac"}, "response_format"),
        ({"input": ""}, "input"),
        ({"input": "x" * 1001}, "input"),
        ({"extra_body": {"temperature": 0}}, "temperature"),
    ],
)
def test_bad_requests_get_openai_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        speak(client, **kwargs)
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert caught.value.request_id  # the x-request-id header, also logged by the server


def test_unknown_model_is_openai_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        speak(client, model="some-other-model")
    assert caught.value.body["code"] == "model_not_found"


def test_raw_http_shape(server):
    response = requests.post(server.url + "/v1/audio/speech", json={"model": "tts-1", "voice": "alice"})
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert set(response.json()["error"]) >= {"message", "type", "param", "code"}
