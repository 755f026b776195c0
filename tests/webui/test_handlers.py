"""The web UI's handlers against a live API (`python -m server` with tiny checkpoints): load a model,
synthesize with an uploaded reference, saved voices, the preview, and readable error messages."""

from __future__ import annotations

import dataclasses
import io
from html import escape
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.helpers import synthesize_speech
from tests.server.helpers import S1_FOLDER, Server, add_s1_model, free_port, make_workdir
from webui.client import ClientError, error_from_response
from webui.config import UISettings
from webui.handlers import Actions, LoadedModel, ModelForm, SynthesisForm, pick_model
from webui.i18n import t

SERVER_ARGS = ("--load", "s1=load_s1.json")  # an OpenAudio S1-mini model beside the v0.2 'default'

REFERENCE_TEXT = "This is a short reference clip for voice cloning."
# The tiny models' files under the official names (tests/server/helpers.py), with their configs.
TINY_MODEL = ModelForm(
    device="cpu",
    precision="float32",
    compile=False,
    llama_config="checkpoints/llama.json",
    vqgan_config="checkpoints/vqgan_config.json",
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return add_s1_model(make_workdir(tmp_path_factory.mktemp("work-ui")))


@pytest.fixture(scope="module")
def actions(server) -> Actions:
    return Actions(UISettings(api_url=server.url, timeout=120))


@pytest.fixture(scope="module")
def reference_wav(tmp_path_factory):
    return synthesize_speech(tmp_path_factory.mktemp("ref") / "reference.wav", REFERENCE_TEXT)


def fast(**fields) -> SynthesisForm:
    return SynthesisForm(**{"text": "Hello world. 你好。", "max_new_tokens": 8, "seed": 1, **fields})


def assert_readable(html: str, lang: str, headline: str) -> None:
    """One short message in the page's language, never a traceback or a server path."""
    assert t(lang, headline) in html and "fishtts-error" in html
    assert "Traceback" not in html and 'File "' not in html and "/tmp/" not in html
    assert len(html) < 800


def test_load_model_shows_the_originals_success_message(server, actions):
    for lang in ("zh_CN", "en_US"):
        html = actions.load_model(lang, server.url, "", TINY_MODEL)
        assert t(lang, "model.loaded") in html and "fishtts-ok" in html, html
    status = actions.server_status("en_US", server.url, "")
    assert "default (cpu, float32)" in status


def test_the_model_tab_loads_an_s1_folder_under_its_own_name(server, actions):
    form = ModelForm(device="cpu", precision="float32", compile=False, s1_name="s1-ui", s1_folder=S1_FOLDER)
    html = actions.load_model("en_US", server.url, "", form, s1=True)
    assert t("en_US", "model.loaded") in html and "fishtts-ok" in html, html
    models = {m.name: m for m in actions.loaded_models(server.url)}
    assert models["s1-ui"].family == "openaudio-s1-mini" and models["default"].family == "fish-speech-v0.2"
    missing = ModelForm(device="cpu", s1_name="s1-missing", s1_folder="no-such-folder")
    assert_readable(actions.load_model("en_US", server.url, "", missing, s1=True), "en_US", "model.load_failed")
    assert "s1-missing" not in {m.name for m in actions.loaded_models(server.url)}
    filled = actions.loaded_model_form(server.url)  # the page reopened: the S1 fields show a loaded S1 folder
    assert filled.s1_name in ("s1", "s1-ui") and filled.s1_folder.endswith(S1_FOLDER)


def test_model_tab_is_filled_from_the_loaded_model(server, actions):
    form = actions.loaded_model_form(server.url)
    assert form.llama_checkpoint == "checkpoints/text2semantic-400m-v0.2-4k.pth"
    assert form.vqgan_config == "checkpoints/vqgan_config.json" and form.device == "cpu"
    # loading it back as shown works: the shown paths are ones the server accepts
    assert t("en_US", "model.loaded") in actions.load_model("en_US", server.url, "", form)


def test_a_quantized_model_is_loaded_back_as_the_form_shows_it(server, actions):
    """The form takes the precision the model computes in: an int8 model's storage dtype ("int8") in the
    precision field made 'Load model' a 422 (what `launch.sh` serves with FISHTTS_QUANTIZE=int8)."""
    body = TINY_MODEL.load_body()
    body["llama"]["quantize"] = "int8"
    assert requests.put(f"{server.url}/v1/models/default", json=body, timeout=120).status_code == 200
    try:
        form = actions.loaded_model_form(server.url)
        assert form.precision == "float32"
        assert t("en_US", "model.loaded") in actions.load_model("en_US", server.url, "", form)
    finally:
        assert t("en_US", "model.loaded") in actions.load_model("en_US", server.url, "", TINY_MODEL)


def test_synthesize_with_an_uploaded_reference(server, actions, reference_wav):
    form = fast(use_reference=True, reference_audio=str(reference_wav), reference_text=REFERENCE_TEXT)
    audio_path, download_path, html = actions.synthesize("zh_CN", server.url, "", form)
    assert "fishtts-ok" in html and "Traceback" not in html, html
    assert audio_path == download_path and audio_path.endswith(".wav")
    audio, sr = sf.read(audio_path)
    assert sr == 22050 and audio.ndim == 1 and len(audio) > 0


@pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg"])
def test_output_formats(server, actions, fmt):
    audio_path, _, html = actions.synthesize("en_US", server.url, "", fast(output_format=fmt, mode="phonemes"))
    assert audio_path and audio_path.endswith("." + fmt), html
    assert Path(audio_path).stat().st_size > 100


def test_same_seed_same_audio(server, actions):
    first, _, _ = actions.synthesize("en_US", server.url, "", fast(seed=7))
    second, _, _ = actions.synthesize("en_US", server.url, "", fast(seed=7))
    assert Path(first).read_bytes() == Path(second).read_bytes()


def test_streaming_yields_audio_while_generating_and_the_same_whole_file(server, actions, reference_wav):
    form = fast(
        text="Streaming from the web UI. It plays before the end.",
        max_new_tokens=60,
        seed=4,
        use_reference=True,
        reference_audio=str(reference_wav),
        reference_text=REFERENCE_TEXT,
    )
    steps = list(actions.synthesize_stream("en_US", server.url, "", form))
    chunks = [chunk for chunk, _, _, _ in steps if chunk is not None]
    assert len(chunks) >= 2, "the audio should come in several chunks"
    assert all("Streaming" in html and "fishtts-ok" in html for chunk, _, _, html in steps if chunk)
    final_chunk, path, download, done = steps[-1]
    assert final_chunk is None and path == download and path.endswith(".wav") and "fishtts-ok" in done
    pieces = [sf.read(io.BytesIO(chunk), dtype="int16")[0] for chunk in chunks]
    whole, _ = sf.read(path, dtype="int16")
    assert (np.concatenate(pieces) == whole).all()
    not_streamed, _, _ = actions.synthesize("en_US", server.url, "", form)  # the same request, in one piece
    assert (sf.read(not_streamed, dtype="int16")[0] == whole).all()


def test_the_models_to_pick_from_say_what_applies_to_them(server, actions):
    models = {m.name: m for m in actions.loaded_models(server.url)}
    assert models["default"] == LoadedModel("default", "fish-speech-v0.2", phonemes=True)
    assert models["s1"] == LoadedModel("s1", "openaudio-s1-mini", phonemes=False)
    assert models["s1"].label == "s1 (openaudio-s1-mini)"
    assert not models["s1"].samples_with("top_k") and models["s1"].samples_with("top_p")  # its slider hides
    assert models["default"].samples_with("top_k")
    assert LoadedModel("old-server").samples_with("top_k")  # a server that does not say: every field shows
    from core.request import DEFAULT_SAMPLING, S1_DEFAULT_SAMPLING

    assert models["s1"].sampling["temperature"] == S1_DEFAULT_SAMPLING.temperature  # what the sliders take
    assert models["default"].sampling["top_p"] == DEFAULT_SAMPLING.top_p
    assert pick_model(list(models.values()), None) == "default"  # the page starts on 'default'
    assert pick_model(list(models.values()), "s1") == "s1"
    assert pick_model([models["s1"]], "gone") == "s1"
    assert actions.loaded_models(f"http://127.0.0.1:{free_port()}") == []


def test_an_s1_model_synthesizes_and_streams_at_its_own_rate(server, actions):
    s1_rate = next(d for d in actions.client(server.url).list_models() if d["name"] == "s1")["sample_rate"]
    assert s1_rate != 22050  # so a page that assumed v0.2's rate would be caught
    form = fast(model="s1", text="The second family in the web UI.", max_new_tokens=24, seed=3)
    whole_path, _, html = actions.synthesize("en_US", server.url, "", form)
    assert whole_path and "fishtts-ok" in html, html
    whole, rate = sf.read(whole_path, dtype="int16")
    assert rate == s1_rate
    steps = list(actions.synthesize_stream("en_US", server.url, "", form))
    chunks = [sf.read(io.BytesIO(chunk), dtype="int16") for chunk, _, _, _ in steps if chunk is not None]
    assert chunks and all(chunk_rate == s1_rate for _, chunk_rate in chunks)
    streamed, streamed_rate = sf.read(steps[-1][1], dtype="int16")
    assert streamed_rate == s1_rate and streamed.shape == whole.shape
    assert np.abs(streamed.astype(np.int32) - whole).max() <= 1  # S1's chunked decode: within rounding


def test_a_voice_saved_with_s1_is_s1s(server, actions, reference_wav):
    _, voice_id, html = actions.save_voice("en_US", server.url, "", "S1 Voice", str(reference_wav), "Hi.", "s1")
    assert voice_id, html
    voice = next(v for v in actions.client(server.url).list_voices() if v["id"] == voice_id)
    assert voice["model"] == "s1" and voice["family"] == "openaudio-s1-mini"
    path, _, html = actions.synthesize("en_US", server.url, "", fast(use_reference=True, voice_id=voice_id))
    assert path and "fishtts-ok" in html, html  # and v0.2 ('default') speaks in it too
    actions.delete_voice("en_US", server.url, "", voice_id)


def test_streaming_errors_are_readable(actions, down_url):
    steps = list(actions.synthesize_stream("zh_CN", down_url, "", fast()))
    assert len(steps) == 1 and steps[0][:3] == (None, None, None)
    assert_readable(steps[0][3], "zh_CN", "error.inference")


def test_saved_voice_save_pick_use_delete(server, actions, reference_wav):
    choices, voice_id, html = actions.save_voice(
        "en_US", server.url, "", "Test Voice", str(reference_wav), REFERENCE_TEXT
    )
    assert t("en_US", "reference.saved", name="Test Voice") in html, html
    assert voice_id and voice_id in [value for _, value in choices]

    clip, transcript, html = actions.select_voice("en_US", server.url, "", voice_id)
    assert transcript == REFERENCE_TEXT and html == ""
    assert sf.info(clip).samplerate == 22050

    # the saved voice alone (no upload) is a reference; its stored transcript is used
    audio_path, _, html = actions.synthesize("en_US", server.url, "", fast(use_reference=True, voice_id=voice_id))
    assert audio_path and "fishtts-ok" in html, html

    choices, html = actions.delete_voice("zh_CN", server.url, "", voice_id)
    assert t("zh_CN", "reference.deleted", name="Test Voice") in html
    assert voice_id not in [value for _, value in choices]


def test_preview_shows_exactly_what_is_synthesized(server, actions):
    """Reference text + the whole text, as one string (the original previewed line by line)."""
    from core.text import g2p

    form = fast(text="你好世界\nhello world", mode="phonemes", use_reference=True, reference_text="参考文本")
    rows, html = actions.preview("zh_CN", server.url, "", form)
    assert html is None  # (no failure: the message box is left as it is)
    engine_phones = [phone for _, phone in g2p("参考文本 你好世界\nhello world", order="zh,jp,en")]
    assert " ".join(row[3] for row in rows).split() == engine_phones
    assert [row[2] for row in rows] == ["ZH", "EN"]

    rows, _ = actions.preview("zh_CN", server.url, "", fast(text="line one\nline two"))
    assert rows == [[0, "line one\nline two", "-", "-"]]  # text mode: one row, no phonemes
    assert actions.preview("zh_CN", server.url, "", fast(text="  ")) == ([], None)  # (None: the message stays)


def test_the_preview_leaves_a_synthesis_message_and_clears_its_own(server, actions, down_url):
    """The message box is the synthesis's too: a preview (typing, switching the language) wiped its
    "Synthesizing…", and the page looked idle."""
    working = actions.working("zh_CN")
    assert actions.preview("zh_CN", server.url, "", fast(), working)[1] is None
    _, failed = actions.preview("zh_CN", down_url, "", fast())
    assert_readable(failed, "zh_CN", "error.preview")
    assert actions.preview("zh_CN", server.url, "", fast(), failed)[1] == ""  # its own failure: cleared


def test_the_preview_of_an_s1_model_is_the_text_whole(server, actions):
    """S1-mini reads a text whole, as it is: the preview showed v0.2's sentence pieces."""
    text = " ".join(f"This is sentence number {i} of a long text." for i in range(12))
    rows, _ = actions.preview("en_US", server.url, "", fast(text=text, model="s1"))
    assert rows == [[0, text, "-", "-"]]
    assert len(actions.preview("en_US", server.url, "", fast(text=text))[0]) > 1  # v0.2's pieces


def test_the_language_priority_applies_to_v02_only(server, actions):
    """S1-mini reads the text as it is, and the page hides the priority for it: a repeated one left from a v0.2
    model had refused its synthesis."""
    repeated = fast(model="s1", language_2="zh", max_new_tokens=16)
    path, _, html = actions.synthesize("en_US", server.url, "", repeated)
    assert path and "fishtts-ok" in html, html
    assert list(actions.synthesize_stream("en_US", server.url, "", repeated))[-1][1] is not None
    assert actions.preview("en_US", server.url, "", repeated) == ([[0, repeated.text, "-", "-"]], None)
    _, _, html = actions.synthesize("en_US", server.url, "", dataclasses.replace(repeated, model="default"))
    assert t("en_US", "languages.duplicate") in html  # v0.2 reads it: still refused


def test_the_preview_of_a_saved_voice_reads_its_transcript_as_the_server_does(server, actions, reference_wav):
    """With its transcript box emptied, the server reads the voice's saved transcript; the preview did not."""
    _, voice_id, html = actions.save_voice("en_US", server.url, "", "Preview Voice", str(reference_wav), "Good day.")
    assert voice_id, html
    try:
        preview = fast(text="hello world", mode="phonemes", use_reference=True, voice_id=voice_id)
        typed = actions.preview("en_US", server.url, "", dataclasses.replace(preview, reference_text="Good day."))
        assert actions.preview("en_US", server.url, "", preview)[0] == typed[0] != []
    finally:
        actions.delete_voice("en_US", server.url, "", voice_id)


@pytest.mark.parametrize("lang", ["zh_CN", "en_US"])
def test_form_values_the_server_would_refuse_are_explained_in_the_pages_language(server, actions, lang):
    """(A negative seed got Gradio's English toast; an empty or slashed model name another route's 405 / 404)"""
    _, _, html = actions.synthesize(lang, server.url, "", fast(seed=-5))
    assert_readable(html, lang, "error.inference")
    assert t(lang, "error.bad_seed") in html
    for name in ("", "  ", "a/b", "../health"):
        form = ModelForm(device="cpu", s1_name=name, s1_folder=S1_FOLDER)
        html = actions.load_model(lang, server.url, "", form, s1=True)
        assert_readable(html, lang, "model.load_failed")
        assert t(lang, "error.bad_model_name") in html, name


def test_a_result_that_cannot_be_saved_is_explained(server, actions, monkeypatch):
    """(A full disk, or a temporary folder another user owns: the page stayed on "Synthesizing…")"""
    import webui.handlers

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(webui.handlers, "write_temp", full)
    path, download, html = actions.synthesize("zh_CN", server.url, "", fast())
    assert path is None and download is None
    assert_readable(html, "zh_CN", "error.inference")
    assert t("zh_CN", "error.save_result") in html


def test_every_visitors_events_run_at_once():
    """Gradio runs one call of an event at a time, across all visitors, unless told: a visitor waited for every
    other's synthesis, and for a preview or status check held by another visitor's silent server."""
    from webui.app import build_app

    demo = build_app(UISettings(api_url="http://127.0.0.1:9"))
    default = demo._queue.default_concurrency_limit
    limits = {default if fn.concurrency_limit == "default" else fn.concurrency_limit for fn in demo.fns.values()}
    assert limits == {None}


def test_a_failed_save_keeps_the_picked_voice_only_while_it_is_listed(server, actions, reference_wav):
    """(a save that could not reach the server lists only "none": keeping the picked voice then made the
    next Delete a raw Gradio error, "Value: ... is not in the list of choices")"""
    from webui.app import build_app

    demo = build_app(UISettings(api_url=server.url))
    (save,) = [fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "save"]
    _, voice_id, _ = actions.save_voice("en_US", server.url, "", "Kept Voice", str(reference_wav), "Hi.")
    try:
        kept, html = save("en_US", server.url, "", "", None, "", "default", voice_id)  # no name: refused
        assert kept["value"] == voice_id and t("en_US", "reference.need_name") in html
        gone, _ = save("en_US", "http://127.0.0.1:9", "", "Other", str(reference_wav), "Hi.", "default", voice_id)
        assert gone["value"] == "" and gone["choices"] == [("—", "")]
    finally:
        actions.delete_voice("en_US", server.url, "", voice_id)


def test_a_picked_voice_the_server_no_longer_lists_is_unpicked(server, actions, reference_wav):
    """(deleted elsewhere, then "Refresh list" or "Check server status": the dropdown kept the gone voice as its
    value, and every later event was a raw Gradio error, "Value: ... is not in the list of choices")"""
    from webui.app import build_app

    demo = build_app(UISettings(api_url=server.url))
    fns = {getattr(fn.fn, "__name__", ""): fn.fn for fn in demo.fns.values()}
    (dropdown,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "fishtts-voice"]
    _, kept, _ = actions.save_voice("en_US", server.url, "", "Listed Voice", str(reference_wav), "Hi.")
    _, gone, _ = actions.save_voice("en_US", server.url, "", "Gone Voice", str(reference_wav), "Hi.")
    actions.client(server.url).delete_voice(gone)  # by another client
    try:
        for lang in ("en_US", "zh_CN"):
            working = actions.working(lang)
            voices, message = fns["refresh"](lang, server.url, "", gone, working)
            assert voices["value"] == "" and kept in {value for _, value in voices["choices"]}
            assert message == {"__type__": "update"}  # (the message box left as it was)
            assert fns["refresh"](lang, server.url, "", kept, working)[0]["value"] == kept
            # the server down: "none" alone is listed and picked, and the message says why
            voices, failed = fns["refresh"](lang, "http://127.0.0.1:9", "", kept, working)
            assert voices["value"] == "" and voices["choices"] == [("—", "")]
            assert_readable(failed, lang, "error.voice")
            assert t(lang, "error.unreachable", url="http://127.0.0.1:9") in failed
            # back up: that failure is cleared (it stayed shown beside the list it said could not be read)
            assert fns["refresh"](lang, server.url, "", "", failed)[1] == ""
            # a voice deleted since the list was read, picked: said in the page's language
            clip, transcript, html = actions.select_voice(lang, server.url, "", gone)
            assert (clip, transcript) == (None, None)
            assert_readable(html, lang, "error.voice")
            assert t(lang, "reference.voice_missing", voice=gone) in html
        assert fns["reread"](server.url, "", "default", gone)[dropdown]["value"] == ""
        assert fns["reread"](server.url, "", "default", kept)[dropdown]["value"] == kept
        assert fns["reread"]("http://127.0.0.1:9", "", "default", kept)[dropdown]["value"] == ""
    finally:
        actions.delete_voice("en_US", server.url, "", kept)


def test_clear_and_language_switch_are_wired():
    from webui.app import build_app

    demo = build_app(UISettings(api_url="http://127.0.0.1:9"))
    names = {getattr(fn.fn, "__name__", "") for fn in demo.fns.values()}
    assert {"clear", "switch_language", "initial_language", "synthesize", "preview", "load_model"} <= names


def test_a_language_switch_says_the_messages_shown_again_in_the_new_language(server, actions, down_url):
    """(after a switch the last message stayed in the old language until the next action)"""
    from webui.app import build_app
    from webui.handlers import relocalized

    shown = {
        "failure": actions.synthesize("zh_CN", down_url, "", fast())[2],
        "status": actions.server_status("zh_CN", server.url, ""),
        "preview failure": actions.preview("zh_CN", down_url, "", fast())[1],  # (its class kept: `replaced`)
        "done": actions.load_model("zh_CN", server.url, "", TINY_MODEL),
    }
    expected = {
        "failure": actions.synthesize("en_US", down_url, "", fast())[2],
        "status": actions.server_status("en_US", server.url, ""),
        "preview failure": actions.preview("en_US", down_url, "", fast())[1],
        "done": actions.load_model("en_US", server.url, "", TINY_MODEL),
    }
    for name, said in shown.items():
        assert relocalized("en_US", said) == expected[name], name
        assert relocalized("zh_CN", expected[name]) == said, name
    assert relocalized("en_US", "") is None and relocalized("en_US", "<p>not ours</p>") is None
    for lines in ("[[1, 2]]", '[["no.such.key", {}]]', '[["error.server", {"status": 1}]]', "{"):  # (sent back)
        forged = f'<div class="fishtts-message fishtts-ok" data-lines="{escape(lines)}">x</div>'
        assert relocalized("en_US", forged) == forged
    demo = build_app(UISettings(api_url=server.url))
    (switch,) = [fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "switch_language"]
    *labels, message, model_message = switch("en_US", shown["failure"], "")
    assert message == expected["failure"] and model_message == {"__type__": "update"}


# -- errors: short and readable ------------------------------------------------------------------


@pytest.fixture(scope="module")
def down_url():
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.parametrize("lang", ["zh_CN", "en_US"])
def test_server_down_gives_a_readable_message(actions, down_url, lang):
    _, _, html = actions.synthesize(lang, down_url, "", fast())
    assert_readable(html, lang, "error.inference")
    assert t(lang, "error.unreachable", url=down_url) in html
    assert_readable(actions.load_model(lang, down_url, "", TINY_MODEL), lang, "model.load_failed")
    assert actions.preview(lang, down_url, "", fast(mode="phonemes"))[0] == []
    assert actions.voice_choices(down_url) == [("—", "")]
    assert t(lang, "error.unreachable", url=down_url) in actions.server_status(lang, down_url, "")


def test_a_server_that_drops_the_connection_is_not_called_unreachable(actions):
    """Accepted and closed unanswered: a server that crashed or restarted, not an address to check."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def drop() -> None:
        for _ in range(4):
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.close()

    threading.Thread(target=drop, daemon=True).start()
    try:
        for lang in ("en_US", "zh_CN"):
            _, _, html = actions.synthesize(lang, url, "", fast())
            assert t(lang, "error.connection_lost", url=url) in html, html
    finally:
        listener.close()


@pytest.mark.parametrize(
    "form, key",
    [
        (fast(text="   "), "error.empty_text"),
        (fast(language_2="zh"), "languages.duplicate"),
        (fast(use_reference=True), "reference.need_audio"),
        (fast(use_reference=True, reference_audio="/nonexistent/ref.wav", reference_text="x"), "error.read_audio"),
    ],
    ids=["empty-text", "duplicate-languages", "no-reference-audio", "unreadable-file"],
)
def test_bad_form_input_gives_a_readable_message(server, actions, form, key):
    _, _, html = actions.synthesize("zh_CN", server.url, "", form)
    assert_readable(html, "zh_CN", "error.inference")
    assert t("zh_CN", key) in html


def test_reference_without_its_text(server, actions, reference_wav):
    form = fast(use_reference=True, reference_audio=str(reference_wav))
    _, _, html = actions.synthesize("en_US", server.url, "", form)
    assert t("en_US", "reference.need_text") in html


def test_server_rejections_are_shown_briefly(server, actions, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    form = fast(use_reference=True, reference_audio=str(not_audio), reference_text="x")
    _, _, html = actions.synthesize("en_US", server.url, "", form)
    assert_readable(html, "en_US", "error.inference")
    assert "The server answered 4" in html  # 4xx with the server's one-line reason

    outside = ModelForm(**{**vars(TINY_MODEL), "llama_checkpoint": "../../../etc/passwd"})
    html = actions.load_model("zh_CN", server.url, "", outside)
    assert_readable(html, "zh_CN", "model.load_failed")
    assert "服务器返回错误 40" in html and "llama.checkpoint_path" in html

    _, _, html = actions.synthesize("en_US", server.url, "", fast(text="x" * 5000))
    assert_readable(html, "en_US", "error.inference")
    assert "422" in html

    clip, _, html = actions.select_voice("en_US", server.url, "", "no-such-voice")
    assert clip is None and "no-such-voice" in html
    _, html = actions.delete_voice("en_US", server.url, "", "")
    assert t("en_US", "reference.need_voice") in html
    _, voice_id, html = actions.save_voice("en_US", server.url, "", "", None, "")
    assert voice_id is None and t("en_US", "reference.need_name") in html  # (the picker is left as it was)


@pytest.mark.parametrize(
    "url",
    [
        "localhost:8000",
        "http://[::1",
        "http://127.0.0.1:99999",
        "http://host:port",
        "http://my..server:8000",  # (found by urllib3 only when connecting: a bare Gradio "Error")
        f"http://{'a' * 64}.example:8000",  # a label over 63 characters
    ],
)
def test_bad_server_address(actions, url, reference_wav):
    _, _, html = actions.synthesize("en_US", url, "", fast())
    assert t("en_US", "error.bad_url", url=url) in html
    assert t("zh_CN", "error.bad_url", url=url) in actions.server_status("zh_CN", url, "")
    steps = list(actions.synthesize_stream("zh_CN", url, "", fast()))
    assert t("zh_CN", "error.bad_url", url=url) in steps[-1][3]
    assert t("en_US", "error.bad_url", url=url) in actions.preview("en_US", url, "", fast())[1]
    assert t("zh_CN", "error.bad_url", url=url) in actions.load_model("zh_CN", url, "", TINY_MODEL)
    assert t("en_US", "error.bad_url", url=url) in actions.select_voice("en_US", url, "", "a-voice")[2]
    _, _, html = actions.save_voice("zh_CN", url, "", "Voice", str(reference_wav), "Hi.")
    assert t("zh_CN", "error.bad_url", url=url) in html
    assert actions.voice_choices(url) == [("—", "")] and actions.loaded_models(url) == []


@pytest.mark.parametrize("key", ["密钥", "s3c\nret", "tab\there"])  # (a trailing line break is stripped)
def test_an_api_key_a_header_cannot_carry_is_named(actions, key):
    """(e.g. typed with a Chinese input method on, or pasted with its line break)"""
    _, _, html = actions.synthesize("en_US", "http://127.0.0.1:9", key, fast())
    assert t("en_US", "error.bad_key") in html
    assert t("zh_CN", "error.bad_key") in actions.server_status("zh_CN", "http://127.0.0.1:9", key)


def test_missing_model_points_to_the_model_tab(tmp_path):
    srv = Server(make_workdir(tmp_path), load=False)
    try:
        _, _, html = Actions(UISettings(api_url=srv.url)).synthesize("en_US", srv.url, "", fast())
        assert t("en_US", "error.no_model", name="default") in html
    finally:
        srv.stop()


def test_api_key(tmp_path):
    srv = Server(make_workdir(tmp_path), "--api-key", "s3cret", load=False)
    try:
        without = Actions(UISettings(api_url=srv.url))
        _, _, html = without.synthesize("en_US", srv.url, "", fast())
        assert t("en_US", "error.unauthorized", status=401) in html
        with pytest.raises(ClientError):
            without.client(srv.url).list_voices()
        # the key from the page's field, or from FISHTTS_API_KEY (the settings)
        assert without.client(srv.url, "s3cret").list_voices() == []
        with_env_key = Actions(UISettings(api_url=srv.url, api_key="s3cret"))
        assert with_env_key.client(srv.url + "/").list_voices() == []
        # ...but never to an address typed in the page
        assert with_env_key.client(srv.url.replace("127.0.0.1", "localhost")).api_key is None
        _, _, html = with_env_key.synthesize("en_US", srv.url, "", fast())
        assert t("en_US", "error.no_model", name="default") in html  # past the key check
        # the status check says when the key is refused (health alone needs none: it said "connected")
        for key in ("", "wrong"):
            assert t("zh_CN", "error.unauthorized", status=401) in without.server_status("zh_CN", srv.url, key)
        assert "fishtts-ok" in without.server_status("zh_CN", srv.url, "s3cret")
    finally:
        srv.stop()


def test_client_errors_are_one_line():
    import requests

    response = requests.Response()
    response.status_code, response._content = (
        500,
        b"<html>\n<body>Traceback (most recent call last):\n...</body></html>",
    )
    response.reason = "Internal Server Error"
    error = error_from_response(response)
    assert isinstance(error, ClientError) and error.fields["message"] == "Internal Server Error"
    response._content = io.BytesIO(b'{"statusCode": 422, "message": "text: too long\\nsecond line"}').read()
    assert error_from_response(response).fields["message"] == "text: too long second line"


def test_the_page_starts_from_the_api_defaults(server, actions, down_url):
    """Sampling, language order and model files come from the API (defined once, in core)."""
    from core.checkpoints import DEFAULT_S1_DIR, LM_FILENAME, VQGAN_FILENAME
    from core.request import DEFAULT_ORDER, DEFAULT_SAMPLING

    model, synth = actions.forms(server.url)
    assert (synth.temperature, synth.top_p, synth.repetition_penalty) == (
        DEFAULT_SAMPLING.temperature,
        DEFAULT_SAMPLING.top_p,
        DEFAULT_SAMPLING.repetition_penalty,
    )
    assert ",".join((synth.language_1, synth.language_2, synth.language_3)) == DEFAULT_ORDER
    assert model.llama_checkpoint.endswith(LM_FILENAME) and model.vqgan_checkpoint.endswith(VQGAN_FILENAME)
    assert model.s1_folder == str(DEFAULT_S1_DIR)  # where `fishtts download --model openaudio-s1-mini` puts it
    assert actions.forms(down_url) == (ModelForm(), SynthesisForm())  # unreachable: the page still opens


@pytest.mark.parametrize("args", [["--port", "BUSY"], ["--port", "0"], ["--host", "::1"], ["--timeout", "-5"]])
def test_a_bad_address_or_timeout_is_one_line_and_exit_status(args):
    """A port in use, port 0 and an IPv6 host (which Gradio cannot serve) had each ended in a traceback; a
    negative timeout had been taken, and every request would then have failed."""
    import socket
    import subprocess
    import sys

    from tests.paths import process_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = [str(taken.getsockname()[1]) if a == "BUSY" else a for a in args]
        done = subprocess.run(
            [sys.executable, "-m", "webui", "--host", "127.0.0.1", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=process_env(GRADIO_ANALYTICS_ENABLED="False"),
        )
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: "), done.stderr
