"""A table of bad requests: each gets its documented 4xx as JSON, and the server keeps serving."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import socket
import time

import numpy as np
import pytest
import requests

from tests.server.helpers import (
    FAST,
    SR,
    WEBUI_LOAD,
    Server,
    assert_json_error,
    audio_bytes,
    make_workdir,
    read_wav,
    tone,
)

MAX_UPLOAD_MB = 1


class RunsCode:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


SERVER_SETTINGS = {"max_upload_mb": MAX_UPLOAD_MB, "max_models": 1}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The usual workdir, plus links out of its folders and files no loader may trust."""
    workdir = make_workdir(tmp_path_factory.mktemp("bad"))
    outside = tmp_path_factory.mktemp("outside")
    np.save(outside / "secret.npy", np.zeros((4, 10), dtype=np.int64))
    (outside / "secret.pth").write_bytes((workdir / "checkpoints" / "vqgan-v1.pth").read_bytes())
    os.symlink(outside / "secret.npy", workdir / "references" / "escape.npy")
    os.symlink(outside / "secret.pth", workdir / "checkpoints" / "escape.pth")
    (outside / "tokenizer_config.json").write_text('{"tokenizer_class": ["SECRET"]}')
    shutil.copytree(workdir / "checkpoints" / "tokenizer", workdir / "checkpoints" / "linked-tokenizer")
    (workdir / "checkpoints" / "linked-tokenizer" / "tokenizer_config.json").unlink()
    os.symlink(
        outside / "tokenizer_config.json", workdir / "checkpoints" / "linked-tokenizer" / "tokenizer_config.json"
    )
    with open(workdir / "checkpoints" / "evil.pth", "wb") as handle:
        pickle.dump(RunsCode(str(workdir / "PWNED")), handle)
    np.save(workdir / "references" / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(workdir / "references" / "floats.npy", np.zeros((4, 10), dtype=np.float32))
    np.save(workdir / "references" / "huge_codes.npy", np.full((4, 10), 999, dtype=np.int64))
    (workdir / "references" / "notes.txt").write_text("not audio")
    os.symlink("loop-b.npy", workdir / "references" / "loop-a.npy")  # links that lead to each other
    os.symlink("loop-a.npy", workdir / "references" / "loop-b.npy")
    config = json.loads((workdir / "checkpoints" / "llama.json").read_text())
    for name, changes in {"negative-dim": {"dim": -1}, "no-heads": {"n_head": 0}, "half-dim": {"dim": 1.5}}.items():
        (workdir / "checkpoints" / f"{name}.json").write_text(json.dumps({**config, **changes}))
    return workdir


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


WAV = b64(audio_bytes(tone(1.0)))
SILENCE = b64(audio_bytes(np.zeros(SR, np.float32)))
NOISE = b64(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())  # bytes, not audio
TOO_BIG = "A" * (MAX_UPLOAD_MB * 2**20 + 10)
INVOKE = "/v1/models/default/invoke"


def uploaded(filename: str, data: bytes, content_type: str) -> dict:
    """A multipart invoke whose reference clip is this file part."""
    form = {"text": "hello", "reference_text": "x", "max_new_tokens": "8"}
    return {"data": form, "files": {"reference_audio": (filename, data, content_type)}}


LOAD = "/v1/models/default"  # failed loads must leave the loaded bundle in service


def load_body(**changes) -> dict:
    body = {"device": "cpu", "llama": dict(WEBUI_LOAD["llama"], compile=False), "vqgan": dict(WEBUI_LOAD["vqgan"])}
    for key, value in changes.items():
        part, _, field = key.partition("__")
        if field:
            body[part][field] = value
        else:
            body[part] = value
    return body


def invoke_json(**fields) -> dict:
    return {"json": {"text": "hello", **FAST, **fields}}


# (name, method, path, httpx kwargs, status)
DEEP_JSON = '{"text": "x", "a": ' + "[" * 100_000 + "]" * 100_000 + "}"
JSON_TYPE = {"Content-Type": "application/json"}


def chunked_json():
    """A JSON body over the limit, sent without a Content-Length (chunked)."""
    yield b'{"input": "'
    for _ in range(MAX_UPLOAD_MB * 4 + 1):
        yield b"a" * 2**18


CASES = [
    ("malformed JSON", "POST", INVOKE, {"content": b'{"text": ', "headers": {"Content-Type": "application/json"}}, 400),
    ("JSON array body", "POST", INVOKE, {"json": ["hello"]}, 422),
    ("text is a number", "POST", INVOKE, invoke_json(text=123), 422),
    ("top_p is a string", "POST", INVOKE, invoke_json(top_p="high"), 422),
    ("top_p zero", "POST", INVOKE, invoke_json(top_p=0), 422),
    ("top_p above one", "POST", INVOKE, invoke_json(top_p=1.5), 422),
    ("temperature zero", "POST", INVOKE, invoke_json(temperature=0), 422),
    ("temperature negative", "POST", INVOKE, invoke_json(temperature=-1), 422),
    ("repetition_penalty zero", "POST", INVOKE, invoke_json(repetition_penalty=0), 422),
    ("max_new_tokens negative", "POST", INVOKE, invoke_json(max_new_tokens=-1), 422),
    ("max_new_tokens over 4096", "POST", INVOKE, invoke_json(max_new_tokens=5000), 422),
    ("max_new_tokens over the model context", "POST", INVOKE, invoke_json(max_new_tokens=300), 422),
    ("top_k negative", "POST", INVOKE, invoke_json(top_k=-1), 422),
    ("seed negative", "POST", INVOKE, invoke_json(seed=-5), 422),
    ("use_g2p not a bool", "POST", INVOKE, invoke_json(use_g2p="maybe"), 422),
    ("order repeats a language", "POST", INVOKE, invoke_json(order="zh,zh"), 422),
    ("order names an unknown language", "POST", INVOKE, invoke_json(order="fr"), 422),
    ("unknown output format", "POST", INVOKE, invoke_json(format="aiff"), 422),
    ("empty text", "POST", INVOKE, invoke_json(text=""), 422),
    ("blank text", "POST", INVOKE, invoke_json(text="   \n "), 422),
    ("text over --max-text-length", "POST", INVOKE, invoke_json(text="a" * 1001), 422),
    # (a long text is split into segments; a long transcript is part of every segment's prompt)
    ("prompt longer than the model context", "POST", INVOKE, invoke_json(prompt_text="hello world " * 80), 422),
    ("reference not base64", "POST", INVOKE, invoke_json(reference_audio="not base64!", reference_text="x"), 422),
    ("reference corrupted", "POST", INVOKE, invoke_json(reference_audio=NOISE, reference_text="x"), 422),
    ("reference zero-length", "POST", INVOKE, invoke_json(reference_audio="", reference_text="x"), 422),
    (
        "reference one sample",
        "POST",
        INVOKE,
        invoke_json(reference_audio=b64(audio_bytes(np.zeros(1, np.float32))), reference_text="x"),
        422,
    ),
    (
        "reference truncated WAV",
        "POST",
        INVOKE,
        invoke_json(reference_audio=b64(audio_bytes(tone(1.0))[:30]), reference_text="x"),
        422,
    ),
    ("reference without transcript", "POST", INVOKE, invoke_json(reference_audio=WAV), 422),
    ("reference silent", "POST", INVOKE, invoke_json(reference_audio=SILENCE, reference_text="x"), 422),
    ("non-audio multipart upload", "POST", INVOKE, uploaded("notes.txt", b"text, not audio", "text/plain"), 422),
    ("empty multipart upload", "POST", INVOKE, uploaded("empty.wav", b"", "audio/wav"), 422),
    (
        "unexpected multipart file",
        "POST",
        INVOKE,
        {"data": {"text": "hello"}, "files": {"other": ("a.wav", audio_bytes(tone(1.0)), "audio/wav")}},
        422,
    ),
    (
        "two references at once",
        "POST",
        INVOKE,
        invoke_json(reference_audio=WAV, reference_id="alice", reference_text="x"),
        422,
    ),
    ("unknown model", "POST", "/v1/models/nope/invoke", invoke_json(), 404),
    ("unknown voice", "POST", INVOKE, invoke_json(reference_id="nobody"), 404),
    ("voice id traversal", "POST", INVOKE, invoke_json(reference_id="../etc"), 422),
    ("prompt_tokens traversal", "POST", INVOKE, invoke_json(prompt_tokens="references/../../../etc/passwd.wav"), 400),
    ("prompt_tokens absolute", "POST", INVOKE, invoke_json(prompt_tokens="/etc/hosts.npy"), 400),
    ("prompt_tokens home dir", "POST", INVOKE, invoke_json(prompt_tokens="~/.ssh/id.npy"), 400),
    ("prompt_tokens backslashes", "POST", INVOKE, invoke_json(prompt_tokens="..\\..\\x.npy"), 400),
    ("prompt_tokens wrong suffix", "POST", INVOKE, invoke_json(prompt_tokens="references/notes.txt"), 400),
    ("prompt_tokens link out of the folder", "POST", INVOKE, invoke_json(prompt_tokens="references/escape.npy"), 403),
    # A relative path that names another folder is read inside this one (and is not there).
    ("prompt_tokens naming another folder", "POST", INVOKE, invoke_json(prompt_tokens="checkpoints/llama.npy"), 404),
    ("prompt_tokens missing", "POST", INVOKE, invoke_json(prompt_tokens="references/missing.npy"), 404),
    ("prompt_tokens a loop of links", "POST", INVOKE, invoke_json(prompt_tokens="references/loop-a.npy"), 404),
    ("prompt_tokens pickled objects", "POST", INVOKE, invoke_json(prompt_tokens="references/objects.npy"), 422),
    ("prompt_tokens float codes", "POST", INVOKE, invoke_json(prompt_tokens="references/floats.npy"), 422),
    ("prompt_tokens codes out of range", "POST", INVOKE, invoke_json(prompt_tokens="references/huge_codes.npy"), 422),
    (
        "load: checkpoint traversal",
        "PUT",
        LOAD,
        {"json": load_body(llama__checkpoint_path="checkpoints/../../etc/passwd")},
        400,
    ),
    ("load: absolute checkpoint", "PUT", LOAD, {"json": load_body(vqgan__checkpoint_path="/etc/passwd")}, 400),
    ("load: config traversal", "PUT", LOAD, {"json": load_body(llama__config_name="../../x.json")}, 400),
    ("load: absolute config", "PUT", LOAD, {"json": load_body(vqgan__config_name="/etc/x.json")}, 400),
    ("load: tokenizer traversal", "PUT", LOAD, {"json": load_body(llama__tokenizer="../tokenizer")}, 400),
    (
        "load: tokenizer download disabled",
        "PUT",
        LOAD,
        {"json": load_body(llama__tokenizer="someone/other-tokenizer")},
        403,
    ),
    (
        "load: a tokenizer file linked out of the folder",
        "PUT",
        LOAD,
        {"json": load_body(llama__tokenizer="checkpoints/linked-tokenizer")},
        403,
    ),
    (
        "load: checkpoint link out of the folder",
        "PUT",
        LOAD,
        {"json": load_body(vqgan__checkpoint_path="checkpoints/escape.pth")},
        403,
    ),
    (
        "load: checkpoint naming another folder",
        "PUT",
        LOAD,
        {"json": load_body(vqgan__checkpoint_path="references/0_input.npy")},
        404,
    ),
    ("load: non-weights pickle", "PUT", LOAD, {"json": load_body(llama__checkpoint_path="checkpoints/evil.pth")}, 400),
    (
        "load: wrong weights for the config",
        "PUT",
        LOAD,
        {"json": load_body(llama__checkpoint_path="checkpoints/vqgan-v1.pth")},
        400,
    ),
    ("load: missing checkpoint", "PUT", LOAD, {"json": load_body(vqgan__checkpoint_path="checkpoints/nope.pth")}, 404),
    ("load: unknown config preset", "PUT", LOAD, {"json": load_body(llama__config_name="text2semantic_huge")}, 400),
    *[
        (
            f"load: config with {name}",
            "PUT",
            LOAD,
            {"json": load_body(llama__config_name=f"checkpoints/{name}.json")},
            400,
        )
        for name in ("negative-dim", "no-heads", "half-dim")
    ],
    ("load: unknown device", "PUT", LOAD, {"json": load_body(device="tpu")}, 422),
    ("load: bad model name", "PUT", "/v1/models/bad%20name!", {"json": load_body()}, 422),
    ("load: one model more than --max-models", "PUT", "/v1/models/second", {"json": load_body()}, 409),
    ("delete unknown model", "DELETE", "/v1/models/nope", {}, 400),
    ("oversized body", "POST", INVOKE, {"json": {"text": "x", "reference_audio": TOO_BIG}}, 413),
    # chunked, so refused as it passes the limit, on routes whose JSON FastAPI reads itself (it made them 400s)
    *(
        (f"oversized chunked body on {path}", "POST", path, {"content": chunked_json(), "headers": JSON_TYPE}, 413)
        for path in ("/v1/text/g2p", INVOKE)
    ),
    (
        "unsupported content type",
        "POST",
        INVOKE,
        {"content": "text=hello", "headers": {"Content-Type": "text/plain"}},
        415,
    ),
    ("g2p text the order cannot read", "POST", "/v1/text/g2p", {"json": {"text": "你好", "order": "en"}}, 422),
    ("unknown route", "GET", "/v1/nothing-here", {}, 404),
    ("wrong method", "PATCH", "/v1/models/default", {}, 405),
    # Inputs that used to escape as 500s: a name longer than a file name can be, JSON nested deeper than
    # the parser recurses, integers longer than Python converts.
    (
        "load: a file name over 255 bytes",
        "PUT",
        LOAD,
        {"json": load_body(llama__checkpoint_path="a" * 256 + ".pth")},
        400,
    ),
    (
        "load: a folder name over 255 bytes",
        "PUT",
        LOAD,
        {"json": load_body(vqgan__config_name="checkpoints/" + "é" * 128 + "/x.json")},
        400,
    ),
    (
        "load: a tokenizer name over 255 bytes",
        "PUT",
        LOAD,
        {"json": load_body(llama__tokenizer="a" * 300)},
        400,
    ),
    (
        "invoke: prompt_tokens name over 255 bytes",
        "POST",
        INVOKE,
        {"json": {"text": "x", "prompt_tokens": "b" * 300 + ".npy"}},
        400,
    ),
    ("invoke: JSON nested 100,000 deep", "POST", INVOKE, {"content": DEEP_JSON, "headers": JSON_TYPE}, 400),
    ("voices: JSON nested 100,000 deep", "POST", "/v1/references", {"content": DEEP_JSON, "headers": JSON_TYPE}, 400),
    ("g2p: JSON nested 100,000 deep", "POST", "/v1/text/g2p", {"content": DEEP_JSON, "headers": JSON_TYPE}, 400),
    (
        "invoke: an integer of 5,000 digits",
        "POST",
        INVOKE,
        {"content": '{"text": "x", "seed": ' + "7" * 5000 + "}", "headers": JSON_TYPE},
        400,
    ),
    (
        "g2p: an integer of 5,000 digits",
        "POST",
        "/v1/text/g2p",
        {"content": '{"text": "x", "n": ' + "7" * 5000 + "}", "headers": JSON_TYPE},
        400,
    ),
    ("invoke: a form integer of 5,000 digits", "POST", INVOKE, {"data": {"text": "x", "seed": "7" * 5000}}, 422),
    (
        "invoke: a penalty that overflows logits",
        "POST",
        INVOKE,
        {"json": {"text": "x", "repetition_penalty": 1e-300}},
        422,
    ),
]


def test_table_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name,method,path,kwargs,status", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_documented_json_error(client, name, method, path, kwargs, status):
    response = client.request(method, path, **kwargs)
    assert_json_error(response, status)


def test_an_oversized_chunked_body_on_the_openai_route_is_its_413(client):
    response = client.post("/v1/audio/speech", content=chunked_json(), headers=JSON_TYPE)
    assert response.status_code == 413 and "larger than the server's limit" in response.json()["error"]["message"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_sampling_value_that_is_not_a_number_is_called_so(client, value):
    """(JSON's NaN was refused as "should be less than or equal to 10")"""
    body = '{"text": "hi", "temperature": ' + value + ', "top_p": 0.5}'
    error = assert_json_error(client.post(INVOKE, content=body, headers=JSON_TYPE), 422)
    assert "temperature" in error["message"] and "finite number" in error["message"], error


def test_pickled_checkpoint_never_ran(client, workdir):
    assert not (workdir / "PWNED").exists()


def test_server_still_serves_after_all_of_them(client):
    health = client.get("/v1/health").json()
    assert [m["name"] for m in health["models"]] == ["default"] and health["queue"]["pending"] == 0
    response = client.post(INVOKE, json={"text": "hello", **FAST})
    assert response.status_code == 200
    audio, sr = read_wav(response.content)
    assert sr == SR and audio.size > 0


def test_a_405_lists_every_method_of_the_path(client):
    response = client.options("/v1/references")
    assert_json_error(response, 405)
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["allow"].split(",")}


def test_a_connection_whose_head_does_not_arrive_is_closed(tmp_path):
    """A connection that sends nothing, one that drips its headers, and one idle after its first request are
    closed after --body-timeout; others are served meanwhile."""
    server = Server(make_workdir(tmp_path), "--body-timeout", "1", load=False)
    try:
        silent, dripping, reused = (socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in "abc")
        reused.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):  # (the head and the body may come apart)
            answer += reused.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        reused.sendall(b"GET /v1/health HTTP/1.1\r\n")  # the next request's head, never finished
        start = time.monotonic()
        dripping.sendall(b"GET /v1/health HTTP/1.1\r\n")
        for i in range(6):
            time.sleep(0.4)
            try:
                dripping.sendall(b"X-%d: y\r\n" % i)
            except OSError:  # (closed under it)
                break
            assert requests.get(server.url + "/v1/health", timeout=5).status_code == 200
        for sock in (silent, dripping, reused):
            with sock:
                try:
                    assert sock.recv(65536) == b""  # closed by the server, with nothing sent
                except ConnectionResetError:
                    pass
        assert time.monotonic() - start < 10
    finally:
        server.stop()


def test_a_body_that_drips_in_is_refused_once_its_average_falls_short(tmp_path):
    """A byte now and then never stalled long enough for --body-timeout, so a body could be held for hours
    (and with it a share of the bodies' total, below): after that grace, bodies past 64 KiB must average
    64 KiB/s."""
    server = Server(make_workdir(tmp_path), "--body-timeout", "1", load=False)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/text/g2p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 200000\r\n\r\n" + b" " * 100_000  # (a smaller body is left alone)
            )
            start, answer = time.monotonic(), b""
            while not answer and time.monotonic() - start < 20:
                try:
                    sock.sendall(b" " * 100)  # (every 0.5 s: never idle for the 1 s --body-timeout)
                except OSError:  # (answered and closed under it)
                    pass
                sock.settimeout(0.5)
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    pass
            sock.settimeout(5)
            while answer and not answer.endswith(b"}"):  # (the head and the body may come apart)
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
        assert answer.startswith(b"HTTP/1.1 408") and b"slower than 64 KiB/s" in answer, answer[:300]
        assert time.monotonic() - start < 5
    finally:
        server.stop()


def test_bodies_in_flight_are_bounded_together(tmp_path):
    """Each body is bounded by --max-upload-mb, and now their sum too (60 clients x 20 MiB held 1.2 GB):
    at most twice --max-queue full bodies at once; past that a 503 with Retry-After, until some finish."""
    server = Server(make_workdir(tmp_path), "--max-upload-mb", "1", "--max-queue", "1", load=False)
    url, body = server.url + "/v1/text/g2p", b'{"text": "' + b"a" * 1000 + b'"}'
    head = b"POST /v1/text/g2p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    holders = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2)]

    def refused_at_once(declared: int) -> bool:
        """A request that declares a body and sends none: answered at once only if refused (it holds
        nothing, so the probe takes no share of what it measures)."""
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as probe:
            probe.sendall(head + b"Content-Length: %d\r\n\r\n" % declared)
            try:
                return probe.recv(64).startswith(b"HTTP/1.1 503")
            except TimeoutError:
                return False

    try:
        for sock in holders:  # two bodies of 1 MiB, all of each but its last bytes: held while they wait
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % 2**20 + b" " * (2**20 - 10))
        deadline = time.monotonic() + 30
        while not refused_at_once(len(body)):  # (until the server has read them)
            assert time.monotonic() < deadline
        busy = requests.post(url, data=body, headers=JSON_TYPE, timeout=30)
        assert "request bodies at once" in assert_json_error(busy, 503)["message"]
        assert busy.headers["retry-after"] == "2"
        chunked = requests.post(url, data=iter([body[:8], body[8:]]), headers=JSON_TYPE, timeout=30)
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        assert "request bodies at once" in assert_json_error(chunked, 503)["message"]
        assert requests.get(server.url + "/v1/health", timeout=30).status_code == 200
        for sock in holders:
            sock.close()
        while (served := requests.post(url, data=body, headers=JSON_TYPE, timeout=30)).status_code != 200:
            assert served.status_code == 503 and time.monotonic() < deadline, served.text
            time.sleep(0.2)
    finally:
        for sock in holders:
            sock.close()
        server.stop()


def test_a_request_after_a_stream_on_the_same_connection_is_not_cut_off(tmp_path):
    """uvicorn may start a connection's next request before the streamed one's app returns: that return then
    armed the head deadline under the request in progress, which was cut off --body-timeout later."""
    server = Server(make_workdir(tmp_path), "--body-timeout", "2")
    try:
        invoke = json.dumps({"text": "hello", "streaming": True, **FAST}).encode()
        body = json.dumps({"text": "你好世界" * 30, "order": "zh"}).encode()
        piece = len(body) // 5 + 1
        for _ in range(3):  # (the order of the two is a race: 7 runs in 8 were cut off)
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(
                    b"POST /v1/models/default/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(invoke) + invoke
                )
                answer = b""
                while not answer.endswith(b"0\r\n\r\n"):  # the stream's last chunk
                    answer += sock.recv(65536)
                sock.sendall(
                    b"POST /v1/text/g2p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body[:piece]
                )
                for start in range(piece, len(body), piece):  # 4 s in all, never idle for 2
                    time.sleep(0.8)
                    sock.sendall(body[start : start + piece])
                answer = b""
                while b"segments" not in answer:
                    received = sock.recv(65536)
                    assert received, "the connection was closed under the request"
                    answer += received
    finally:
        server.stop()


def test_a_body_that_stops_arriving_is_refused_and_let_go(tmp_path):
    """On the routes that read their own bodies and on those whose JSON FastAPI reads (it made them 400s)."""
    server = Server(make_workdir(tmp_path), "--body-timeout", "1", load=False)
    try:
        for path in (b"/v1/references", b"/v1/audio/speech", b"/v1/text/g2p"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(
                    b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b'{"name": "' + b"x" * 5000
                )
                sent = time.monotonic()
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    answer += piece
                waited = time.monotonic() - sent
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), (path, head)
            error = json.loads(body)
            message = error["error"]["message"] if path == b"/v1/audio/speech" else error["message"]  # (OpenAI's)
            assert message.startswith("The request body stopped arriving for 1 s"), body
            assert 0.9 < waited < 10
        server.wait_healthy(models=[], timeout=5)  # and it goes on serving
    finally:
        server.stop()
