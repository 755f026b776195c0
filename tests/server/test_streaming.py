"""Streamed synthesis over real HTTP: the stream is a valid WAV (or PCM) equal to the non-streamed
response, early errors are still JSON, and a client that disconnects frees the model at once."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import numpy as np
import requests
import soundfile as sf

from tests.helpers import assert_same_pcm
from tests.server.helpers import (
    Server,
    add_s1_model,
    assert_json_error,
    audio_bytes,
    make_workdir,
    queue_pending,
    raw_post,
    tone,
    wait_for,
)

INVOKE = "/v1/models/default/invoke"
LONG = " ".join(f"This is sentence number {n}." for n in range(1, 8))


def invoke(server, **fields) -> requests.Response:
    return requests.post(
        server.url + INVOKE, json={"max_new_tokens": 40, "seed": 3, **fields}, timeout=120, stream=True
    )


def pcm_of_wav(data: bytes) -> np.ndarray:
    audio, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == 22050
    return audio


def test_the_servers_started_here_decode_in_float32(server):
    """What the comparisons below rest on: one step of int16 is float32's rounding, and the tests' servers
    keep the pinned float32 (tests/paths.py) while "auto" could pick bfloat16 by a timing."""
    details = requests.get(server.url + "/v1/models", timeout=10).json()["details"]
    assert [d["vqgan_precision"] for d in details] == ["float32"]


def test_streamed_wav_equals_the_non_streamed_response(server):
    whole = invoke(server, text="hello there, streaming world")
    streamed = invoke(server, text="hello there, streaming world", streaming=True)
    assert whole.status_code == streamed.status_code == 200
    assert "content-length" not in streamed.headers and streamed.headers["transfer-encoding"] == "chunked"
    body = b"".join(streamed.iter_content(chunk_size=None))
    assert body[:4] == b"RIFF" and body[4:8] == b"\xff\xff\xff\xff"  # length unknown while streaming
    assert body[40:44] == b"\xff\xff\xff\xff"
    assert_same_pcm(pcm_of_wav(body), pcm_of_wav(whole.content))


def test_streamed_long_text_equals_the_non_streamed_one(server):
    whole = invoke(server, text=LONG, max_new_tokens=20)
    streamed = invoke(server, text=LONG, max_new_tokens=20, streaming=True, format="pcm")
    assert streamed.headers["content-type"] == "audio/pcm"
    pcm = np.frombuffer(b"".join(streamed.iter_content(chunk_size=None)), dtype="<i2")
    assert_same_pcm(pcm, pcm_of_wav(whole.content))


def test_openai_route_streams_pcm(server, tmp_path):
    voice = requests.post(
        server.url + "/v1/references",
        data={"name": "Streamer", "id": "streamer", "transcript": "a tone"},
        files={"audio": ("tone.wav", (server.workdir / "references" / "0_input.wav").read_bytes())},
        timeout=60,
    )
    assert voice.status_code in (200, 201), voice.text
    body = {
        "model": "tts-1",
        "voice": "streamer",
        "input": "streaming through the OpenAI route",
        "response_format": "pcm",
        "max_new_tokens": 30,
        "seed": 9,
    }
    whole = requests.post(server.url + "/v1/audio/speech", json=body, timeout=120)
    streamed = requests.post(
        server.url + "/v1/audio/speech", json={**body, "stream_format": "audio"}, timeout=120, stream=True
    )
    assert whole.status_code == streamed.status_code == 200
    pcm = np.frombuffer(b"".join(streamed.iter_content(chunk_size=None)), dtype="<i2")
    assert_same_pcm(pcm, np.frombuffer(whole.content, dtype="<i2"))
    mp3 = requests.post(
        server.url + "/v1/audio/speech", json={**body, "response_format": "mp3", "stream": True}, timeout=60
    )
    assert mp3.status_code == 400 and "pcm or wav" in mp3.json()["error"]["message"]


def test_early_errors_are_json_not_a_broken_stream(server):
    assert_json_error(invoke(server, text="x", streaming=True, format="mp3"), 422)
    assert_json_error(
        invoke(server, text="hi", streaming=True, reference_audio="bm90IGF1ZGlv", reference_text="x"), 422
    )
    assert_json_error(
        requests.post(server.url + "/v1/models/nope/invoke", json={"text": "x", "streaming": True}, timeout=30), 404
    )


def test_a_client_that_disconnects_frees_the_model_within_a_second(server):
    payload = json.dumps({"text": LONG * 3, "max_new_tokens": 0, "seed": 1, "streaming": True}).encode()
    with raw_post(server, INVOKE, payload) as sock:
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        assert leases(server) == 2  # generating: one model lease, one queue place
    closed = time.monotonic()
    while leases(server) and time.monotonic() - closed < 1.0:
        time.sleep(0.02)
    assert leases(server) == 0, "the model was still busy a second after the client left"
    start = time.monotonic()
    assert invoke(server, text="next please", max_new_tokens=8).status_code == 200
    assert time.monotonic() - start < 10  # not queued behind the abandoned generation


def test_a_client_of_the_whole_audio_that_disconnects_frees_the_model_too(server):
    """Not streamed: the audio would be sent only at the end, so the server watches the connection meanwhile
    (a few clients that gave up would otherwise hold the queue for as long as their texts take)."""
    payload = json.dumps({"text": LONG * 3, "max_new_tokens": 0, "seed": 1}).encode()
    with raw_post(server, INVOKE, payload):
        wait_for(lambda: leases(server) == 2)  # generating: one model lease, one queue place
        time.sleep(0.3)
    closed = time.monotonic()
    while leases(server) and time.monotonic() - closed < 1.0:
        time.sleep(0.02)
    assert leases(server) == 0, "the model was still busy a second after the client left"
    assert invoke(server, text="next please", max_new_tokens=8).status_code == 200


def test_clients_that_leave_while_waiting_their_turn_free_their_queue_places_at_once(tmp_path):
    """One generation holds the batch's one slot: a streamed request waits in the batch for it (on a worker),
    a whole one for a worker. Their clients leave: both places are free at once, not when the generation
    ends (the streamed one had nothing watching its client before its first audio; the whole one's work,
    never started, could not be cancelled). S1-mini: it reads a text whole, one long job."""
    workdir = add_s1_model(make_workdir(tmp_path))
    args = ("--workers", "2", "--max-batch-size", "1", "--max-queue", "3", "--load", "s1=load_s1.json")
    server = Server(workdir, *args, load=False)
    long = {"text": "long one", "max_new_tokens": 2000, "temperature": 1e-6, "top_p": 1e-6}  # ~1000 frames
    try:
        server.wait_healthy(["s1"])
        running = send_invoke(server, {**long, "seed": 1})
        wait_for(lambda: leases(server) == 2)  # generating: one model lease, one queue place
        ghosts = [send_invoke(server, {**long, "seed": 2, **streamed}) for streamed in ({"streaming": True}, {})]
        wait_for(lambda: queue_pending(server) == 3)
        time.sleep(0.3)  # the streamed one is on its worker by now
        for ghost in ghosts:
            ghost.close()
        closed = time.monotonic()
        wait_for(lambda: queue_pending(server) == 1, timeout=1.0)
        assert time.monotonic() - closed < 1.0
        assert leases(server) == 2, "the generation ended before the clients left; give it more frames"
        running.settimeout(120)
        assert running.recv(12).startswith(b"HTTP/1.1 200")
        running.close()
    finally:
        server.stop()


def test_a_client_that_leaves_while_its_reference_is_encoded_frees_its_place_within_a_chunk(tmp_path):
    """S1-mini's codec encodes a clip chunk by chunk; a client gone stops it at the next chunk, streamed or
    not (it ran to the clip's end before: a long upload's client could leave and still hold its place)."""
    workdir = add_s1_model(make_workdir(tmp_path))
    args = ("--max-reference-seconds", "80", "--load", "s1=load_s1.json")
    server = Server(workdir, *args, load=False)
    clip = base64.b64encode(audio_bytes(tone(80.0, sr=16000), sr=16000)).decode()  # the tiny context holds 82 s
    try:
        server.wait_healthy(["s1"])
        started = time.monotonic()
        assert requests.post(server.url + "/v1/vqgan/encode", json={"audios": [clip], "model": "s1"}).ok
        whole_encode = time.monotonic() - started  # ~2.5 s on 2 vCPUs, ~100 chunks
        for streamed in (False, True):
            body = {"text": "hi", "max_new_tokens": 8, "reference_audio": clip, "reference_text": f"a {streamed}"}
            client = send_invoke(server, {**body, "streaming": streamed})
            wait_for(lambda: leases(server) == 2)  # admitted and at work
            time.sleep(whole_encode / 10)  # encoding
            client.close()
            closed = time.monotonic()
            wait_for(lambda: leases(server) == 0, timeout=whole_encode * 2)
            freed = time.monotonic() - closed
            assert freed < whole_encode / 3, f"streamed={streamed}: the encode ran on after its client left"
    finally:
        server.stop()


def send_invoke(server, body: dict) -> socket.socket:
    return raw_post(server, "/v1/models/s1/invoke", json.dumps(body).encode())


def leases(server) -> int:
    """Requests holding the model plus requests counted by the queue."""
    health = requests.get(server.url + "/v1/health", timeout=5).json()
    return health["models"][0]["active_requests"] + health["queue"]["pending"]
