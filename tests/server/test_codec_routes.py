"""POST /v1/vqgan/encode and /v1/vqgan/decode, the original S1 server's codec routes: msgpack or JSON in,
msgpack out, for a v0.2 and an S1-mini model alike; the codes equal the engine's reference encode and
the audio its one-shot decode; bad payloads are 4xx JSON naming the item."""

from __future__ import annotations

import base64
import time

import msgpack
import numpy as np
import pytest
import requests

from tests.server.helpers import (
    S1_LOAD,
    add_s1_model,
    assert_json_error,
    audio_bytes,
    make_workdir,
    queue_pending,
    raw_post,
    tone,
    wait_for,
)

MODELS = ["default", "s1"]
CLIPS = [audio_bytes(tone(1.0)), audio_bytes(tone(2.0, freq=330.0))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return add_s1_model(make_workdir(tmp_path_factory.mktemp("work-codec")))


@pytest.fixture(scope="module")
def details(client) -> dict[str, dict]:
    assert client.put("/v1/models/s1", json=S1_LOAD).status_code == 200
    return {d["name"]: d for d in client.get("/v1/models").json()["details"]}


def post(client, path: str, body: dict, packed: bool = True):
    if packed:
        return client.post(path, content=msgpack.packb(body), headers={"content-type": "application/msgpack"})
    return client.post(path, json=body)


def unpack(response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/msgpack"
    return msgpack.unpackb(response.content)


@pytest.mark.parametrize("model", MODELS)
def test_encode_then_decode_round_trips_each_item(client, details, model):
    info = details[model]
    tokens = unpack(post(client, "/v1/vqgan/encode", {"audios": CLIPS, "model": model}))["tokens"]
    assert len(tokens) == 2
    for codes, seconds in zip(tokens, (1.0, 2.0)):
        codes = np.asarray(codes)
        assert codes.shape[0] == info["num_codebooks"] and 0 <= codes.min() and codes.max() < info["codebook_size"]
        assert abs(codes.shape[1] - seconds * info["frame_rate"]) <= 1  # each trimmed to its own length
    as_json = {"audios": [base64.b64encode(c).decode() for c in CLIPS], "model": model}
    assert unpack(post(client, "/v1/vqgan/encode", as_json, packed=False))["tokens"] == tokens

    answer = post(client, "/v1/vqgan/decode", {"tokens": tokens, "model": model})
    audios = unpack(answer)["audios"]
    rate = int(answer.headers["x-sample-rate"])
    assert rate == info["sample_rate"]
    hop = round(info["sample_rate"] / info["frame_rate"])
    for pcm, codes in zip(audios, tokens):
        audio = np.frombuffer(pcm, dtype="<f2")
        assert audio.size == len(codes[0]) * hop and np.isfinite(audio).all()
    # the same audio as the decode of one array alone (items do not leak into each other)
    alone = unpack(post(client, "/v1/vqgan/decode", {"tokens": tokens[1:], "model": model}))["audios"]
    assert alone[0] == audios[1]


@pytest.mark.parametrize(
    "path, body, status, said",
    [
        ("/v1/vqgan/encode", {"audios": [b"not audio"]}, 422, "audios.0"),
        ("/v1/vqgan/encode", {"audios": [CLIPS[0], audio_bytes(tone(0.1))]}, 422, "audios.1"),
        ("/v1/vqgan/encode", {"audios": []}, 422, "audios"),
        ("/v1/vqgan/encode", {"audios": [CLIPS[0]], "model": "nope"}, 404, "Cannot find model"),
        ("/v1/vqgan/decode", {"tokens": [[[1, 2], [3]]]}, 422, "tokens.0"),
        ("/v1/vqgan/decode", {"tokens": [[[1, 2]] * 4, [[10**6, 2]] * 4]}, 422, "tokens.1"),
        ("/v1/vqgan/decode", {"tokens": [[[1, 2]] * 3]}, 422, "tokens.0"),  # v0.2 has 4 codebooks
        ("/v1/vqgan/decode", {"tokens": [[[0] * 5000] * 4]}, 422, "context"),
        ("/v1/vqgan/decode", {"tokens": [[[1]] * 4, [[]] * 4]}, 422, "tokens.1"),  # no frames
    ],
)
def test_bad_payloads_are_json_errors_naming_the_item(client, details, path, body, status, said):
    answer = post(client, path, body)
    assert_json_error(answer, status)
    assert said in answer.json()["message"]


def test_silence_is_a_clip_the_codec_encodes(client, details):
    """(a voice's clip must not be silent; the codec's encode takes any clip)"""
    silence = audio_bytes(np.zeros(22050, np.float32))
    (codes,) = unpack(post(client, "/v1/vqgan/encode", {"audios": [silence], "model": "default"}))["tokens"]
    assert np.asarray(codes).shape[1] > 0


def test_many_values_that_are_not_codes_get_one_short_answer(client, details):
    """One error for the first value that is not an integer, not one for each (a body holds millions)."""
    for bad in ("x", 1.5, None, [1]):
        answer = post(
            client, "/v1/vqgan/decode", {"tokens": [[[1, 2]] * 4, [[1, 2], [3, 4], [5, bad]] + [[bad] * 50_000]]}
        )
        assert_json_error(answer, 422)
        assert "the value at tokens.1.2.1 is not an integer" in answer.json()["message"]
        assert len(answer.content) < 2000


def test_codes_the_field_always_took_still_decode(client, details):
    """(whole-number floats and numeric strings, which pydantic's int takes: the check for many bad values must
    not refuse them)"""
    as_ints = unpack(post(client, "/v1/vqgan/decode", {"tokens": [[[1, 2]] * 4]}))["audios"]
    for codes in ([[1.0, 2.0]] * 4, [["1", "2"]] * 4):
        assert unpack(post(client, "/v1/vqgan/decode", {"tokens": [codes]}, packed=False))["audios"] == as_ints


def test_a_validation_error_lists_its_first_details_only(client, details):
    answer = post(client, "/v1/vqgan/decode", {"tokens": [["a"] * 40]})  # 40 rows that are not lists
    assert_json_error(answer, 422)
    assert len(answer.json()["details"]) == 20 and "(and 39 more)" in answer.json()["message"]


def test_a_body_that_is_not_msgpack_or_json_is_refused(client, details):
    assert_json_error(client.post("/v1/vqgan/encode", content=b"\x00", headers={"content-type": "text/plain"}), 415)
    assert_json_error(post(client, "/v1/vqgan/decode", {}), 422)
    bad = client.post("/v1/vqgan/decode", content=b"\xc1", headers={"content-type": "application/msgpack"})
    assert_json_error(bad, 400)


def test_a_client_that_leaves_stops_its_codec_work_after_the_item_in_progress(server):
    """(Its work ran to the end, holding the model's queue place and thread: 16 long decodes for nobody)"""
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, 100, size=(4, 256)).tolist() for _ in range(16)]
    sock = raw_post(server, "/v1/vqgan/decode", msgpack.packb({"tokens": tokens}), "application/msgpack")
    wait_for(lambda: queue_pending(server) > 0)  # admitted
    sock.close()
    left = time.monotonic()
    wait_for(lambda: queue_pending(server) == 0, timeout=10)
    freed = time.monotonic() - left
    # all 16 items take 16 item-times; stopping after the one in progress takes about one
    alone = time.monotonic()
    assert (
        requests.post(
            server.url + "/v1/vqgan/decode",
            data=msgpack.packb({"tokens": tokens[:1]}),
            headers={"Content-Type": "application/msgpack"},
            timeout=60,
        ).status_code
        == 200
    )
    one_item = time.monotonic() - alone
    assert freed < 4 * one_item + 0.5, (freed, one_item)
