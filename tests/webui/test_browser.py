"""The web UI in a real browser (Debian's chromium, headless, driven by Playwright), the way a person
uses it: the page's language, the in-page switch, upload a reference, type, synthesize, listen, clear.
Screenshots go to the test artifacts folder (test-artifacts/, or TEST_ARTIFACTS_DIR)."""

from __future__ import annotations

import io
import shutil
import socket

import pytest
import requests
import soundfile as sf

from tests.helpers import assert_same_pcm, synthesize_speech
from tests.server.helpers import S1_FOLDER, Server, add_s1_model, make_workdir
from tests.webui.support import CHROMIUM, CHROMIUM_ARGS, WebUI, artifacts_dir, require_browser

REFERENCE_TEXT = "This is a short reference clip for voice cloning."
AUDIO_HAS_SOURCE = "() => { const a = document.querySelector('#fishtts-result audio'); return !!(a && a.src); }"
AUDIO_IS_EMPTY = "() => { const a = document.querySelector('#fishtts-result audio'); return !(a && a.src); }"


@pytest.fixture(scope="module")
def playwright():
    with require_browser().sync_playwright() as p:  # one per process: the tests share it
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def ui(browser, tmp_path_factory):
    workdir = add_s1_model(make_workdir(tmp_path_factory.mktemp("webui-browser")))
    server = Server(workdir, "--load", "s1=load_s1.json")  # an S1-mini model beside the v0.2 'default'
    webui = WebUI(server.url, workdir)
    webui.api_url = server.url
    yield webui
    webui.stop()
    server.stop()


def set_max_new_tokens(page, frames: int) -> None:
    tokens = page.locator("#fishtts-max-new-tokens input[type=number]")
    tokens.fill(str(frames))
    tokens.press("Enter")


def open_page(browser, url: str, locale: str):
    context = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    return page


@pytest.mark.parametrize(
    "locale, query, button, tab",
    [
        ("zh-CN", "", "合成", "推理配置"),
        ("en-US", "", "Synthesize", "Inference configuration"),
        ("zh-CN", "?lang=en", "Synthesize", "Inference configuration"),
    ],
    ids=["zh-CN", "en-US", "lang-param-wins"],
)
def test_page_opens_in_the_browsers_language(browser, ui, locale, query, button, tab):
    page = open_page(browser, ui.url + query, locale)
    try:
        page.locator("#fishtts-synthesize").filter(has_text=button).wait_for()
        page.get_by_role("tab", name=tab).wait_for()
    finally:
        page.context.close()


def test_switch_language_upload_reference_and_synthesize(browser, ui, tmp_path):
    wav = synthesize_speech(tmp_path / "my-voice.wav", REFERENCE_TEXT)
    page = open_page(browser, ui.url, "zh-CN")
    try:
        page.locator("#fishtts-synthesize").filter(has_text="合成").wait_for()
        page.get_by_text("输入文本", exact=True).wait_for()
        page.screenshot(path=str(artifacts_dir() / "webui-zh.png"), full_page=True)

        # the in-page switch: every label changes
        page.locator("#fishtts-language").get_by_text("English").click()
        page.locator("#fishtts-synthesize").filter(has_text="Synthesize").wait_for()
        page.get_by_role("tab", name="Inference configuration").wait_for()
        page.get_by_role("tab", name="Model configuration").wait_for()
        page.get_by_text("Input text", exact=True).wait_for()
        assert page.get_by_text("输入文本", exact=True).count() == 0

        # an example fills the text, and the labels stay in the chosen language
        page.locator("#fishtts-examples").get_by_text("Hugging face", exact=False).click()
        page.wait_for_function("() => document.querySelector('#fishtts-text textarea').value.includes('BGM')")
        assert page.get_by_text("Input text", exact=True).count() == 1

        page.locator("#fishtts-text textarea").fill("你好, hello world.")
        page.get_by_label("Input mode").click()
        page.get_by_role("option", name="Auto phonemes").click()
        # random weights never stop on their own: 8 frames
        set_max_new_tokens(page, 8)

        page.get_by_role("tab", name="Reference audio").click()
        page.locator("#fishtts-reference-audio input[type=file]").set_input_files(str(wav))
        page.locator("#fishtts-reference-text textarea").fill(REFERENCE_TEXT)
        page.wait_for_function("() => document.querySelector('#fishtts-use-reference input').checked")
        # the phoneme preview of what the model reads: reference text, then the text
        page.wait_for_function(
            "() => { const t = document.querySelector('#fishtts-preview').textContent;"
            " return t.includes('voice cloning') && t.includes('HH AH0 L OW1') && t.includes('ZH'); }"
        )

        page.locator("#fishtts-synthesize").click()
        page.wait_for_function(AUDIO_HAS_SOURCE, timeout=120_000)
        page.locator("#fishtts-message").get_by_text("Done in").wait_for()
        page.locator("#fishtts-download").get_by_text(".wav").first.wait_for()
        src = page.locator("#fishtts-result audio").get_attribute("src")
        assert src.endswith(".wav")
        assert page.request.get(src).body()[:4] == b"RIFF"  # the player's source is the WAV the API made
        page.screenshot(path=str(artifacts_dir() / "webui-synthesis-en.png"), full_page=True)

        # a switch of language says the message shown again in the new one (it stayed in the old one)
        page.locator("#fishtts-language").get_by_text("中文").click()
        page.locator("#fishtts-message").get_by_text("合成完成").wait_for()
        assert "Done in" not in page.locator("#fishtts-message").inner_text()

        # Clear (a dead button in the original) empties the text and the result
        page.locator("#fishtts-clear").click()
        page.wait_for_function(AUDIO_IS_EMPTY)
        assert page.locator("#fishtts-text textarea").input_value() == ""
    finally:
        page.context.close()


def test_record_reference_from_microphone_and_save_it_as_a_voice(playwright, ui):
    """Chromium's fake microphone (a beep) stands in for a person speaking."""
    fake_mic = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + fake_mic)
    context = chromium.new_context(locale="en-US", viewport={"width": 1400, "height": 1000}, permissions=["microphone"])
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(ui.url)
        page.locator("#fishtts-synthesize").filter(has_text="Synthesize").wait_for()
        page.locator("#fishtts-text textarea").fill("Hello from the microphone.")
        set_max_new_tokens(page, 8)

        page.get_by_role("tab", name="Reference audio").click()
        clip = page.locator("#fishtts-reference-audio")
        clip.get_by_label("Record audio").click()
        clip.locator("button", has_text="Record").first.click()
        page.wait_for_timeout(2000)
        clip.locator("button", has_text="Stop").first.click()
        page.wait_for_function("() => document.querySelector('#fishtts-use-reference input').checked")

        page.locator("#fishtts-reference-text textarea").fill("beep")
        page.get_by_label("Voice name").fill("Mic voice")
        page.locator("#fishtts-save-voice").click()
        page.locator("#fishtts-message").get_by_text('Voice "Mic voice" saved.').wait_for()
        page.wait_for_function("() => document.querySelector('#fishtts-voice input').value === 'Mic voice'")
        # A save that fails (no name) says why and leaves the picked voice as it was (it had reset it)
        page.get_by_label("Voice name").fill("")
        page.locator("#fishtts-save-voice").click()
        page.locator("#fishtts-message").get_by_text("Enter a name for the voice.").wait_for()
        assert page.locator("#fishtts-voice input").input_value() == "Mic voice"

        page.locator("#fishtts-synthesize").click()
        page.locator("#fishtts-message").get_by_text("Synthesizing").wait_for()  # not the save's message
        page.wait_for_function(AUDIO_HAS_SOURCE, timeout=120_000)
        page.locator("#fishtts-message").get_by_text("Done in").wait_for()
        page.screenshot(path=str(artifacts_dir() / "webui-microphone-voice.png"), full_page=True)

        # Deleting asks first: "no" keeps the voice, "yes" deletes it
        asked = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
        page.locator("#fishtts-delete-voice").click()
        page.wait_for_timeout(1500)
        assert asked == ['Delete the saved voice "Mic voice"? This cannot be undone.'], asked  # (its id had shown)
        assert page.locator("#fishtts-voice input").input_value() == "Mic voice"
        assert "deleted" not in page.locator("#fishtts-message").inner_text()
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#fishtts-delete-voice").click()
        page.locator("#fishtts-message").get_by_text('Voice "Mic voice" deleted.').wait_for()
    finally:
        context.close()
        chromium.close()


def test_streaming_plays_while_generating_and_keeps_the_same_audio(browser, ui):
    if shutil.which("ffmpeg") is None:
        pytest.skip("Gradio's live player needs ffmpeg (apt-get install ffmpeg)")
    text = "Streaming in the browser. It starts playing before the end."
    page = open_page(browser, ui.url + "?lang=en", "en-US")
    try:
        page.locator("#fishtts-synthesize").filter(has_text="Synthesize").wait_for()  # the page's language is set
        page.locator("#fishtts-text textarea").fill(text)
        for selector, value in (("#fishtts-max-new-tokens", "120"), ("#fishtts-seed", "7")):
            box = page.locator(f"{selector} input[type=number]")
            box.fill(value)
            box.press("Enter")
        assert not page.locator("#fishtts-stream-audio").is_visible()
        page.locator("#fishtts-stream input").check()
        page.locator("#fishtts-stream-audio").wait_for()

        # Every text the message shows, recorded as it changes: with the tiny models the stream can end
        # before a poll for the "Streaming" progress would see it.
        page.evaluate(
            "() => { window.fishttsMessages = [];"
            " new MutationObserver(() => { const m = document.querySelector('#fishtts-message');"
            " if (m) window.fishttsMessages.push(m.innerText); })"
            ".observe(document.body, {subtree: true, childList: true, characterData: true}); }"
        )
        page.locator("#fishtts-synthesize").click()
        # progress while it streams, and the live player gets a media stream and plays it
        page.wait_for_function("() => window.fishttsMessages.some(m => m.includes('Streaming'))", timeout=120_000)
        page.wait_for_function(
            "() => { const a = document.querySelector('#fishtts-stream-audio audio');"
            " return !!(a && (a.currentSrc || a.src) && a.currentTime > 0); }",
            timeout=120_000,
        )
        page.locator("#fishtts-message").get_by_text("Done in").wait_for(timeout=120_000)
        page.wait_for_function(AUDIO_HAS_SOURCE)
        page.screenshot(path=str(artifacts_dir() / "webui-streaming-en.png"), full_page=True)
        streamed = page.request.get(page.locator("#fishtts-result audio").get_attribute("src")).body()
    finally:
        page.context.close()
    # the whole streamed audio is what the API gives for the same request without streaming
    body = {"text": text, "max_new_tokens": 120, "seed": 7, "use_g2p": False, "format": "wav"}
    whole = requests.post(ui.api_url + "/v1/models/default/invoke", json=body, timeout=120)
    assert whole.status_code == 200
    streamed_pcm = sf.read(io.BytesIO(streamed), dtype="int16")[0]
    assert_same_pcm(streamed_pcm, sf.read(io.BytesIO(whole.content), dtype="int16")[0])


def test_picking_an_s1_model_hides_what_does_not_apply_and_synthesizes_with_it(browser, ui):
    """The model picker lists the server's models; for S1-mini the input mode, speaker and language
    priority hide (they apply to v0.2 only), and synthesis uses the picked model."""
    page = open_page(browser, ui.url + "?lang=en", "en-US")

    def pick(label: str, option: str) -> None:
        page.get_by_label(label, exact=True).click()
        page.get_by_role("option", name=option).click()

    def v02_fields(state: str, params_tab: str, languages_tab: str) -> None:
        page.get_by_role("tab", name=params_tab).click()
        page.locator("#fishtts-max-new-tokens").wait_for(state="visible")  # the tab is showing
        page.locator("#fishtts-mode").wait_for(state=state)
        page.locator("#fishtts-speaker").wait_for(state=state)
        page.locator("#fishtts-top-k").wait_for(state=state)  # S1-mini samples without top-k
        page.get_by_role("tab", name=languages_tab).click()
        page.locator("#fishtts-languages").wait_for(state=state)
        page.locator("#fishtts-languages-not-applicable").wait_for(state="hidden" if state == "visible" else "visible")

    try:
        page.locator("#fishtts-synthesize").filter(has_text="Synthesize").wait_for()
        page.wait_for_function("() => document.querySelector('#fishtts-model input').value.startsWith('default')")
        v02_fields("visible", "Synthesis parameters", "Language priority")

        temperature = "() => document.querySelector('#fishtts-temperature input[type=number]').value"
        assert page.evaluate(temperature) == "0.7"  # v0.2's default
        page.get_by_role("tab", name="Synthesis parameters").click()
        pick("Input mode", "Auto phonemes")  # (kept while S1-mini hides it: it had come back as "Text")
        pick("Model", "s1 (openaudio-s1-mini)")
        v02_fields("hidden", "Synthesis parameters", "Language priority")
        page.wait_for_function(f"() => ({temperature})() === '0.8'")  # S1-mini's own default
        page.get_by_role("tab", name="Synthesis parameters").click()
        page.locator("#fishtts-text textarea").fill("Hello from the second family.")
        set_max_new_tokens(page, 16)
        page.locator("#fishtts-synthesize").click()
        page.wait_for_function(AUDIO_HAS_SOURCE, timeout=120_000)
        page.locator("#fishtts-message").get_by_text("Done in").wait_for()
        page.screenshot(path=str(artifacts_dir() / "webui-s1-en.png"), full_page=True)
        result = page.request.get(page.locator("#fishtts-result audio").get_attribute("src")).body()
        s1 = next(d for d in requests.get(ui.api_url + "/v1/models").json()["details"] if d["name"] == "s1")
        assert sf.info(io.BytesIO(result)).samplerate == s1["sample_rate"]  # S1's audio, not v0.2's

        # in Chinese, back to v0.2: the fields return
        page.locator("#fishtts-language").get_by_text("中文").click()
        pick("模型", "default (fish-speech-v0.2)")
        v02_fields("visible", "合成参数", "语言优先级")
        page.wait_for_function(f"() => ({temperature})() === '0.7'")
        assert page.locator("#fishtts-mode input").input_value() == "自动音素"

        # the model tab loads another S1-mini folder under a name of its own; the picker offers it
        page.get_by_role("tab", name="模型配置").click()
        page.get_by_label("OpenAudio S1-mini 模型名").fill("s1-page")
        page.get_by_label("OpenAudio S1-mini 文件夹").fill(S1_FOLDER)
        page.locator("#fishtts-load-s1").click()
        page.locator("#fishtts-model-message").get_by_text("模型加载成功").wait_for(timeout=60_000)
        page.screenshot(path=str(artifacts_dir() / "webui-model-s1-zh.png"), full_page=True)
        page.get_by_role("tab", name="推理配置").click()
        pick("模型", "s1-page (openaudio-s1-mini)")
        v02_fields("hidden", "合成参数", "语言优先级")
    finally:
        page.context.close()


def test_clear_during_a_synthesis_cancels_it(browser, ui):
    """Clear empties the page at once; the synthesis it interrupted had landed its audio and "Done" in the
    cleared page a moment later."""
    page = open_page(browser, ui.url + "?lang=en", "en-US")
    try:
        page.locator("#fishtts-synthesize").filter(has_text="Synthesize").wait_for()
        page.locator("#fishtts-text textarea").fill("Hi. " * 249)
        set_max_new_tokens(page, 240)
        page.locator("#fishtts-synthesize").click()
        page.locator("#fishtts-message").get_by_text("Synthesizing").wait_for()
        page.locator("#fishtts-clear").click()
        page.wait_for_function("() => document.querySelector('#fishtts-text textarea').value === ''")
        page.wait_for_timeout(6000)  # (the synthesis alone takes 1-3 s here)
        assert page.evaluate(AUDIO_IS_EMPTY)
        assert "Done" not in page.locator("#fishtts-message").inner_text()
    finally:
        page.context.close()


def test_a_picked_voice_deleted_elsewhere_leaves_the_page_working(browser, ui, tmp_path):
    """Deleted by another client, then "Refresh list": the dropdown had kept the gone voice, and every later event
    was a raw Gradio error ("Value: ... is not in the list of choices", in English on any page)."""
    wav = synthesize_speech(tmp_path / "voice.wav", REFERENCE_TEXT)
    page = open_page(browser, ui.url + "?lang=zh", "zh-CN")
    try:
        page.locator("#fishtts-synthesize").filter(has_text="合成").wait_for()
        page.locator("#fishtts-text textarea").fill("Hello there.")
        set_max_new_tokens(page, 8)
        page.get_by_role("tab", name="参考音频").click()
        page.locator("#fishtts-reference-audio input[type=file]").set_input_files(str(wav))
        page.locator("#fishtts-reference-text textarea").fill(REFERENCE_TEXT)
        page.get_by_label("音色名称").fill("Short-lived")
        page.locator("#fishtts-save-voice").click()
        page.wait_for_function("() => document.querySelector('#fishtts-voice input').value === 'Short-lived'")
        voices = requests.get(ui.api_url + "/v1/references", timeout=10).json()["references"]
        voice_id = next(v["id"] for v in voices if v["name"] == "Short-lived")
        assert requests.delete(f"{ui.api_url}/v1/references/{voice_id}", timeout=10).status_code == 200

        page.get_by_role("button", name="刷新列表").click()
        page.wait_for_function("() => document.querySelector('#fishtts-voice input').value === '—'")
        page.locator("#fishtts-synthesize").click()  # with the clip still in the reference box
        page.wait_for_function(AUDIO_HAS_SOURCE, timeout=120_000)
        page.locator("#fishtts-message").get_by_text("完成").wait_for()
        assert "not in the list of choices" not in page.locator("body").inner_text()
    finally:
        page.context.close()


def test_a_visitor_waiting_on_a_silent_server_holds_up_no_one_else(browser, ui):
    """Gradio ran one call of an event at a time across all visitors: a page pointed at an address that accepts
    connections and never answers held every other visitor's preview and status check for its timeouts (~60 s)."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; no one answers
    stuck, other = (open_page(browser, ui.url + "?lang=en", "en-US") for _ in range(2))
    try:
        for page in (stuck, other):
            page.locator("#fishtts-synthesize").filter(has_text="Synthesize").wait_for()
        stuck.get_by_role("tab", name="Model configuration").click()
        stuck.get_by_label("Server address").fill(f"http://127.0.0.1:{silent.getsockname()[1]}")
        stuck.get_by_role("button", name="Check server status").click()
        stuck.get_by_role("tab", name="Inference configuration").click()
        stuck.locator("#fishtts-text textarea").fill("Waiting for a silent server.")
        stuck.wait_for_timeout(1500)  # both of its calls wait on the silent server

        other.locator("#fishtts-text textarea").fill("Another visitor types.")
        preview = "() => document.querySelector('#fishtts-preview').innerText.includes('Another visitor')"
        other.wait_for_function(preview, timeout=15_000)  # (the silent server's timeout is 30 s)
        other.get_by_role("tab", name="Model configuration").click()
        other.get_by_role("button", name="Check server status").click()
        other.locator("#fishtts-model-message").get_by_text("Connected to").wait_for(timeout=15_000)
    finally:
        silent.close()  # (the waiting calls end: their connections are reset)
        for page in (stuck, other):
            page.context.close()
