"""The page: the original UI's two columns and tabs (SPEC-server §8.2), plus the language switch,
saved voices, seed, output format and download. Builds components only; app.py wires events.

Component attribute names equal the fields of handlers.ModelForm / SynthesisForm.
"""

from __future__ import annotations

import shutil

import gradio as gr

from .handlers import NO_VOICE, PRECISIONS, ModelForm, SynthesisForm
from .i18n import language_choices, t
from .labels import Labels

MODES = [("mode.text", "text"), ("mode.phonemes", "phonemes")]
LANGUAGE_CHOICES = [("lang.zh", "zh"), ("lang.jp", "jp"), ("lang.en", "en")]
FORMATS = ["wav", "flac", "mp3", "ogg"]
PREVIEW_HEADERS = ["preview.id", "preview.text", "preview.language", "preview.phonemes"]
EXAMPLE_KEYS = ["example.1", "example.2", "example.3", "example.4"]
LANGUAGE_SLOT_KEYS = ["languages.first", "languages.second", "languages.third"]


class Page:
    """Every component the handlers read or write, by name."""

    def __init__(self, lang: str, api_url: str, model: ModelForm | None = None, synth: SynthesisForm | None = None):
        self.labels = labels = Labels(lang)
        make = labels.make
        model, synth = model or ModelForm(), synth or SynthesisForm()

        with gr.Row(equal_height=True):
            make(gr.Markdown, i18n={"value": "header.markdown"})
            self.language = make(
                gr.Radio,
                i18n={"label": "language.label"},
                choices=language_choices(),
                value=lang,
                scale=0,
                min_width=220,
                elem_id="fishtts-language",
            )
        # navigator.language arrives here on page load (JS), then picks the page's language.
        self.browser_language = gr.Textbox(visible=False)

        with gr.Row():
            with gr.Column(scale=3), gr.Tabs(selected="inference"):
                with make(gr.Tab, i18n={"label": "tab.model"}, id="model"):
                    self.server_url = make(gr.Textbox, i18n={"label": "model.server_url"}, value=api_url)
                    self.api_key = make(
                        gr.Textbox,
                        i18n={"label": "model.api_key", "placeholder": "model.api_key.placeholder"},
                        type="password",
                    )
                    with gr.Row():
                        self.device = make(
                            gr.Dropdown, i18n={"label": "model.device"}, choices=["cpu", "cuda"], value=model.device
                        )
                        # bfloat16 like the API (the original UI said float16, QUIRKS 32)
                        self.precision = make(
                            gr.Dropdown,
                            i18n={"label": "model.precision"},
                            choices=list(PRECISIONS),
                            value=model.precision,
                        )
                    self.compile = make(gr.Checkbox, i18n={"label": "model.compile"}, value=model.compile)
                    self.llama_checkpoint = make(
                        gr.Textbox, i18n={"label": "model.llama_checkpoint"}, value=model.llama_checkpoint
                    )
                    self.llama_config = make(gr.Textbox, i18n={"label": "model.llama_config"}, value=model.llama_config)
                    self.tokenizer = make(gr.Textbox, i18n={"label": "model.tokenizer"}, value=model.tokenizer)
                    self.vqgan_checkpoint = make(
                        gr.Textbox, i18n={"label": "model.vqgan_checkpoint"}, value=model.vqgan_checkpoint
                    )
                    self.vqgan_config = make(gr.Textbox, i18n={"label": "model.vqgan_config"}, value=model.vqgan_config)
                    with gr.Row():
                        self.load_button = make(
                            gr.Button, i18n={"value": "model.load"}, variant="primary", elem_id="fishtts-load"
                        )
                        self.status_button = make(gr.Button, i18n={"value": "model.check"})
                    # An OpenAudio S1-mini folder loads beside the v0.2 model, with the device and precision above.
                    with gr.Row(equal_height=True):
                        self.s1_name = make(gr.Textbox, i18n={"label": "model.s1_name"}, value=model.s1_name, scale=1)
                        self.s1_folder = make(
                            gr.Textbox,
                            i18n={"label": "model.s1_folder", "info": "model.s1_folder.info"},
                            value=model.s1_folder,
                            scale=3,
                        )
                    self.s1_load_button = make(gr.Button, i18n={"value": "model.s1_load"}, elem_id="fishtts-load-s1")
                    self.model_message = make(
                        gr.HTML,
                        i18n={"label": "model.message"},
                        show_label=True,
                        container=True,
                        elem_id="fishtts-model-message",
                    )

                with make(gr.Tab, i18n={"label": "tab.inference"}, id="inference"):
                    # The loaded models (GET /v1/models); what does not apply to the picked one hides.
                    self.model = make(
                        gr.Dropdown,
                        i18n={"label": "inference.model", "info": "inference.model.info"},
                        choices=[synth.model],
                        value=synth.model,
                        allow_custom_value=True,  # the page may start before the server lists its models
                        elem_id="fishtts-model",
                    )
                    self.text = make(
                        gr.Textbox,
                        i18n={"label": "inference.text", "placeholder": "inference.text.placeholder"},
                        lines=15,
                        max_lines=30,
                        elem_id="fishtts-text",
                    )
                    # A Dataset rather than gr.Examples: an Examples click re-sends the textbox's first
                    # config, label included, which undid the language switch.
                    self.examples = make(
                        gr.Dataset,
                        i18n={"label": "inference.examples"},
                        components=[self.text],
                        samples=[[t(lang, key)] for key in EXAMPLE_KEYS],
                        type="index",
                        elem_id="fishtts-examples",
                    )

                    with gr.Tabs():
                        with make(gr.Tab, i18n={"label": "tab.params"}):
                            make(gr.Markdown, i18n={"value": "params.markdown"})
                            self.mode = make(
                                gr.Dropdown,
                                i18n={"label": "params.mode", "choices": MODES},
                                value=synth.mode,
                                elem_id="fishtts-mode",
                            )
                            self.max_new_tokens = make(
                                gr.Slider,
                                i18n={"label": "params.max_new_tokens", "info": "params.max_new_tokens.info"},
                                minimum=0,
                                maximum=4096,
                                step=8,
                                value=synth.max_new_tokens,
                                elem_id="fishtts-max-new-tokens",
                            )
                            self.top_k = make(
                                gr.Slider,
                                i18n={"label": "params.top_k", "info": "params.top_k.info"},
                                minimum=0,
                                maximum=100,
                                step=1,
                                value=synth.top_k,
                                elem_id="fishtts-top-k",
                            )
                            # The API needs top_p, penalty and temperature > 0: the sliders start at 0.01.
                            self.top_p = make(
                                gr.Slider,
                                i18n={"label": "params.top_p"},
                                minimum=0.01,
                                maximum=1,
                                step=0.01,
                                value=synth.top_p,
                            )
                            self.repetition_penalty = make(
                                gr.Slider,
                                i18n={"label": "params.repetition_penalty"},
                                minimum=0.01,
                                maximum=2,
                                step=0.01,
                                value=synth.repetition_penalty,
                            )
                            self.temperature = make(
                                gr.Slider,
                                i18n={"label": "params.temperature"},
                                minimum=0.01,
                                maximum=2,
                                step=0.01,
                                value=synth.temperature,
                                elem_id="fishtts-temperature",
                            )
                            self.speaker = make(
                                gr.Textbox,
                                i18n={"label": "params.speaker", "placeholder": "params.speaker.placeholder"},
                                elem_id="fishtts-speaker",
                            )
                            with gr.Row():
                                self.seed = make(
                                    gr.Number,
                                    i18n={"label": "params.seed", "info": "params.seed.info"},
                                    value=synth.seed,
                                    precision=0,  # (no minimum: Gradio refused below it in English)
                                    elem_id="fishtts-seed",
                                )
                                self.output_format = make(
                                    gr.Dropdown,
                                    i18n={"label": "params.format"},
                                    choices=FORMATS,
                                    value=synth.output_format,
                                )
                            # Gradio plays a stream through ffmpeg on this machine; without it, no toggle.
                            can_stream = shutil.which("ffmpeg") is not None
                            self.stream = make(
                                gr.Checkbox,
                                i18n={
                                    "label": "params.stream",
                                    "info": "params.stream.info" if can_stream else "params.stream.unavailable",
                                },
                                value=synth.stream,
                                interactive=can_stream,
                                elem_id="fishtts-stream",
                            )

                        with make(gr.Tab, i18n={"label": "tab.languages"}):
                            # Shown instead of the fields for a model that reads text as it is (S1-mini);
                            # the tab stays (Gradio 6 does not hide a tab on an update).
                            self.languages_not_applicable = make(
                                gr.Markdown,
                                i18n={"value": "languages.not_applicable"},
                                visible=False,
                                elem_id="fishtts-languages-not-applicable",
                            )
                            with gr.Column(elem_id="fishtts-languages") as self.languages:
                                make(gr.Markdown, i18n={"value": "languages.markdown"})
                                self.language_1, self.language_2, self.language_3 = (
                                    make(gr.Dropdown, i18n={"label": key, "choices": LANGUAGE_CHOICES}, value=value)
                                    for key, value in zip(
                                        LANGUAGE_SLOT_KEYS, (synth.language_1, synth.language_2, synth.language_3)
                                    )
                                )

                        with make(gr.Tab, i18n={"label": "tab.reference"}, id="reference"):
                            make(gr.Markdown, i18n={"value": "reference.markdown"})
                            self.use_reference = make(
                                gr.Checkbox,
                                i18n={"label": "reference.enable"},
                                value=synth.use_reference,
                                elem_id="fishtts-use-reference",
                            )
                            with gr.Row():
                                self.voice_id = make(
                                    gr.Dropdown,
                                    i18n={"label": "reference.voice", "info": "reference.voice.info"},
                                    choices=[("—", NO_VOICE)],
                                    value=NO_VOICE,
                                    scale=3,
                                    elem_id="fishtts-voice",
                                )
                                with gr.Column(scale=1, min_width=120):
                                    self.refresh_voices = make(
                                        gr.Button, i18n={"value": "reference.refresh"}, size="sm"
                                    )
                                    self.delete_voice = make(
                                        gr.Button,
                                        i18n={"value": "reference.delete"},
                                        size="sm",
                                        variant="stop",
                                        elem_id="fishtts-delete-voice",
                                    )
                            self.reference_audio = make(
                                gr.Audio,
                                i18n={"label": "reference.audio"},
                                sources=["upload", "microphone"],
                                type="filepath",
                                elem_id="fishtts-reference-audio",
                            )
                            self.reference_text = make(
                                gr.Textbox,
                                i18n={"label": "reference.text", "placeholder": "reference.text.placeholder"},
                                lines=1,
                                elem_id="fishtts-reference-text",
                            )
                            with gr.Row():
                                self.voice_name = make(
                                    gr.Textbox,
                                    i18n={
                                        "label": "reference.save_name",
                                        "placeholder": "reference.save_name.placeholder",
                                    },
                                    scale=3,
                                )
                                self.save_voice = make(
                                    gr.Button, i18n={"value": "reference.save"}, scale=1, elem_id="fishtts-save-voice"
                                )

                    with gr.Row():
                        self.synthesize_button = make(
                            gr.Button,
                            i18n={"value": "action.synthesize"},
                            variant="primary",
                            scale=2,
                            elem_id="fishtts-synthesize",
                        )
                        self.clear_button = make(
                            gr.Button, i18n={"value": "action.clear"}, scale=1, elem_id="fishtts-clear"
                        )

            with gr.Column(scale=3):
                self.message = make(
                    gr.HTML,
                    i18n={"label": "output.message"},
                    show_label=True,
                    container=True,
                    elem_id="fishtts-message",
                )
                self.preview = make(
                    gr.Dataframe,
                    i18n={"label": "output.preview"},
                    headers=[t(lang, key) for key in PREVIEW_HEADERS],
                    column_count=4,
                    column_widths=["8%", "37%", "15%", "40%"],
                    interactive=False,
                    wrap=True,
                    elem_id="fishtts-preview",
                )
                # While streaming: Gradio's live player (chunks re-encoded to AAC by one ffmpeg process,
                # so the joins have no gaps); hidden unless the stream toggle is on.
                self.stream_audio = make(
                    gr.Audio,
                    i18n={"label": "output.stream"},
                    streaming=True,
                    autoplay=True,
                    interactive=False,
                    visible=False,
                    elem_id="fishtts-stream-audio",
                )
                # The browser's own player (a plain <audio src=...>): plays every output format.
                self.result_audio = make(
                    gr.Audio,
                    i18n={"label": "output.audio"},
                    type="filepath",
                    interactive=False,
                    buttons=["download"],
                    elem_id="fishtts-result",
                    waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                )
                self.download = make(
                    gr.File, i18n={"label": "output.download"}, interactive=False, height=90, elem_id="fishtts-download"
                )

    def components(self, form_class) -> list:
        """The components that fill `form_class`, in its field order."""
        return [getattr(self, name) for name in form_class.__dataclass_fields__]
