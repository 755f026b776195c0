"""The HTTP API in-process (TestClient): the original web UI's payloads, uploads, formats, g2p, docs."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from core.lm.sampling import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY
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


def invoke(client, **body):
    return client.post("/v1/models/default/invoke", json={**FAST, **body})


def assert_wav(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    audio, sr = read_wav(response.content)
    assert sr == SR and audio.ndim == 1 and audio.size > 0
    return audio


# -- the original web UI's exact payloads (SPEC-server §8.3) --------------------------------------


def test_webui_load_payload_loads_the_model(client):
    response = client.put("/v1/models/default", json=WEBUI_LOAD)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "default"
    assert client.get("/v1/models").json()["models"] == ["default"]


def test_shown_model_settings_can_be_sent_back(client):
    """What GET /v1/models shows (e.g. the official tokenizer id) is accepted again by a PUT."""
    details = client.get("/v1/models").json()["details"]
    shown = next(d for d in details if d["name"] == "default")
    assert shown["llama"]["tokenizer"] == WEBUI_LOAD["llama"]["tokenizer"]
    body = {
        **WEBUI_LOAD,
        "llama": {**WEBUI_LOAD["llama"], **shown["llama"]},
        "vqgan": {**WEBUI_LOAD["vqgan"], **shown["vqgan"]},
    }
    response = client.put("/v1/models/default", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("enable_reference", [True, False])
def test_webui_invoke_payload_returns_wav(client, enable_reference):
    payload = {
        "text": "测试一下 Hugging face, BGM声音很大吗？那我改一下. 世界、こんにちは。",
        "prompt_text": "在一无所知中，梦里的一天结束了。" if enable_reference else None,
        "prompt_tokens": "references/0_input.wav" if enable_reference else None,
        "max_new_tokens": 16,
        "top_k": None,
        "top_p": 0.5,
        "repetition_penalty": 1.5,
        "temperature": 0.7,
        "order": "zh,jp,en",
        "use_g2p": True,
        "seed": None,
        "speaker": None,
    }
    response = client.post("/v1/models/default/invoke", json=payload)
    assert_wav(response)
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["content-disposition"] == "attachment; filename=audio.wav"


def test_prompt_tokens_npy_in_references_dir(client):
    assert_wav(invoke(client, text="hello", prompt_text="hi there", prompt_tokens="references/0_input.npy"))
    # Relative to the references folder works too.
    assert_wav(invoke(client, text="hello", prompt_tokens="0_input.npy"))


def test_seed_makes_output_repeatable(client):
    first, second = invoke(client, text="hello", seed=7), invoke(client, text="hello", seed=7)
    assert first.content == second.content


# -- uploads ------------------------------------------------------------------------------------


def test_base64_reference_upload(client):
    clip = base64.b64encode(audio_bytes(tone(1.5))).decode()
    assert_wav(invoke(client, text="hello", reference_audio=clip, reference_text="a tone"))
    assert_wav(invoke(client, text="hello", reference_audio="data:audio/wav;base64," + clip, prompt_text="a tone"))


def test_multipart_reference_upload(client):
    files = {"reference_audio": ("voice.flac", audio_bytes(tone(1.5), fmt="FLAC"), "audio/flac")}
    data = {"text": "hello", "reference_text": "a tone", "max_new_tokens": "8", "use_g2p": "true", "top_k": ""}
    response = client.post("/v1/models/default/invoke", data=data, files=files)
    assert_wav(response)


def test_a_form_is_held_to_the_rules_json_is(client):
    """An empty `text` field was "not given", so the original's default sentence was spoken; a file part was
    not seen by the rule of one reference, so it silently won over `reference_id`; a base64 clip in a
    field was refused past Starlette's 1 MiB per field, far under the body limit."""
    invoke_url, fast = "/v1/models/default/invoke", {"max_new_tokens": "8", "seed": "1"}
    assert_json_error(client.post(invoke_url, data={"text": "", **fast}), 422)
    clip = audio_bytes(tone(1.5))
    files = {"reference_audio": ("voice.wav", clip, "audio/wav")}
    both = {"text": "hi", "reference_text": "a tone", "reference_id": "someone", **fast}
    assert "give at most one of" in assert_json_error(client.post(invoke_url, data=both, files=files), 422)["message"]
    twice = {"text": "hi", "reference_text": "a tone", "reference_audio": base64.b64encode(clip).decode(), **fast}
    assert "given twice" in assert_json_error(client.post(invoke_url, data=twice, files=files), 422)["message"]
    long_clip = base64.b64encode(audio_bytes(tone(3.0, sr=96000), sr=96000, subtype="FLOAT")).decode()  # 1.5 MB
    assert len(long_clip) > 2**20
    assert_wav(
        client.post(invoke_url, data={"text": "hi", "reference_text": "a tone", "reference_audio": long_clip, **fast})
    )


@pytest.mark.parametrize(
    "label,clip,sr",
    [
        ("stereo", tone(1.5, channels=2), SR),
        ("8 kHz", tone(1.5, sr=8000), 8000),
        ("48 kHz", tone(1.5, sr=48000), 48000),
    ],
)
def test_references_are_mixed_down_and_resampled(client, label, clip, sr):
    """Documented: any channel count and sample rate is accepted (mono mix, resampled to 22050 Hz)."""
    encoded = base64.b64encode(audio_bytes(clip, sr)).decode()
    assert_wav(invoke(client, text="hello", reference_audio=encoded, reference_text=label))


def test_five_minute_reference_is_refused_with_422(client):
    """Documented: a reference over --max-reference-seconds (30 s) is refused, not trimmed (here by the tiny
    model's context, ~12 s of codes: the tighter bound applies)."""
    clip = base64.b64encode(audio_bytes(np.zeros(300 * SR, dtype=np.float32), fmt="FLAC")).decode()
    body = assert_json_error(invoke(client, text="hello", reference_audio=clip, reference_text="x"), 422)
    assert "300.0 s" in body["message"] and "11.89 s (what the model's context holds)" in body["message"]


# -- output formats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,content_type", [("wav", "audio/wav"), ("flac", "audio/flac"), ("mp3", "audio/mpeg"), ("ogg", "audio/ogg")]
)
def test_every_output_format(client, fmt, content_type):
    response = invoke(client, text="hello", format=fmt)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    assert response.headers["content-disposition"] == f"attachment; filename=audio.{fmt}"
    audio, sr = read_wav(response.content)  # soundfile reads all four
    assert sr == SR and audio.size > 0


# -- text preview, health, docs, errors -----------------------------------------------------------


def test_g2p_preview_rows_per_line(client):
    response = client.post("/v1/text/g2p", json={"text": "hello 你好\n\nworld", "order": "zh,jp,en"})
    assert response.status_code == 200, response.text
    segments = response.json()["segments"]
    assert [(s["line"], s["language"]) for s in segments] == [(0, "EN"), (0, "ZH"), (2, "EN")]
    assert all(s["phones"] for s in segments)


@pytest.mark.parametrize("text", ["   ", " \n\t "])
def test_a_blank_text_is_refused_alike_by_the_preview_and_synthesis(client, text):
    """(the preview said "nothing to speak after cleaning", synthesis "must not be blank")"""
    preview = assert_json_error(client.post("/v1/text/g2p", json={"text": text}), 422)
    synthesis = assert_json_error(invoke(client, text=text), 422)
    assert preview["message"] == synthesis["message"] == "text: Value error, must not be blank"


def test_a_delete_during_a_models_first_load_is_a_409_not_unknown(client):
    """(It said "Model not found." while /v1/health listed the name as loading.)"""
    import threading

    registry, building, release = client.app.state.ctx.registry, threading.Event(), threading.Event()

    def build():
        building.set()
        release.wait(60)
        raise RuntimeError("never loads")

    loader = threading.Thread(target=lambda: pytest.raises(RuntimeError, registry.load, "slow", build))
    loader.start()
    try:
        assert building.wait(60) and "slow" in client.get("/v1/health").json()["loading"]
        assert "still loading" in assert_json_error(client.delete("/v1/models/slow"), 409)["message"]
    finally:
        release.set()
        loader.join(60)
    assert_json_error(client.delete("/v1/models/slow"), 400)


@pytest.mark.parametrize("text", ["Hello <p:AA1> there", "if a < b and c > d then"])
def test_the_preview_without_g2p_reads_what_synthesis_reads(client, text):
    """(It ran g2p over the lines anyway: a 422 for text that synthesizes fine without it)"""
    preview = client.post("/v1/text/g2p", json={"text": text, "use_g2p": False})
    assert preview.status_code == 200, preview.text
    assert preview.json()["segments"] == [] and text.split()[-1] in preview.json()["prompts"][0]["prompt"]
    assert_wav(client.post("/v1/models/default/invoke", json={"text": text, "use_g2p": False, **FAST}))


def test_health_lists_models_and_queue(client):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok"
    (model,) = health["models"]
    assert model["name"] == "default" and model["device"] == "cpu" and model["context"] == 256
    assert set(model["lm_paths"]) == {"float32"}
    assert set(model["lm_paths"]["float32"]) == {"decode", "batch_decode", "prefill", "prefill_attention"}
    assert model["vqgan_precision"] == "float32"
    assert "/tmp/" not in str(health)  # client-facing names only
    assert health["queue"]["limit"] == 16
    head = client.head("/v1/health")  # (load balancers' checks: a 405 before)
    assert head.status_code == 200 and head.content == b""


def test_docs_and_openapi_show_routes_and_bounds(client):
    assert "swagger" in client.get("/docs").text.lower()
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/models/{name}",
        "/v1/models",
        "/v1/models/{name}/invoke",
        "/v1/references",
        "/v1/references/{voice_id}",
        "/v1/audio/speech",
        "/v1/text/g2p",
        "/v1/health",
    ):
        assert path in spec["paths"]
    invoke_body = spec["paths"]["/v1/models/{name}/invoke"]["post"]["requestBody"]["content"]
    assert set(invoke_body) == {"application/json", "multipart/form-data"}
    fields = invoke_body["application/json"]["schema"]["properties"]
    assert fields["text"]["maxLength"] == 1000 and fields["text"]["minLength"] == 1
    assert fields["top_p"]["exclusiveMinimum"] == 0 and fields["top_p"]["maximum"] == 1
    assert fields["temperature"]["exclusiveMinimum"] == 0
    bounds = fields["repetition_penalty"]  # the bounds core checks (a penalty that cannot overflow a logit)
    assert (bounds["minimum"], bounds["maximum"]) == (MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY)
    assert fields["max_new_tokens"]["maximum"] == 4096 and fields["max_new_tokens"]["minimum"] == 0
    speech = spec["components"]["schemas"]["SpeechRequest"]["properties"]
    assert speech["speed"]["minimum"] == 0.25 and speech["speed"]["maximum"] == 4.0
    voice_body = spec["paths"]["/v1/references"]["post"]["requestBody"]["content"]
    assert all("audio" in body["schema"]["allOf"][1]["required"] for body in voice_body.values())
    speech_errors = spec["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert speech_errors["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorBody")
    assert "422" not in speech_errors


def test_no_cors_headers_by_default(client):
    response = client.options(
        "/v1/models/default/invoke", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_request_id_is_echoed_and_in_errors(client):
    response = client.post("/v1/models/nope/invoke", json={"text": "x"}, headers={"X-Request-ID": "my-trace-42"})
    body = assert_json_error(response, 404)
    assert body["requestId"] == "my-trace-42" and body["message"] == "Cannot find model."


def test_int8_models_per_load_request_and_server_default(client, tmp_path):
    """`"quantize": "int8"` in a load body, or --quantize int8 for every load that says nothing."""
    body = {**WEBUI_LOAD, "llama": {**WEBUI_LOAD["llama"], "quantize": "int8"}}
    assert client.put("/v1/models/small", json=body).status_code == 200
    details = {d["name"]: d for d in client.get("/v1/models").json()["details"]}
    assert details["small"]["quantize"] == "int8" and details["default"]["quantize"] == "none"
    assert details["small"]["max_batch_size"] == 8  # sized to the CPU
    response = client.post("/v1/models/small/invoke", json={"text": "int8 speaks", **FAST})
    assert_wav(response)
    assert client.delete("/v1/models/small").status_code == 200

    body = {
        **WEBUI_LOAD,
        "llama": {**WEBUI_LOAD["llama"], "quantize": "int4"},
        "vqgan": {**WEBUI_LOAD["vqgan"], "precision": "bfloat16"},
    }
    assert client.put("/v1/models/small4", json=body).status_code == 200
    info = {d["name"]: d for d in client.get("/v1/models").json()["details"]}["small4"]
    assert info["quantize"] == "int4" and info["vqgan_precision"] == "bfloat16" and set(info["lm_paths"]) == {"int4"}
    # the dtype it computes in, which a load body may name (the web UI loads the same again), not the packed one
    assert info["precision"] == "float32"
    assert_wav(client.post("/v1/models/small4/invoke", json={"text": "int4 speaks", **FAST}))
    assert client.delete("/v1/models/small4").status_code == 200

    quantized = Server(make_workdir(tmp_path / "work"), "--quantize", "int8", "--max-batch-size", "3")
    try:
        info = requests.get(quantized.url + "/v1/models", timeout=30).json()["details"][0]
        assert info["quantize"] == "int8" and info["max_batch_size"] == 3
    finally:
        quantized.stop()
