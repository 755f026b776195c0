"""`build_app(settings)`: the Gradio Blocks app, i.e. the layout (layout.py) wired to the handlers
(handlers.py). Also the page's language: chosen on load from `?lang=`, the browser's language or
Accept-Language, and switchable in the page.
"""

from __future__ import annotations

import json

import gradio as gr

from .config import UISettings
from .handlers import NO_VOICE, Actions, LoadedModel, ModelForm, SynthesisForm, kept_voice, pick_model, relocalized
from .i18n import DEFAULT_LANGUAGE, LANGUAGES, pick_language, t
from .layout import EXAMPLE_KEYS, PREVIEW_HEADERS, Page

# Runs in the browser before the load handler; its answer becomes the hidden textbox's value.
DETECT_LANGUAGE_JS = """() => new URLSearchParams(window.location.search).get("lang")
    || (navigator.languages && navigator.languages[0]) || navigator.language || "" """

CSS = """
.fishtts-error { color: #d00; font-weight: bold; }
.fishtts-ok { color: #15803d; }
.fishtts-message { padding: 26px 4px 4px; white-space: pre-wrap; }  /* below the block's label */
#fishtts-download .empty { min-height: 60px; height: 60px; }  /* no result yet: a slim box, not a drop zone */
"""

PRIVATE = {"api_visibility": "private"}  # the page's own events, not a public API (that is the server's job)


def build_app(settings: UISettings | None = None) -> gr.Blocks:
    settings = settings or UISettings.from_env()
    actions = Actions(settings)
    with gr.Blocks(title=t(DEFAULT_LANGUAGE, "app.title"), delete_cache=(3600, 3600), analytics_enabled=False) as demo:
        page = Page(DEFAULT_LANGUAGE, settings.api_url, *actions.forms())
        preview = wire_inference(page, actions)
        wire_language(demo, page, preview)
        wire_model_tab(demo, page, actions)
        wire_voices(page, actions)
    # Every visitor's events at once (the server batches syntheses): Gradio's default runs one call of an event
    # at a time across all visitors, so one waiting on a slow or silent server held everyone's. Within a page,
    # the trigger modes order an event's runs ("once": none while one runs; "always_last": the last one after it).
    return demo.queue(default_concurrency_limit=None)


def form(data: dict, page: Page, form_class):
    """The dataclass `form_class` filled from an event's {component: value} inputs."""
    return form_class(**{name: data[getattr(page, name)] for name in form_class.__dataclass_fields__})


def model_updates(page: Page, models: list[LoadedModel], current: str | None) -> dict:
    """The model picker's choices and choice, and the fields that apply to the picked model's family
    only (input mode, speaker, language priority) shown or hidden; hidden, the mode is plain text."""
    name = pick_model(models, current)
    picked = next((m for m in models if m.name == name), None)
    phonemes = picked is None or picked.phonemes
    top_k = picked is None or picked.samples_with("top_k")
    return {
        page.model: gr.update(choices=[(m.label, m.name) for m in models] or [name], value=name),
        # (hidden, its value stays for the next v0.2 model: S1-mini ignores it)
        page.mode: gr.update(visible=phonemes),
        page.speaker: gr.update(visible=phonemes),
        page.languages: gr.update(visible=phonemes),
        page.languages_not_applicable: gr.update(visible=not phonemes),
        # hidden, it is 0 (not sent): the server refuses a top-k for a model that samples without one
        page.top_k: gr.update(visible=True) if top_k else gr.update(visible=False, value=0),
    }


def sampling_updates(page: Page, models: list[LoadedModel], name: str) -> dict:
    """The sliders at the picked model family's own sampling defaults (S1-mini's differ from v0.2's)."""
    picked = next((m for m in models if m.name == name), None)
    defaults = {} if picked is None else picked.sampling
    updates = {
        getattr(page, field): gr.update(value=defaults[field])
        for field in ("top_p", "repetition_penalty", "temperature")
        if isinstance(defaults.get(field), (int, float))
    }
    if not updates:
        return {}
    top_k = gr.update(value=defaults.get("top_k") or 0, visible=picked.samples_with("top_k"))
    return {page.top_k: top_k, **updates}


def preview_value(lang: str, rows: list) -> dict:
    return {"headers": [t(lang, key) for key in PREVIEW_HEADERS], "data": rows or [["", "", "", ""]]}


def wire_language(demo: gr.Blocks, page: Page, preview: dict) -> None:
    """`preview` (the preview event's fn, inputs, outputs) reruns after a switch: its headers are text."""

    def initial_language(browser_language: str, request: gr.Request):
        accept = request.headers.get("accept-language") if request is not None else None
        lang = pick_language(browser_language, accept_language=accept)
        return [lang, *page.labels.updates(lang)]

    messages = [page.message, page.model_message]

    def switch_language(lang: str, *shown: str):
        """The labels, and the messages shown, in `lang`."""
        again = [relocalized(lang, html) for html in shown]
        return [*page.labels.updates(lang), *(gr.update() if html is None else html for html in again)]

    demo.load(
        initial_language,
        inputs=[page.browser_language],
        outputs=[page.language, *page.labels.components],
        js=DETECT_LANGUAGE_JS,
        show_progress="hidden",
        **PRIVATE,
    ).then(**preview)
    page.language.input(
        switch_language,
        inputs=[page.language, *messages],
        outputs=[*page.labels.components, *messages],
        show_progress="hidden",
        **PRIVATE,
    ).then(**preview)


def wire_model_tab(demo: gr.Blocks, page: Page, actions: Actions) -> None:
    connection = [page.language, page.server_url, page.api_key]
    model_fields = page.components(ModelForm)

    def load_model(data: dict, s1: bool = False) -> str:
        return actions.load_model(
            data[page.language], data[page.server_url], data[page.api_key], form(data, page, ModelForm), s1=s1
        )

    def load_s1_model(data: dict) -> str:
        return load_model(data, s1=True)

    def server_status(lang: str, server_url: str, api_key: str) -> str:
        return actions.server_status(lang, server_url, api_key)

    def reread(
        server_url: str, api_key: str, current: str | None = None, voice: str = NO_VOICE, models: list | None = None
    ):
        """After a status check (the key may have been typed since the page loaded): the loaded model's files in
        the model tab, the models to pick from (`current` kept if it is one), and the saved voices (`voice`
        kept if it is one)."""
        loaded = actions.loaded_model_form(server_url, api_key)
        fields = {} if loaded is None else dict(zip(model_fields, vars(loaded).values()))
        models = actions.loaded_models(server_url, api_key) if models is None else models
        voices = actions.voice_choices(server_url, api_key)
        return {
            **fields,
            **model_updates(page, models, current),
            page.voice_id: gr.update(choices=voices, value=kept_voice(voices, voice)),
        }

    def from_server(server_url: str, api_key: str):
        """On page load: as a status check, and the sliders at the picked model's sampling defaults."""
        models = actions.loaded_models(server_url, api_key)
        sampling = sampling_updates(page, models, pick_model(models, None))
        return {**reread(server_url, api_key, models=models), **sampling}

    def pick(server_url: str, api_key: str, current: str):
        """The models the server has now, with `current` picked if it still is one of them."""
        return model_updates(page, actions.loaded_models(server_url, api_key), current)

    def picked(server_url: str, api_key: str, current: str):
        """A model picked by the user: the fields that apply to it, and its family's sampling defaults."""
        models = actions.loaded_models(server_url, api_key)
        return {**model_updates(page, models, current), **sampling_updates(page, models, current)}

    picker_outputs = [page.model, page.mode, page.speaker, page.languages, page.languages_not_applicable, page.top_k]
    sampling_sliders = [page.top_p, page.repetition_penalty, page.temperature]
    picker_inputs = [page.server_url, page.api_key, page.model]
    refresh_picker = dict(fn=pick, inputs=picker_inputs, outputs=picker_outputs, **PRIVATE)
    page.load_button.click(load_model, inputs={*connection, *model_fields}, outputs=page.model_message, **PRIVATE).then(
        **refresh_picker, show_progress="hidden"
    )
    page.s1_load_button.click(
        load_s1_model, inputs={*connection, *model_fields}, outputs=page.model_message, **PRIVATE
    ).then(**refresh_picker, show_progress="hidden")
    page.status_button.click(server_status, inputs=connection, outputs=page.model_message, **PRIVATE).then(
        reread,
        inputs=[*picker_inputs, page.voice_id],
        outputs=[*model_fields, *picker_outputs, page.voice_id],
        show_progress="hidden",
        **PRIVATE,
    )
    page.model.input(
        picked, inputs=picker_inputs, outputs=picker_outputs + sampling_sliders, show_progress="hidden", **PRIVATE
    )
    demo.load(
        from_server,
        inputs=[page.server_url, page.api_key],
        outputs=[*model_fields, *picker_outputs, *sampling_sliders, page.voice_id],
        show_progress="hidden",
        **PRIVATE,
    )


def wire_inference(page: Page, actions: Actions) -> dict:
    inputs = {page.language, page.server_url, page.api_key, *page.components(SynthesisForm)}

    def preview(data: dict):
        lang = data[page.language]
        rows, message = actions.preview(
            lang, data[page.server_url], data[page.api_key], form(data, page, SynthesisForm), data[page.message]
        )
        return preview_value(lang, rows), gr.update() if message is None else message

    def synthesize(data: dict, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
        """A generator either way: streamed chunks go to the live player as they come; the finished
        audio lands in the result player and the download box."""
        synthesis = form(data, page, SynthesisForm)
        connection = data[page.language], data[page.server_url], data[page.api_key]
        # The last run's "Done" and download go at once: they are not this run's
        yield gr.update(), gr.update(), None, actions.working(data[page.language])
        if not synthesis.stream:
            yield gr.update(), *actions.synthesize(*connection, synthesis, progress=progress)
            return
        for chunk, result, download, message in actions.synthesize_stream(*connection, synthesis):
            if chunk is not None:
                yield chunk, gr.update(), gr.update(), message
            else:
                yield gr.update(), result, download, message

    def show_stream_player(stream: bool):
        return gr.update(visible=bool(stream))

    def example_text(lang: str, index: int) -> str:
        return t(lang, EXAMPLE_KEYS[index])

    def clear(lang: str):
        """Empties the text, preview, results and messages (the original's Clear did nothing); the
        settings and the reference stay for the next text."""
        return "", preview_value(lang, []), None, None, None, ""

    # The preview follows whatever changes the string the model will read. One event for all triggers,
    # so "always_last" orders them: separate events raced, and a stale preview could land last.
    preview_event = dict(
        fn=preview,
        inputs=inputs | {page.message},
        outputs=[page.preview, page.message],
        show_progress="hidden",
        **PRIVATE,
    )
    triggers = (
        page.text,
        page.mode,
        page.language_1,
        page.language_2,
        page.language_3,
        page.use_reference,
        page.reference_text,
    )
    gr.on([trigger.change for trigger in triggers], **preview_event, trigger_mode="always_last")
    synthesis = page.synthesize_button.click(
        synthesize,
        inputs=inputs,
        outputs=[page.stream_audio, page.result_audio, page.download, page.message],
        show_progress_on=[page.result_audio],
        trigger_mode="always_last",  # a click during a run runs after it (Gradio's default dropped it)
        **PRIVATE,
    )
    page.stream.change(
        show_stream_player, inputs=[page.stream], outputs=[page.stream_audio], show_progress="hidden", **PRIVATE
    )
    page.examples.click(example_text, inputs=[page.language, page.examples], outputs=page.text, **PRIVATE)
    # A running synthesis is cancelled first (its result had landed in the cleared page), then the page cleared
    # (after its last update, or that one stayed)
    page.clear_button.click(None, cancels=[synthesis], **PRIVATE).then(
        clear,
        inputs=[page.language],
        outputs=[page.text, page.preview, page.stream_audio, page.result_audio, page.download, page.message],
        **PRIVATE,
    )
    return preview_event


def wire_voices(page: Page, actions: Actions) -> None:
    connection = [page.language, page.server_url, page.api_key]

    def select_voice(lang: str, server_url: str, api_key: str, voice_id: str):
        clip, transcript, message = actions.select_voice(lang, server_url, api_key, voice_id)
        if clip is None:  # "none" chosen, or the voice could not be read: leave the reference as it is
            return gr.update(), gr.update(), gr.update(), message
        return clip, transcript, True, message

    def refresh(lang: str, server_url: str, api_key: str, picked: str, shown: str):
        choices, voice_id, message = actions.refresh_voices(lang, server_url, api_key, picked, shown)
        return gr.update(choices=choices, value=voice_id), gr.update() if message is None else message

    def save(
        lang: str, server_url: str, api_key: str, name: str, clip: str | None, transcript: str, model: str, picked: str
    ):
        choices, voice_id, message = actions.save_voice(lang, server_url, api_key, name, clip, transcript, model)
        if voice_id is None:  # failed: the picked voice stays, if the server still lists it
            voice_id = kept_voice(choices, picked)
        return gr.update(choices=choices, value=voice_id), message

    def delete(lang: str, server_url: str, api_key: str, voice_id: str | None):
        if voice_id is None:  # the user said no to the browser's confirmation
            return gr.update(), gr.update()
        choices, message = actions.delete_voice(lang, server_url, api_key, voice_id)
        return gr.update(choices=choices, value=NO_VOICE), message

    def own_clip():
        """A clip the user uploaded or recorded replaces the saved voice, and turns the reference on."""
        return NO_VOICE, True

    page.voice_id.input(
        select_voice,
        inputs=[*connection, page.voice_id],
        outputs=[page.reference_audio, page.reference_text, page.use_reference, page.message],
        **PRIVATE,
    )
    page.refresh_voices.click(
        refresh, inputs=[*connection, page.voice_id, page.message], outputs=[page.voice_id, page.message], **PRIVATE
    )
    page.save_voice.click(
        save,
        inputs=[*connection, page.voice_name, page.reference_audio, page.reference_text, page.model, page.voice_id],
        outputs=[page.voice_id, page.message],
        **PRIVATE,
    )
    page.delete_voice.click(
        delete,
        inputs=[*connection, page.voice_id],
        outputs=[page.voice_id, page.message],
        js=confirm_delete_js(page.voice_id.elem_id),  # a saved voice is gone for good: one misclick must not do it
        **PRIVATE,
    )
    for event in (page.reference_audio.upload, page.reference_audio.stop_recording):
        event(own_clip, outputs=[page.voice_id, page.use_reference], show_progress="hidden", **PRIVATE)


def confirm_delete_js(dropdown_id: str) -> str:
    """In the browser, before the delete event: asks in the page's language, naming the voice as the dropdown
    (`dropdown_id`) shows it (the id alone may not be recognized); "no" sends null (delete() then does nothing),
    and no voice chosen goes on without asking (delete_voice says to choose one)."""
    asks = json.dumps({lang: t(lang, "reference.delete_confirm") for lang in LANGUAGES}, ensure_ascii=False)
    shown = f"document.querySelector({json.dumps(f'#{dropdown_id} input')})?.value || id"
    # (the name by a function: "$&" in it is then no replacement pattern)
    ask = f"(ask[lang] || ask[{json.dumps(DEFAULT_LANGUAGE)}]).replace('{{name}}', () => {shown})"
    answer = f"!id || confirm({ask}) ? id : null"
    return f"(lang, url, key, id) => {{ const ask = {asks}; return [lang, url, key, {answer}]; }}"


def launch(demo: gr.Blocks, settings: UISettings, **kwargs):
    """Gradio 6 takes theme and CSS at launch; no public API page (the original's show_api=False)."""
    return demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        theme=gr.themes.Base(),
        css=CSS,
        footer_links=["gradio", "settings"],
        **kwargs,
    )
