"""An OpenAudio S1-mini model behind the HTTP API, beside a Fish Speech v0.2 one: loaded by a PUT body
naming its folder (and every way that body can be wrong), invoke, streaming, the OpenAI route, and saved
voices that cross families (the clip is encoded again for the other family, once, and kept).

The S1 folder is the golden random-weight one (tests/core/s1/support.py: a small codec, so its rate is
read from the server, not assumed to be 44.1 kHz)."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from core.engine import FAMILY, S1_FAMILY
from tests.core.s1.support import S1_CHECKPOINT
from tests.server.helpers import S1_FOLDER, S1_LOAD, add_s1_model, assert_json_error, audio_bytes, make_workdir, tone

FAST = {"max_new_tokens": 8, "seed": 5}  # random weights: a short budget


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The shared work dir, plus the S1 folder as downloaded and a few broken copies of it."""
    folder = add_s1_model(make_workdir(tmp_path_factory.mktemp("work-s1")))
    checkpoints = folder / "checkpoints"
    shutil.copytree(S1_CHECKPOINT, checkpoints / "bad-model", ignore=shutil.ignore_patterns("model.pth"))
    (checkpoints / "bad-model" / "model.pth").write_bytes(b"not a checkpoint")
    shutil.copytree(S1_CHECKPOINT, checkpoints / "no-config", ignore=shutil.ignore_patterns("config.json"))
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.pth").write_bytes(b"x")
    (checkpoints / "escape").symlink_to(outside, target_is_directory=True)
    shutil.copytree(S1_CHECKPOINT, checkpoints / "linked-file")
    (checkpoints / "linked-file" / "model.pth").unlink()
    (checkpoints / "linked-file" / "model.pth").symlink_to(outside / "secret.pth")
    return folder


@pytest.fixture(scope="module")
def s1(client) -> dict:
    """The S1 model loaded as 's1' beside the v0.2 'default'; its details as GET /v1/models shows them."""
    loaded = client.put("/v1/models/s1", json=S1_LOAD)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["family"] == S1_FAMILY
    return next(d for d in client.get("/v1/models").json()["details"] if d["name"] == "s1")


def hop(details: dict) -> int:
    """Samples per codec frame."""
    return round(details["sample_rate"] / details["frame_rate"])


def wav(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    return audio, rate


def save_voice(client, voice_id: str, model: str, seconds: float = 2.0, rate: int = 22050, samples=None) -> dict:
    samples = tone(seconds, sr=rate) if samples is None else samples
    clip = base64.b64encode(audio_bytes(samples, sr=rate)).decode()
    made = client.post(
        "/v1/references", json={"name": voice_id, "id": voice_id, "transcript": "a tone", "audio": clip, "model": model}
    )
    assert made.status_code == 201, made.text
    return made.json()


# -- loading -------------------------------------------------------------------------------------------


def test_put_loads_the_folder_and_every_view_names_the_family(client, s1):
    assert s1["family"] == S1_FAMILY and s1["phonemes"] is False
    assert s1["sampling_fields"] == ["temperature", "top_p", "repetition_penalty"]  # no top-k: refused
    assert s1["s1"] == {"folder": f"checkpoints/{S1_FOLDER}"} and "llama" not in s1
    assert s1["sample_rate"] > 0 and s1["frame_rate"] > 0 and s1["device"] == "cpu"
    assert s1["vqgan_precision"] == "float32"  # the server's auto: CUDA's autocast, float32 on a CPU
    models = client.get("/v1/models").json()
    assert models["models"] == ["default", "s1"]
    default = next(d for d in models["details"] if d["name"] == "default")
    assert default["family"] == FAMILY and default["phonemes"] is True and default["sample_rate"] == 22050
    assert "top_k" in default["sampling_fields"]
    health = client.get("/v1/health").json()
    assert {m["name"]: m["family"] for m in health["models"]} == {"default": FAMILY, "s1": S1_FAMILY}


@pytest.mark.parametrize(
    "s1_body, status, said",
    [
        ({"folder": "missing"}, 404, "was not found in the checkpoints folder"),
        ({"folder": "vqgan-v1.pth"}, 400, "is not a folder"),
        ({"folder": "../work"}, 400, "'..' is not allowed"),
        ({"folder": "/etc"}, 400, "absolute paths are not accepted"),
        ({"folder": "escape"}, 403, "leads outside the checkpoints folder"),
        ({"folder": "linked-file"}, 403, "'model.pth' in 'linked-file' leads outside"),
        ({"folder": "bad-model"}, 400, "model.pth"),
        ({"folder": "no-config"}, 400, "config.json"),
    ],
    ids=["missing", "a-file", "dotdot", "absolute", "link-out", "file-link-out", "bad-weights", "no-config"],
)
def test_put_refuses_a_bad_folder_naming_the_field(client, s1_body, status, said):
    body = assert_json_error(client.put("/v1/models/broken", json={"device": "cpu", "s1": s1_body}), status)
    assert said in body["message"], body
    assert body["message"].startswith(("s1.folder: ", "Cannot load the model: ")), body
    assert "broken" not in client.get("/v1/models").json()["models"]


@pytest.mark.parametrize(
    "body",
    [
        {"s1": {"folder": S1_FOLDER}, "llama": {"precision": "float32"}},
        {"s1": {}},
        {"s1": {"folder": S1_FOLDER, "quantize": "int3"}},
        {"s1": {"folder": S1_FOLDER, "codec_precision": "float8"}},
    ],
    ids=["both-families", "no-folder", "bad-quantize", "bad-codec-precision"],
)
def test_put_refuses_a_malformed_s1_body(client, body):
    assert_json_error(client.put("/v1/models/broken", json=body), 422)


def test_put_takes_the_codecs_precision(client, s1):
    body = {"device": "cpu", "s1": {"folder": S1_FOLDER, "codec_precision": "bfloat16"}}
    loaded = client.put("/v1/models/s1-bf16", json=body)
    assert loaded.status_code == 200, loaded.text
    try:
        details = next(d for d in client.get("/v1/models").json()["details"] if d["name"] == "s1-bf16")
        assert details["vqgan_precision"] == "bfloat16"
        spoken = client.post("/v1/models/s1-bf16/invoke", json={"text": "Hello there.", **FAST})
        assert spoken.status_code == 200 and wav(spoken.content)[0].size > 0
    finally:
        assert client.delete("/v1/models/s1-bf16").status_code == 200


# -- synthesis -----------------------------------------------------------------------------------------


def test_invoke_returns_audio_at_the_models_rate_and_ignores_v02_fields(client, s1):
    plain = client.post("/v1/models/s1/invoke", json={"text": "Hello there.", **FAST})
    assert plain.status_code == 200, plain.text
    audio, rate = wav(plain.content)
    assert rate == s1["sample_rate"] == int(plain.headers["x-sample-rate"])
    assert audio.size > 0 and audio.size % hop(s1) == 0 and audio.size <= FAST["max_new_tokens"] * hop(s1)
    v02_only = {"use_g2p": True, "order": "en,zh,jp", "speaker": "narrator"}
    same = client.post("/v1/models/s1/invoke", json={"text": "Hello there.", **FAST, **v02_only})
    assert same.status_code == 200 and same.content == plain.content  # the fields do not apply to S1


def test_streamed_s1_audio_equals_the_whole_response(client, s1):
    body = {"text": "Streaming from the second family.", **FAST}
    whole = wav(client.post("/v1/models/s1/invoke", json=body).content)[0]
    with client.stream("POST", "/v1/models/s1/invoke", json={**body, "streaming": True, "format": "pcm"}) as stream:
        assert stream.status_code == 200 and stream.headers["x-sample-rate"] == str(s1["sample_rate"])
        streamed = np.frombuffer(b"".join(stream.iter_bytes()), dtype="<i2")
    assert streamed.shape == whole.shape
    # the chunked decoder equals the one-shot decode within float rounding (~1e-5 of full scale, under
    # half an int16 step), so the 16-bit samples differ by at most one rounding step
    assert np.abs(streamed.astype(np.int32) - whole).max() <= 1


def test_sampling_fields_left_out_take_the_familys_defaults(client, s1):
    from core.request import DEFAULT_SAMPLING, S1_DEFAULT_SAMPLING

    def speak(path: str, sampling=None) -> bytes:
        sent = {} if sampling is None else {k: getattr(sampling, k) for k in ("temperature", "top_p")}
        if sampling is not None:
            sent["repetition_penalty"] = sampling.repetition_penalty
        answer = client.post(path, json={"text": "Defaults.", **FAST, **sent})
        assert answer.status_code == 200, answer.text
        return answer.content

    s1_invoke = "/v1/models/s1/invoke"
    assert speak(s1_invoke) == speak(s1_invoke, S1_DEFAULT_SAMPLING) != speak(s1_invoke, DEFAULT_SAMPLING)
    # /v1/tts documents S1's defaults (the original's); a v0.2 model takes its own for the fields left out
    assert speak("/v1/tts") == speak("/v1/tts", DEFAULT_SAMPLING) != speak("/v1/tts", S1_DEFAULT_SAMPLING)


def test_sampling_outside_s1s_ranges_is_a_422(client, s1):
    assert_json_error(client.post("/v1/models/s1/invoke", json={"text": "Hi.", "top_k": 5, **FAST}), 422)


@pytest.mark.parametrize("text", ["!!! ??? ...", "🙂🙂🙂", "<|im_end|> <|semantic:3|>"])
def test_a_text_with_nothing_to_speak_is_a_422_on_s1_too(client, s1, text):
    """S1-mini reads the text as it is, with no cleaning; symbols alone would have it babble all the same, and
    special-token strings, each read as one control token."""
    error = assert_json_error(client.post("/v1/models/s1/invoke", json={"text": text, **FAST}), 422)
    assert "nothing to speak" in error["message"]


# -- saved voices across families ------------------------------------------------------------------------


def test_a_v02_voice_speaks_through_s1_encoded_once(client, s1, workdir):
    voice = save_voice(client, "from-v02", "default")
    assert voice["family"] == FAMILY
    folder = workdir / "references" / "voices" / "from-v02"
    kept = folder / f"codes.{S1_FAMILY}.npy"
    assert not kept.exists()
    body = {"model": "s1", "voice": "from-v02", "input": "In the second family.", "response_format": "wav", **FAST}
    first = client.post("/v1/audio/speech", json=body)
    assert first.status_code == 200, first.text
    assert wav(first.content)[1] == s1["sample_rate"]
    codes = np.load(kept)
    assert codes.shape[0] == s1["num_codebooks"] and codes.max() < s1["codebook_size"]
    assert abs(codes.shape[1] - 2.0 * s1["frame_rate"]) <= 1  # the 2 s clip, in S1 frames
    mtime = kept.stat().st_mtime_ns
    again = client.post("/v1/audio/speech", json=body)
    assert again.content == first.content and kept.stat().st_mtime_ns == mtime  # the kept codes, not a new encode
    invoked = client.post(
        "/v1/models/s1/invoke", json={"text": "In the second family.", "reference_id": "from-v02", **FAST}
    )
    assert invoked.status_code == 200 and invoked.content == first.content
    kept.write_bytes(b"damaged")  # unreadable kept codes are made again from the clip
    assert client.post("/v1/audio/speech", json=body).content == first.content
    np.testing.assert_array_equal(np.load(kept), codes)
    assert np.load(folder / "codes.npy").shape[0] == 4  # the voice's own v0.2 codes are untouched


def test_an_s1_voice_keeps_its_upload_and_speaks_through_v02(client, s1, workdir):
    voice = save_voice(client, "from-s1", "s1", rate=44100)
    assert voice["family"] == S1_FAMILY and abs(voice["duration_s"] - 2.0) < 0.01
    folder = workdir / "references" / "voices" / "from-s1"
    assert np.load(folder / "codes.npy").shape[0] == s1["num_codebooks"]
    clip, rate = wav(client.get("/v1/references/from-s1/audio").content)
    assert rate == 44100 and abs(clip.size - 2 * rate) <= 1  # the upload's rate, whatever the codec's
    used = client.post("/v1/models/default/invoke", json={"text": "Back to v0.2.", "reference_id": "from-s1", **FAST})
    assert used.status_code == 200, used.text
    assert wav(used.content)[1] == 22050
    v02 = next(d for d in client.get("/v1/models").json()["details"] if d["name"] == "default")
    codes = np.load(folder / f"codes.{FAMILY}.npy")
    assert codes.shape[0] == v02["num_codebooks"] and codes.max() < v02["codebook_size"]
    assert abs(codes.shape[1] - 2.0 * v02["frame_rate"]) <= 1


def test_a_voice_keeps_its_uploads_band_for_the_family_with_the_higher_rate(client, s1, workdir):
    """Saved through v0.2 (22.05 kHz), a 44.1 kHz upload is kept whole: S1 (44.1 kHz with the official
    codec) encodes the same clip, top octave included, as when the voice is saved through S1 itself.
    Above 48 kHz the clip is downsampled."""
    noise = (np.random.default_rng(7).standard_normal(2 * 44100) * 0.2).astype(np.float32)  # energy up to 22 kHz
    save_voice(client, "wide-v02", "default", rate=44100, samples=noise)
    save_voice(client, "wide-s1", "s1", rate=44100, samples=noise)
    voices = workdir / "references" / "voices"
    assert sf.info(str(voices / "wide-v02" / "audio.wav")).samplerate == 44100
    body = {"text": "Wide band.", "reference_id": "wide-v02", **FAST}
    assert client.post("/v1/models/s1/invoke", json=body).status_code == 200
    np.testing.assert_array_equal(
        np.load(voices / "wide-v02" / f"codes.{S1_FAMILY}.npy"), np.load(voices / "wide-s1" / "codes.npy")
    )
    save_voice(client, "high-rate", "default", rate=96000, samples=np.zeros(2 * 96000, np.float32) + 0.1)
    assert sf.info(str(voices / "high-rate" / "audio.wav")).samplerate == 48000


def test_a_voice_saved_before_families_is_v02s(client, s1, workdir):
    save_voice(client, "old-voice", "default")
    meta_path = workdir / "references" / "voices" / "old-voice" / "voice.json"
    meta = json.loads(meta_path.read_text())
    del meta["family"]  # as written before the field existed
    meta_path.write_text(json.dumps(meta))
    assert client.get("/v1/references/old-voice").json()["family"] == FAMILY
    used = client.post("/v1/models/s1/invoke", json={"text": "Old voice.", "reference_id": "old-voice", **FAST})
    assert used.status_code == 200, used.text
    assert (meta_path.parent / f"codes.{S1_FAMILY}.npy").exists()


def test_a_voice_deleted_meanwhile_is_a_404(client, s1):
    save_voice(client, "short-lived", "default")
    assert client.delete("/v1/references/short-lived").status_code == 200
    gone = client.post("/v1/models/s1/invoke", json={"text": "Hi.", "reference_id": "short-lived", **FAST})
    assert_json_error(gone, 404)
