"""What the UI's buttons do, as plain functions of plain values (no Gradio types), so tests can call
them against a live server. Each returns what the page shows; failures become one short message in
the page's language (`message_html`), never a traceback.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .client import ApiClient, ClientError
from .config import UISettings
from .files import wav_bytes, write_temp
from .i18n import t

log = logging.getLogger(__name__)

MODEL_NAME = "default"  # the model the page loads, and picks when the server has it
# The classes of a preview's and a voice list's failures: the next successful one clears only its own.
PREVIEW_ERROR = "fishtts-preview-error"
VOICE_LIST_ERROR = "fishtts-voice-list-error"
MODEL_NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the API's model names
NO_VOICE = ""  # the voice dropdown's "none" entry
PRECISIONS = ("bfloat16", "float16", "float32")  # what a load body's precision may be (the API's choices)


@dataclass
class ModelForm:
    """The model tab; the field names are the components' names in the layout. The page starts from
    the API's defaults (`Actions.forms`); these are used only when it cannot be reached."""

    device: str = "cuda"
    precision: str = "bfloat16"
    compile: bool = True
    llama_checkpoint: str = "checkpoints/text2semantic-400m-v0.2-4k.pth"
    llama_config: str = "text2semantic_finetune"
    tokenizer: str = "fishaudio/speech-lm-v1"
    vqgan_checkpoint: str = "checkpoints/vqgan-v1.pth"
    vqgan_config: str = "vqgan_pretrain"
    s1_name: str = "s1"  # an OpenAudio S1-mini model loads beside 'default' under this name
    s1_folder: str = "checkpoints/openaudio-s1-mini"

    def s1_load_body(self) -> dict:
        """PUT /v1/models/{s1_name}'s body: the S1-mini folder, with the device and precision above."""
        s1 = {"folder": self.s1_folder, "precision": self.precision, "compile": bool(self.compile)}
        return {"device": self.device, "s1": s1}

    def load_body(self) -> dict:
        """The original UI's PUT /v1/models/default body."""
        return {
            "device": self.device,
            "llama": {
                "config_name": self.llama_config,
                "checkpoint_path": self.llama_checkpoint,
                "precision": self.precision,
                "tokenizer": self.tokenizer,
                "compile": bool(self.compile),
            },
            "vqgan": {"config_name": self.vqgan_config, "checkpoint_path": self.vqgan_checkpoint},
        }


@dataclass
class SynthesisForm:
    """The inference tab; the field names are the components' names in the layout. The page starts
    from the API's defaults (`Actions.forms`); these are used only when it cannot be reached."""

    model: str = MODEL_NAME  # the loaded model the page synthesizes with
    text: str = ""
    mode: str = "text"  # "text" or "phonemes" (the original's 文本 / 自动音素)
    max_new_tokens: float = 0
    top_k: float = 0
    top_p: float = 0.5
    repetition_penalty: float = 1.5
    temperature: float = 0.7
    speaker: str = ""
    seed: float = 0  # 0 = a fresh random seed each time
    output_format: str = "wav"
    stream: bool = False  # play while generating (a WAV download then)
    language_1: str = "zh"
    language_2: str = "jp"
    language_3: str = "en"
    use_reference: bool = False
    voice_id: str = NO_VOICE
    reference_audio: str | None = None  # a file path from Gradio's upload or microphone
    reference_text: str = ""


class UIError(Exception):
    """A message for the user, by locale key."""

    def __init__(self, key: str, **fields):
        super().__init__(key)
        self.key, self.fields = key, fields


Line = tuple[str, dict]  # a message's line: a locale key and its fields


def message_html(lang: str, key: str, detail: Line | None = None, *, error: bool = True, **fields) -> str:
    """The original's red bold error block (escaped), or a plain note for successes: `key` and a `detail` line."""
    return lines_html(lang, [(key, fields), *([detail] if detail else [])], error=error)


def lines_html(lang: str, lines: list[Line], *, error: bool) -> str:
    """A message of several lines in `lang`. Its lines' keys and fields go with it (`data-lines`), so that a
    switch of the page's language can say it again in the other (`relocalized`)."""
    shown = "<br>".join(html.escape(t(lang, key, **fields), quote=False) for key, fields in lines)
    data = html.escape(json.dumps([[key, fields] for key, fields in lines], ensure_ascii=False, default=str))
    css = "fishtts-error" if error else "fishtts-ok"
    return f'<div class="fishtts-message {css}" data-lines="{data}">{shown}</div>'


_MESSAGE = re.compile(r'<div class="fishtts-message (fishtts-error|fishtts-ok)" data-lines="([^"]*)">.*?</div>', re.S)


def relocalized(lang: str, shown: str | None) -> str | None:
    """A message box's HTML with each message in it said again in `lang` (wrappers such as PREVIEW_ERROR's
    kept); None where it shows none. (After a switch of language a message stayed in the old one.)"""
    if not shown or "data-lines=" not in shown:
        return None

    def again(match: re.Match) -> str:
        try:
            lines = [(str(key), dict(fields)) for key, fields in json.loads(html.unescape(match[2]))]
            return lines_html(lang, lines, error=match[1] == "fishtts-error")
        except (ValueError, TypeError, KeyError, IndexError):  # (the value comes back from the browser): as it was
            return match[0]

    return _MESSAGE.sub(again, shown)


@dataclass(frozen=True)
class LoadedModel:
    """A model the server has loaded, as the page needs it (GET /v1/models' details)."""

    name: str
    family: str = ""
    phonemes: bool = True  # input mode, language order and speaker apply to it (not to S1-mini)
    sampling: dict = field(default_factory=dict, compare=False)  # its family's defaults (temperature, ...)
    sampling_fields: tuple[str, ...] | None = field(default=None, compare=False)  # None: not told, all apply

    @classmethod
    def from_details(cls, details: dict) -> LoadedModel:
        sampling = details.get("sampling") if isinstance(details.get("sampling"), dict) else {}
        fields = details.get("sampling_fields")
        fields = tuple(str(f) for f in fields) if isinstance(fields, list) else None
        phonemes = details.get("phonemes") is not False
        return cls(str(details["name"]), str(details.get("family", "")), phonemes, sampling, fields)

    def samples_with(self, name: str) -> bool:
        """Whether the sampling field `name` applies to this model (S1-mini has no top-k)."""
        return self.sampling_fields is None or name in self.sampling_fields

    @property
    def label(self) -> str:
        return f"{self.name} ({self.family})" if self.family else self.name


def pick_model(models: list[LoadedModel], current: str | None) -> str:
    """The page's choice: the current one while it is loaded, else 'default', else the first."""
    names = [m.name for m in models]
    for name in (current, MODEL_NAME):
        if name in names:
            return name
    return names[0] if names else MODEL_NAME


def failure_html(lang: str, headline: str, exc: Exception, model: str = MODEL_NAME) -> str:
    """`headline` then the reason: a server or connection problem, or a form problem."""
    if isinstance(exc, ClientError):
        if exc.status == 404 and str(exc.fields.get("message", "")).startswith("Cannot find model"):
            # The server's "Cannot find model.": tell users where to load one.
            return message_html(lang, headline, ("error.no_model", {"name": model}))
        return message_html(lang, headline, (exc.key, exc.fields))
    if isinstance(exc, UIError):
        return message_html(lang, headline, (exc.key, exc.fields))
    raise exc


class Actions:
    """The handlers, bound to the UI's settings (default API key, timeouts)."""

    def __init__(self, settings: UISettings):
        self.settings = settings

    def client(self, server_url: str, api_key: str = "") -> ApiClient:
        url = (server_url or "").strip().rstrip("/") or self.settings.api_url
        # FISHTTS_API_KEY goes only to the configured server: a visitor who types another address
        # in the page must not receive it.
        default_key = self.settings.api_key if url == self.settings.api_url.strip().rstrip("/") else None
        return ApiClient(url, (api_key or "").strip() or default_key, long_timeout=self.settings.timeout)

    def forms(self, server_url: str = "", api_key: str = "") -> tuple[ModelForm, SynthesisForm]:
        """The two forms as the page starts: the API's defaults (sampling, language order, model
        files), so they are defined once, in core; the dataclasses' own when the API is unreachable."""
        model, synth = ModelForm(), SynthesisForm()
        try:
            defaults = self.client(server_url, api_key).defaults()
        except (ClientError, KeyError, TypeError):
            return model, synth
        invoke, llama, vqgan = defaults["invoke"], defaults["llama"], defaults["vqgan"]
        languages = str(invoke.get("order", "")).split(",")
        if len(languages) == 3:
            synth.language_1, synth.language_2, synth.language_3 = languages
        for name in ("max_new_tokens", "top_p", "repetition_penalty", "temperature"):
            setattr(synth, name, invoke.get(name, getattr(synth, name)))
        synth.top_k = invoke.get("top_k") or 0
        model.compile = llama.get("compile", model.compile)
        model.llama_checkpoint = llama.get("checkpoint_path", model.llama_checkpoint)
        model.llama_config = llama.get("config_name", model.llama_config)
        model.tokenizer = llama.get("tokenizer", model.tokenizer)
        model.vqgan_checkpoint = vqgan.get("checkpoint_path", model.vqgan_checkpoint)
        model.vqgan_config = vqgan.get("config_name", model.vqgan_config)
        model.s1_folder = defaults["s1"].get("folder", model.s1_folder)
        return model, synth

    # -- model tab ------------------------------------------------------------------------------

    def load_model(self, lang: str, server_url: str, api_key: str, form: ModelForm, s1: bool = False) -> str:
        """Load the v0.2 files as 'default', or (`s1`) the S1-mini folder under its own name."""
        name, body = (form.s1_name.strip(), form.s1_load_body()) if s1 else (MODEL_NAME, form.load_body())
        try:
            if not MODEL_NAME_RULE.fullmatch(name):  # ("" or "a/b" made another route's 405 / 404)
                raise UIError("error.bad_model_name")
            info = self.client(server_url, api_key).load_model(name, body)
        except (ClientError, UIError) as exc:
            return failure_html(lang, "model.load_failed", exc)
        detail = {"device": info.get("device", "?"), "precision": info.get("precision", "?")}
        return message_html(lang, "model.loaded", ("model.loaded_detail", detail), error=False)

    def server_status(self, lang: str, server_url: str, api_key: str) -> str:
        try:
            client = self.client(server_url, api_key)
            health = client.health()
            client.list_models()  # (health needs no key: "connected" with a wrong one, then every request a 401)
        except ClientError as exc:
            return message_html(lang, exc.key, **exc.fields)
        lines: list[Line] = [("status.connected", {"url": client.base_url})]
        models = [f"{m['name']} ({m.get('device', '?')}, {m.get('precision', '?')})" for m in health.get("models", [])]
        lines.append(("status.models", {"models": ", ".join(models)}) if models else ("status.no_models", {}))
        if health.get("loading"):
            lines.append(("status.loading", {"models": ", ".join(health["loading"])}))
        if health.get("load_errors"):
            errors = "; ".join(f"{k}: {v}" for k, v in health["load_errors"].items())
            lines.append(("status.load_errors", {"errors": errors}))
        return lines_html(lang, lines, error=False)

    def loaded_models(self, server_url: str, api_key: str = "") -> list[LoadedModel]:
        """The server's loaded models ([] when it cannot be reached)."""
        try:
            return [LoadedModel.from_details(d) for d in self.client(server_url, api_key).list_models()]
        except (ClientError, KeyError, TypeError):
            return []

    def reads_phonemes(self, server_url: str, api_key: str, name: str) -> bool:
        """Whether the model `name` reads phonemes (v0.2: the input mode, speaker and language order apply to it,
        not to S1-mini); as if it did when the server does not say."""
        model = next((m for m in self.loaded_models(server_url, api_key) if m.name == name), None)
        return model is None or model.phonemes

    def invoke_request(self, server_url: str, api_key: str, form: SynthesisForm) -> tuple[dict, bytes | None, str]:
        """`invoke_request` for the model the form picks (the language order only where it reads phonemes)."""
        return invoke_request(form, phonemes=self.reads_phonemes(server_url, api_key, form.model))

    def loaded_model_form(self, server_url: str, api_key: str = "") -> ModelForm | None:
        """The form as the server's loaded 'default' bundle was loaded (its paths as the server shows
        them), so a later 'Load model' reloads the same files; None when there is none."""
        try:
            details = self.client(server_url, api_key).list_models()
        except ClientError:
            return None
        info = next((d for d in details if d.get("name") == MODEL_NAME), None)
        s1 = next((d for d in details if isinstance(d.get("s1"), dict)), None)
        if not info:
            return None
        llama, vqgan, form = info.get("llama", {}), info.get("vqgan", {}), ModelForm()
        if s1 is not None:
            form.s1_name, form.s1_folder = str(s1.get("name", form.s1_name)), s1["s1"].get("folder", form.s1_folder)
        return ModelForm(
            device=str(info.get("device", form.device)).split(":")[0],
            precision=info["precision"] if info.get("precision") in PRECISIONS else form.precision,
            compile=bool(info.get("compiled", False)),
            llama_checkpoint=llama.get("checkpoint_path", form.llama_checkpoint),
            llama_config=llama.get("config_name", form.llama_config),
            # The folder itself is shown as "checkpoints", a name the server does not resolve back; the
            # official repo id means the same files (`fishtts download` puts them there).
            tokenizer=form.tokenizer if llama.get("tokenizer") in (None, "checkpoints") else llama["tokenizer"],
            vqgan_checkpoint=vqgan.get("checkpoint_path", form.vqgan_checkpoint),
            vqgan_config=vqgan.get("config_name", form.vqgan_config),
            s1_name=form.s1_name,
            s1_folder=form.s1_folder,
        )

    # -- inference ------------------------------------------------------------------------------

    def preview(
        self, lang: str, server_url: str, api_key: str, form: SynthesisForm, shown: str = ""
    ) -> tuple[list[list], str | None]:
        """Rows (ID, text, language, phonemes) of exactly what the model will read, as the server's
        front end reads it: each piece of the text with the reference text in front (text mode: one
        row per piece, no phonemes), and the message: a failure, "" to clear the last preview's, or None to
        leave `shown` (the message box is the synthesis's too: typing wiped its "Synthesizing…")."""
        rows, message = self._preview(lang, server_url, api_key, form)
        return rows, replaced(message, shown, PREVIEW_ERROR)

    def _preview(self, lang: str, server_url: str, api_key: str, form: SynthesisForm) -> tuple[list[list], str]:
        if not (form.text or "").strip():
            return [], ""
        try:
            phonemes = self.reads_phonemes(server_url, api_key, form.model)
            fields, _, _ = invoke_request(form, need_reference=False, phonemes=phonemes)
            client = self.client(server_url, api_key)
            if not phonemes:  # S1-mini reads the text whole, as it is
                return [[0, form.text, "-", "-"]], ""
            if fields.get("reference_id") and fields.get("reference_text") is None:  # as the server: its transcript
                voice = next((v for v in client.list_voices() if v["id"] == fields["reference_id"]), {})
                fields["reference_text"] = voice.get("transcript")
            pieces = client.preview(fields)
        except (ClientError, UIError) as exc:
            return [], marked(PREVIEW_ERROR, failure_html(lang, "error.preview", exc))
        if form.mode != "phonemes":
            return [[i, piece["text"], "-", "-"] for i, piece in enumerate(pieces)], ""
        segments = [segment for piece in pieces for segment in piece["segments"]]
        return [[i, s["text"], s["language"], " ".join(s["phones"])] for i, s in enumerate(segments)], ""

    @staticmethod
    def working(lang: str) -> str:
        """The message while a synthesis runs."""
        return message_html(lang, "progress.synthesizing", error=False)

    def synthesize(
        self, lang: str, server_url: str, api_key: str, form: SynthesisForm, progress: Callable | None = None
    ) -> tuple[str | None, str | None, str]:
        """(result audio path, the same file for download, message)."""
        started = time.monotonic()
        try:
            fields, audio, filename = self.invoke_request(server_url, api_key, form)
            if progress is not None:
                progress(None, desc=t(lang, "progress.synthesizing"))
            result = self.client(server_url, api_key).invoke(form.model, fields, audio, filename)
        except (ClientError, UIError) as exc:
            return None, None, failure_html(lang, "error.inference", exc, form.model)
        return finished(lang, result.data, "." + form.output_format, started)

    def synthesize_stream(
        self, lang: str, server_url: str, api_key: str, form: SynthesisForm
    ) -> Iterator[tuple[bytes | None, str | None, str | None, str]]:
        """While generating: (the newest audio as WAV bytes, None, None, progress message); at the end
        (None, the whole audio as a WAV file, the same file, message)."""
        started = time.monotonic()
        pcm, carry = bytearray(), b""
        try:
            fields, audio, filename = self.invoke_request(server_url, api_key, form)
            stream = self.client(server_url, api_key).invoke_stream(form.model, fields, audio, filename)
            rate = stream.sample_rate
            for part in stream:
                part = carry + part
                whole = len(part) - len(part) % 2  # 16-bit samples may straddle two network reads
                part, carry = part[:whole], part[whole:]
                if not part:
                    continue
                pcm += part
                seconds = f"{len(pcm) / 2 / rate:.1f}"
                yield (
                    wav_bytes(part, rate),
                    None,
                    None,
                    message_html(lang, "progress.streaming", error=False, seconds=seconds),
                )
        except (ClientError, UIError) as exc:
            yield None, None, None, failure_html(lang, "error.inference", exc, form.model)
            return
        yield None, *finished(lang, wav_bytes(bytes(pcm), rate), ".wav", started)

    # -- saved voices ---------------------------------------------------------------------------

    def voice_choices(self, server_url: str, api_key: str = "") -> list[tuple[str, str]]:
        """(shown name, id) of the saved voices, after the 'none' entry; that entry alone if unreachable."""
        return self._voice_choices(server_url, api_key)[0]

    def _voice_choices(self, server_url: str, api_key: str) -> tuple[list[tuple[str, str]], ClientError | None]:
        """voice_choices, and why the server's list could not be read (None when it was)."""
        try:
            voices = self.client(server_url, api_key).list_voices()
        except ClientError as exc:
            return [("—", NO_VOICE)], exc
        voices = sorted(voices, key=lambda v: v.get("created_at", 0))
        names = [v["name"] for v in voices]
        # The name alone, unless two voices share it.
        shown = [(v["name"] if names.count(v["name"]) == 1 else f"{v['name']} ({v['id']})", v["id"]) for v in voices]
        return [("—", NO_VOICE), *shown], None

    def refresh_voices(
        self, lang: str, server_url: str, api_key: str, picked: str | None, shown: str = ""
    ) -> tuple[list[tuple[str, str]], str, str | None]:
        """'Refresh list': (the voice choices, the picked voice if still listed (`kept_voice`), the message: why
        the list could not be read (then "none" alone is listed), "" to clear an earlier such failure in `shown`,
        or None to leave `shown`)."""
        choices, error = self._voice_choices(server_url, api_key)
        message = "" if error is None else marked(VOICE_LIST_ERROR, failure_html(lang, "error.voice", error))
        return choices, kept_voice(choices, picked), replaced(message, shown, VOICE_LIST_ERROR)

    def select_voice(
        self, lang: str, server_url: str, api_key: str, voice_id: str
    ) -> tuple[str | None, str | None, str]:
        """(the voice's clip as a file, its transcript, message); (None, None, "") for 'none'."""
        if not voice_id:
            return None, None, ""
        try:
            client = self.client(server_url, api_key)
            voice = next((v for v in client.list_voices() if v["id"] == voice_id), None)
            if voice is None:  # (deleted by another client since the list was read)
                raise UIError("reference.voice_missing", voice=voice_id)
            clip = saved(client.get_voice_audio(voice_id), voice_id, ".wav")
        except (ClientError, UIError) as exc:
            return None, None, failure_html(lang, "error.voice", exc)
        return clip, voice["transcript"], ""

    def save_voice(
        self,
        lang: str,
        server_url: str,
        api_key: str,
        name: str,
        reference_audio: str | None,
        reference_text: str,
        model: str = MODEL_NAME,
    ) -> tuple[list[tuple[str, str]], str, str]:
        """(new voice choices, the new voice's id or None where it failed, message); `model` encodes the clip."""
        try:
            if not (name or "").strip():
                raise UIError("reference.need_name")
            audio, filename = read_reference(reference_audio)
            if not (reference_text or "").strip():
                raise UIError("reference.need_text")
            client = self.client(server_url, api_key)
            voice = client.create_voice(name.strip(), reference_text.strip(), audio, filename, model)
        except (ClientError, UIError) as exc:
            return self.voice_choices(server_url, api_key), None, failure_html(lang, "error.voice", exc, model)
        message = message_html(lang, "reference.saved", error=False, name=voice["name"])
        return self.voice_choices(server_url, api_key), voice["id"], message

    def delete_voice(
        self, lang: str, server_url: str, api_key: str, voice_id: str
    ) -> tuple[list[tuple[str, str]], str]:
        """(new voice choices, message)."""
        try:
            if not voice_id:
                raise UIError("reference.need_voice")
            client = self.client(server_url, api_key)
            name = next((v["name"] for v in client.list_voices() if v["id"] == voice_id), voice_id)
            client.delete_voice(voice_id)
        except (ClientError, UIError) as exc:
            return self.voice_choices(server_url, api_key), failure_html(lang, "error.voice", exc)
        return self.voice_choices(server_url, api_key), message_html(lang, "reference.deleted", error=False, name=name)


def marked(kind: str, message: str) -> str:
    """A failure's message, marked as of `kind` (PREVIEW_ERROR, VOICE_LIST_ERROR) for `replaced`."""
    return f'<div class="{kind}">{message}</div>'


def replaced(message: str, shown: str | None, kind: str) -> str | None:
    """What the message box shows after an action whose failures are marked `kind`: its failure; after its
    success ("") the box cleared only of its own earlier failure, else left as it is (None): the box is the
    synthesis's too, and typing had wiped its "Synthesizing…"."""
    return message if message or kind in (shown or "") else None


def kept_voice(choices: list[tuple[str, str]], picked: str | None) -> str:
    """The voice dropdown's value after its choices change: the picked voice while listed, else "none". (Gradio
    refuses a value its dropdown does not list before any handler runs, "Value: … is not in the list of
    choices", so every later event of the page failed.)"""
    return picked if picked in {value for _, value in choices} else NO_VOICE


def finished(lang: str, audio: bytes, suffix: str, started: float) -> tuple[str | None, str | None, str]:
    """(result file, the same file for download, "done in N s") for a synthesis's whole audio."""
    try:
        path = saved(audio, time.strftime("fishtts-%Y%m%d-%H%M%S"), suffix)
    except UIError as exc:
        return None, None, failure_html(lang, "error.inference", exc)
    return path, path, message_html(lang, "synthesis.done", error=False, elapsed=f"{time.monotonic() - started:.1f}")


def saved(data: bytes, stem: str, suffix: str) -> str:
    """write_temp, its failure a message (a full disk, a temporary folder another user owns): the page
    stayed on "Synthesizing…" with a bare "Error" badge."""
    try:
        return write_temp(data, stem, suffix)
    except OSError:
        log.warning("the web UI could not write its result file", exc_info=True)
        raise UIError("error.save_result") from None


# -- request building (pure) ---------------------------------------------------------------------


def language_order(form: SynthesisForm) -> str:
    order = [form.language_1, form.language_2, form.language_3]
    if len(set(order)) != len(order):
        raise UIError("languages.duplicate")
    return ",".join(order)


def reference_transcript(form: SynthesisForm) -> str | None:
    if not form.use_reference:
        return None
    return (form.reference_text or "").strip() or None


def read_reference(path: str | None) -> tuple[bytes, str]:
    if not path:
        raise UIError("reference.need_audio")
    try:
        return Path(path).read_bytes(), Path(path).name
    except OSError:
        raise UIError("error.read_audio") from None


def seed(value) -> int | None:
    """The seed field: 0 or empty, a random one (None); a negative one is refused here, in the page's language
    (the number box's own minimum was checked by Gradio, in English)."""
    if not value:
        return None
    if int(value) < 0:
        raise UIError("error.bad_seed")
    return int(value)


def invoke_request(
    form: SynthesisForm, need_reference: bool = True, phonemes: bool = True
) -> tuple[dict, bytes | None, str]:
    """The invoke fields (the original UI's, plus seed, format and the reference) and the clip
    (`need_reference=False`: the fields only, for the preview). The language order only for a model that reads
    phonemes (`phonemes`): S1-mini has no use for it, and the page hides it then."""
    if not (form.text or "").strip():
        raise UIError("error.empty_text")
    fields = {
        "text": form.text,
        "max_new_tokens": int(form.max_new_tokens or 0),
        "top_k": int(form.top_k) if form.top_k else None,
        "top_p": float(form.top_p),
        "repetition_penalty": float(form.repetition_penalty),
        "temperature": float(form.temperature),
        "use_g2p": form.mode == "phonemes",
        "seed": seed(form.seed),
        "speaker": (form.speaker or "").strip() or None,
        "format": form.output_format,
    }
    if phonemes:
        fields["order"] = language_order(form)
    audio, filename = None, "reference.wav"
    if form.use_reference:
        fields["reference_text"] = reference_transcript(form)
        if form.voice_id:
            fields["reference_id"] = form.voice_id  # its saved transcript is used when the box is empty
        elif need_reference:
            audio, filename = read_reference(form.reference_audio)
            if fields["reference_text"] is None:
                raise UIError("reference.need_text")
    return fields, audio, filename
