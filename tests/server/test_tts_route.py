"""POST /v1/tts, the original fish-speech server's route: its `ServeTTSRequest` payload as JSON (audio as
base64) and as msgpack (audio as bytes, what its ormsgpack client sends), its raw-PCM stream, saved
voices by `reference_id`, for a v0.2 and an S1-mini model alike; bad payloads are 4xx JSON."""

from __future__ import annotations

import base64
import io

import msgpack
import numpy as np
import pytest
import soundfile as sf

from tests.helpers import assert_same_pcm
from tests.server.helpers import add_s1_model, assert_json_error, audio_bytes, make_workdir, tone

FAST = {"max_new_tokens": 8, "seed": 9}  # random weights: a short budget
CLIP = audio_bytes(tone(2.0))
MODELS = ["default", "s1"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return add_s1_model(make_workdir(tmp_path_factory.mktemp("work-tts")))


@pytest.fixture(scope="module")
def rates(client) -> dict[str, int]:
    """Both families loaded: their sample rates by model name."""
    from tests.server.helpers import S1_LOAD

    assert client.put("/v1/models/s1", json=S1_LOAD).status_code == 200
    return {d["name"]: d["sample_rate"] for d in client.get("/v1/models").json()["details"]}


def tts_msgpack(client, body: dict, **kwargs):
    return client.post(
        "/v1/tts", content=msgpack.packb(body), headers={"content-type": "application/msgpack"}, **kwargs
    )


def samples(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    return audio, rate


@pytest.mark.parametrize("model", MODELS)
def test_json_and_msgpack_payloads_give_the_same_audio(client, rates, model):
    text = "The original client's payload."
    as_json = client.post(
        "/v1/tts",
        json={
            "text": text,
            "model": model,
            "references": [{"audio": base64.b64encode(CLIP).decode(), "text": "a tone"}],
            **FAST,
        },
    )
    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["content-disposition"] == "attachment; filename=audio.wav"
    audio, rate = samples(as_json.content)
    assert rate == rates[model] and audio.size > 0
    as_msgpack = tts_msgpack(
        client,
        {
            "text": text,
            "model": model,
            "references": [{"audio": CLIP, "text": "a tone"}],
            # the original client's other fields, accepted and not used
            "chunk_length": 200,
            "normalize": True,
            "use_memory_cache": "on",
            "latency": "normal",
            **FAST,
        },
    )
    assert as_msgpack.status_code == 200, as_msgpack.text
    assert as_msgpack.content == as_json.content


@pytest.mark.parametrize("model", MODELS)
def test_streaming_sends_raw_pcm_like_the_original(client, rates, model):
    body = {"text": "A stream without a header.", "model": model, "format": "wav", **FAST}
    whole, rate = samples(tts_msgpack(client, body).content)
    response = tts_msgpack(client, {**body, "streaming": True})
    assert response.status_code == 200 and response.headers["x-sample-rate"] == str(rate)
    assert response.content[:4] != b"RIFF"  # the original's stream never carried its WAV header
    assert response.headers["content-disposition"] == "attachment; filename=audio.pcm"  # (not a headerless .wav)
    streamed = np.frombuffer(response.content, dtype="<i2")
    assert_same_pcm(streamed, whole)


def test_reference_id_is_a_saved_voice_for_either_family(client, rates):
    made = client.post(
        "/v1/references",
        json={"name": "Teller", "id": "teller", "transcript": "a tone", "audio": base64.b64encode(CLIP).decode()},
    )
    assert made.status_code == 201, made.text
    for model in MODELS:
        by_id = tts_msgpack(client, {"text": "By id.", "reference_id": "teller", "model": model, **FAST})
        inline = tts_msgpack(
            client,
            {
                "text": "By id.",
                "references": [{"audio": CLIP, "text": "a tone"}],
                "reference_id": "teller",  # wins over references, as in the original
                "model": model,
                **FAST,
            },
        )
        assert by_id.status_code == 200 and samples(by_id.content)[1] == rates[model]
        assert inline.content == by_id.content


def test_other_formats(client, rates):
    mp3 = client.post("/v1/tts", json={"text": "In mp3.", "format": "mp3", **FAST})
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg"
    pcm = client.post("/v1/tts", json={"text": "In pcm.", "format": "pcm", "model": "s1", **FAST})
    assert pcm.status_code == 200 and pcm.headers["content-type"] == "audio/pcm"  # the original answered 500
    wav = samples(client.post("/v1/tts", json={"text": "In pcm.", "model": "s1", **FAST}).content)[0]
    np.testing.assert_array_equal(np.frombuffer(pcm.content, dtype="<i2"), wav)


@pytest.mark.parametrize(
    "body, status",
    [
        ({}, 422),
        ({"text": "   "}, 422),
        ({"text": "x" * 1001}, 422),
        ({"text": "hi", "references": [{"audio": CLIP, "text": "a"}] * 2}, 422),
        ({"text": "hi", "references": [{"audio": b"not audio", "text": "a"}]}, 422),
        ({"text": "hi", "references": [{"audio": "%%%not base64%%%", "text": "a"}]}, 422),
        ({"text": "hi", "references": [{"audio": CLIP}]}, 422),
        ({"text": "hi", "streaming": True, "format": "mp3"}, 422),
        ({"text": "hi", "temperature": 0}, 422),
        ({"text": "hi", "reference_id": "nobody"}, 404),
        ({"text": "hi", "model": "absent"}, 404),
    ],
    ids=[
        "no-text",
        "blank",
        "too-long",
        "two-references",
        "not-audio",
        "bad-base64",
        "no-transcript",
        "stream-mp3",
        "temperature-0",
        "unknown-voice",
        "unknown-model",
    ],
)
def test_bad_payloads_are_4xx_json(client, rates, body, status):
    assert_json_error(tts_msgpack(client, body), status)


def test_malformed_bodies(client, rates):
    assert_json_error(tts_msgpack_raw(client, b"\xc1"), 400)
    assert_json_error(tts_msgpack_raw(client, b"\x91" * 5000), 400)  # nested too deeply
    assert_json_error(tts_msgpack_raw(client, msgpack.packb([1, 2])), 422)  # not a map
    assert_json_error(client.post("/v1/tts", content=b"{", headers={"content-type": "application/json"}), 400)
    assert_json_error(client.post("/v1/tts", content=b"text=hi", headers={"content-type": "text/plain"}), 415)


def test_a_body_of_many_bad_items_gets_one_short_answer(client, rates):
    """A list of a million bad items was validated item by item (a minute of the event loop, gigabytes) and
    each one's error sent back (151 MB); one reference at most is checked before any item."""
    for body in ({"text": "hi", "references": [{}] * 200_000}, {"text": "hi", "references": [0] * 200_000}):
        answer = tts_msgpack(client, body)
        assert_json_error(answer, 422)
        assert "at most one reference" in answer.json()["message"]
        assert len(answer.content) < 2000


def tts_msgpack_raw(client, raw: bytes):
    return client.post("/v1/tts", content=raw, headers={"content-type": "application/msgpack"})
