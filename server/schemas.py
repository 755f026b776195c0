"""Request and response bodies, with every bound a pydantic `Field` limit so /openapi.json shows it.

Defaults come from core (core/request.py, core/engine.py); the original's field names are kept
(SPEC-server §7.2). The text-length bound is a server setting (--max-text-length), checked by
`check_text_length` once the body is parsed; the schemas show its default.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from core.checkpoints import DEFAULT_CHECKPOINTS_DIR, DEFAULT_S1_DIR, LM_FILENAME, VQGAN_FILENAME
from core.engine import (
    DEFAULT_LM_CONFIG,
    DEFAULT_TOKENIZER,
    DEFAULT_VQGAN_CONFIG,
    DEVICE_NAMES,
    DEVICE_PATTERN,
    QUANT_MODES,
    VQGAN_PRECISIONS,
)
from core.request import (
    DEFAULT_ORDER,
    DEFAULT_SAMPLING,
    DEFAULT_TEXT,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_REPETITION_PENALTY,
    ORDER_PATTERN,
    OUTPUT_FORMATS,
    S1_DEFAULT_SAMPLING,
    SamplingParams,
    check_order,
    default_sampling,
)

from .settings import MAX_TEXT_LENGTH
from .voices import VOICE_ID_PATTERN

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_CONTEXT = 4096  # the official LM's context; the loaded model's own context is checked per request
MAX_PATH = 1024
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
V02_ONLY = "Fish Speech v0.2 only: S1-mini models read the text as it is and ignore it."
TEXT_LIMIT_MARK = "x-fishtts-text-limit"  # app.py's OpenAPI writes the server's --max-text-length there
TEXT_BOUND = {"min_length": 1, "json_schema_extra": {"maxLength": MAX_TEXT_LENGTH, TEXT_LIMIT_MARK: True}}


def check_text_length(body: BaseModel, limit: int) -> None:
    """The --max-text-length bound on the body's `TEXT_FIELDS`, reported like pydantic's own."""
    errors = [
        {
            "loc": ("body", name),
            "type": "string_too_long",
            "input": None,
            "msg": f"String should have at most {limit} characters",
        }
        for name in getattr(body, "TEXT_FIELDS", ())
        if len(getattr(body, name) or "") > limit
    ]
    if errors:
        raise RequestValidationError(errors)


# -- models -------------------------------------------------------------------------------------


class LlamaSpec(BaseModel):
    config_name: str = Field(
        DEFAULT_LM_CONFIG,
        min_length=1,
        max_length=MAX_PATH,
        description="A preset name or a .json file inside the checkpoints folder.",
    )
    checkpoint_path: str = Field(
        f"{DEFAULT_CHECKPOINTS_DIR}/{LM_FILENAME}",
        min_length=1,
        max_length=MAX_PATH,
        description="A file inside the checkpoints folder.",
    )
    precision: Literal["float16", "bfloat16", "float32"] | None = Field(
        None, description="Default bfloat16 (float16 with --half). CPU always computes in float32."
    )
    tokenizer: str = Field(
        DEFAULT_TOKENIZER,
        min_length=1,
        max_length=MAX_PATH,
        description="A folder (or tokenizer.json) inside the checkpoints folder, or a Hugging Face "
        "repo id: the official one is read from the checkpoints folder; others need "
        "--allow-downloads.",
    )
    compile: bool = Field(True, description="torch.compile the decode step; honoured only with --compile.")
    quantize: Literal[(*QUANT_MODES, "none")] | None = Field(
        None,
        description=(
            "int8 / int4: weights stored as int8 / int4 (faster decoding on CPU; approximate, see the README). "
            "Default: the server's --quantize."
        ),
    )


class VQGANSpec(BaseModel):
    config_name: str = Field(
        DEFAULT_VQGAN_CONFIG,
        min_length=1,
        max_length=MAX_PATH,
        description="A preset name or a .json file inside the checkpoints folder.",
    )
    checkpoint_path: str = Field(
        f"{DEFAULT_CHECKPOINTS_DIR}/{VQGAN_FILENAME}",
        min_length=1,
        max_length=MAX_PATH,
        description="A file inside the checkpoints folder.",
    )
    precision: Literal[VQGAN_PRECISIONS] | None = Field(
        None,
        description=(
            "Decode audio in bfloat16 (faster on CPUs with AMX / AVX512-BF16; see the README for its SNR); "
            "auto: bfloat16 where it measures clearly faster on the server's machine. "
            "Default: the server's --vqgan-precision."
        ),
    )


class S1Spec(BaseModel):
    """An OpenAudio S1-mini model: its folder as downloaded from Hugging Face."""

    folder: str = Field(
        ...,
        min_length=1,
        max_length=MAX_PATH,
        examples=[str(DEFAULT_S1_DIR)],
        description=(
            "The model's folder inside the checkpoints folder (e.g. 'openaudio-s1-mini'), laid out as the official "
            "repo: config.json, model.pth, codec.pth, tokenizer.tiktoken, special_tokens.json."
        ),
    )
    precision: Literal["float16", "bfloat16", "float32"] | None = Field(
        None, description="Default bfloat16 (float16 with --half). CPU always computes in float32."
    )
    quantize: Literal[(*QUANT_MODES, "none")] | None = Field(
        None, description="int8 / int4 weights for the LM (see the README). Default: the server's --quantize."
    )
    compile: bool = Field(True, description="torch.compile the decode step; honoured only with --compile.")
    codec_precision: Literal[VQGAN_PRECISIONS] | None = Field(
        None,
        description=(
            "The codec's decode precision: bfloat16 (on CPU ~1.9x faster with AMX; see the README for its SNR), "
            "float32, or auto (bfloat16 autocast on CUDA as the original, float32 on CPU). "
            "Default: the server's --vqgan-precision."
        ),
    )


class LoadModelRequest(BaseModel):
    """Fish Speech v0.2 files (`llama` + `vqgan`, the original's body), or an OpenAudio S1-mini folder (`s1`)."""

    device: str | None = Field(
        None,
        pattern=DEVICE_PATTERN,
        description=(
            f"{DEVICE_NAMES} (auto, or none: CUDA when available). --device on the server wins; 'cuda' on a "
            "machine without CUDA falls back to the CPU."
        ),
    )
    llama: LlamaSpec = Field(default_factory=LlamaSpec)
    vqgan: VQGANSpec = Field(default_factory=VQGANSpec)
    s1: S1Spec | None = Field(
        None,
        description=(
            "Load an OpenAudio S1-mini model (family 'openaudio-s1-mini') from its folder instead of the v0.2 "
            "files; `llama` and `vqgan` are then left out."
        ),
    )

    @model_validator(mode="after")
    def _one_family(self):
        if self.s1 is not None and {"llama", "vqgan"} & self.model_fields_set:
            raise ValueError("give s1 (an OpenAudio S1-mini folder) or llama and vqgan (Fish Speech v0.2), not both")
        return self


class LoadModelResponse(BaseModel):
    name: str
    device: str
    precision: str
    compiled: bool
    family: str = Field(..., description="The model family: 'fish-speech-v0.2' or 'openaudio-s1-mini'.")


class ModelList(BaseModel):
    models: list[str]
    details: list[dict] = []


class Message(BaseModel):
    message: str


class ErrorBody(BaseModel):
    statusCode: int
    message: str
    error: str
    requestId: str


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None
    request_id: str


class OpenAIErrorBody(BaseModel):
    """Errors on /v1/audio/speech, in OpenAI's shape."""

    error: OpenAIError


class G2PSegment(BaseModel):
    line: int
    text: str
    language: str
    phones: list[str]


class PromptPiece(BaseModel):
    text: str  # the piece of the text
    prompt: str  # exactly what the model reads for it
    segments: list[G2PSegment]  # its language runs and phones (line: the piece's index)


class G2PResponse(BaseModel):
    segments: list[G2PSegment]  # per non-blank line of `text` (the original UI's preview)
    prompts: list[PromptPiece]  # the pieces the engine synthesizes, as it reads them


class Voice(BaseModel):
    id: str
    name: str
    transcript: str
    duration_s: float
    frames: int
    model: str
    family: str = Field(
        ...,
        description=(
            "The model family whose codes the voice was saved with; a model of another family encodes its "
            "clip once more (and keeps those codes too)."
        ),
    )
    created_at: float


class VoiceList(BaseModel):
    references: list[Voice]


class Health(BaseModel):
    status: Literal["ok", "failed"]
    reason: str | None = Field(None, description="Why the status is 'failed' (then the answer is 503).")
    models: list[dict]
    loading: list[str]
    load_errors: dict[str, str] = {}
    queue: dict


SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")  # SamplingParams' fields


class SamplingFields(BaseModel):
    """Sampling fields; those a client leaves out take the loaded model family's defaults (the
    schema shows Fish Speech v0.2's; S1-mini's are its original's: temperature 0.8, top_p 0.8,
    repetition_penalty 1.1)."""

    # (NaN or Infinity in JSON: "a finite number", not "less than or equal to 10")
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    max_new_tokens: int = Field(
        0,
        ge=0,
        le=MAX_CONTEXT,
        description=(
            "Frames to generate at most (~21.5 per second of audio); 0 = until the model stops or its context is "
            "full. Must also fit the loaded model's context."
        ),
    )
    top_k: int | None = Field(DEFAULT_SAMPLING.top_k, ge=0, le=MAX_TOP_K, description="null or 0 = off.")
    top_p: float = Field(DEFAULT_SAMPLING.top_p, gt=0, le=1)
    repetition_penalty: float = Field(
        DEFAULT_SAMPLING.repetition_penalty,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        description="Divides (multiplies, when negative) the logits of the codes of the last 16 frames; 1 = off.",
    )
    temperature: float = Field(DEFAULT_SAMPLING.temperature, gt=0, le=MAX_TEMPERATURE)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="null = a fresh random seed.")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k or None,
            repetition_penalty=self.repetition_penalty,
        )

    def sampling_for(self, family: str) -> SamplingParams:
        """The fields the client sent, over the model family's own defaults for the others (a v0.2
        model: the schema's defaults, so `sampling`; S1-mini: its original's)."""
        sent = {name: getattr(self, name) for name in SAMPLING_FIELDS if name in self.model_fields_set}
        if "top_k" in sent:
            sent["top_k"] = sent["top_k"] or None
        return dataclasses.replace(default_sampling(family), **sent)


class InvokeRequest(SamplingFields):
    """The original's invoke body, plus uploads, saved voices and the output format."""

    TEXT_FIELDS: ClassVar = ("text", "prompt_text", "reference_text")
    FILE_FIELDS: ClassVar = ("reference_audio",)  # may come as file parts in multipart/form-data

    text: str = Field(DEFAULT_TEXT, **TEXT_BOUND)
    prompt_text: str | None = Field(None, description="Transcript of the reference.")
    prompt_tokens: str | None = Field(
        None,
        max_length=MAX_PATH,
        description=(
            "A .npy of codes [codebooks, T] (the model's) or an audio file (.wav/.flac/.ogg/.mp3) inside the "
            "references folder."
        ),
    )
    order: str = Field(DEFAULT_ORDER, pattern=ORDER_PATTERN, description=f"Language priority for g2p. {V02_ONLY}")
    use_g2p: bool = Field(True, description=f"Read the text as phonemes. {V02_ONLY}")
    speaker: str | None = Field(None, max_length=100, description=f"A speaker tag in the prompt. {V02_ONLY}")
    reference_audio: str | None = Field(
        None,
        description=(
            "Base64 audio bytes (any format soundfile reads), or a file part of that name in multipart/form-data."
        ),
    )
    reference_text: str | None = Field(None, description="Alias of prompt_text.")
    reference_id: str | None = Field(None, pattern=VOICE_ID_PATTERN, description="A saved voice's id.")
    format: Literal[OUTPUT_FORMATS] = "wav"
    streaming: bool = Field(
        False,
        description=(
            "Send the audio while it is generated (chunked transfer): wav (a header with its length fields set "
            "to 0xFFFFFFFF, then 16-bit PCM) or pcm. The samples equal the non-streamed response's."
        ),
    )

    _text_not_blank = field_validator("text")(lambda value: _not_blank(value))
    _order = field_validator("order")(lambda value: check_order(value))

    @model_validator(mode="after")
    def _one_reference(self):
        sources = ("prompt_tokens", "reference_audio", "reference_id")
        given = [n for n in sources if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of {', '.join(sources)} (got {', '.join(given)})")
        if None not in (self.prompt_text, self.reference_text) and self.prompt_text != self.reference_text:
            raise ValueError("prompt_text and reference_text differ; give one of them")
        return self

    @property
    def transcript(self) -> str | None:
        return self.reference_text if self.reference_text is not None else self.prompt_text


class SpeechRequest(SamplingFields):
    """OpenAI `audio.speech.create`; sampling fields may be added through `extra_body`."""

    TEXT_FIELDS: ClassVar = ("input",)

    model: str = Field(
        ...,
        min_length=1,
        max_length=64,
        description=("A loaded model name; tts-1, tts-1-hd and gpt-4o-mini-tts mean the model 'default'."),
    )
    input: str = Field(..., **TEXT_BOUND)
    voice: str = Field(
        ...,
        min_length=1,
        max_length=64,
        description='A saved voice id (POST /v1/references), or the SDK\'s custom-voice object {"id": ...}.',
    )
    response_format: Literal[OPENAI_FORMATS] = Field(
        "mp3",
        description=(
            "mp3, wav, flac or pcm (16-bit little-endian mono at the model's rate, the X-Sample-Rate header: 22050 "
            "Hz for v0.2, 44100 Hz for S1-mini); opus and aac are not supported."
        ),
    )
    speed: float = Field(
        1.0,
        ge=0.25,
        le=4.0,
        description="Accepted for compatibility; the model has no speed control, so it is not applied.",
    )
    instructions: str | None = Field(None, max_length=4096, description="Accepted and ignored.")
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description=("'audio': stream the audio as it is generated (pcm or wav); 'sse' is not supported.")
    )
    stream: bool = Field(False, description="Same as stream_format 'audio'.")

    _input_not_blank = field_validator("input")(lambda value: _not_blank(value))

    @field_validator("voice", mode="before")
    @classmethod
    def _voice_object(cls, value):
        """The OpenAI SDK names a custom voice as {"id": ...}: a saved voice is one."""
        if isinstance(value, dict) and set(value) == {"id"}:
            return value["id"]
        return value


class G2PRequest(BaseModel):
    """The phoneme preview: `text` read as the engine reads it (with the reference's transcript)."""

    TEXT_FIELDS: ClassVar = ("text", "reference_text")

    text: str = Field(..., **TEXT_BOUND)
    order: str = Field(DEFAULT_ORDER, pattern=ORDER_PATTERN)
    reference_text: str | None = Field(None, description="The reference's transcript, read before the text.")
    use_g2p: bool = True
    speaker: str | None = Field(None, max_length=100)

    _order = field_validator("order")(lambda value: check_order(value))
    _text_not_blank = field_validator("text")(lambda value: _not_blank(value))  # (as synthesis says it)


class TTSReference(BaseModel):
    audio: bytes | str = Field(
        ..., description="The clip (any format soundfile reads): bytes in msgpack, base64 in JSON (or in msgpack)."
    )
    text: str = Field(..., description="What the clip says.")


MAX_CODEC_ITEMS = 16  # clips or code arrays per /v1/vqgan call


class CodecEncodeRequest(BaseModel):
    """The original S1 server's `POST /v1/vqgan/encode` body (`ServeVQGANEncodeRequest`), JSON or msgpack."""

    FILE_FIELDS: ClassVar = ()
    MSGPACK: ClassVar = True

    audios: list[bytes | str] = Field(
        ...,
        min_length=1,
        max_length=MAX_CODEC_ITEMS,
        description="Clips (any format soundfile reads): bytes in msgpack, base64 in JSON. Each at most "
        "--max-reference-seconds long.",
    )
    model: str = Field("default", pattern=MODEL_NAME_PATTERN, description="The loaded model whose codec encodes.")


class CodecDecodeRequest(BaseModel):
    """The original S1 server's `POST /v1/vqgan/decode` body (`ServeVQGANDecodeRequest`), JSON or msgpack."""

    FILE_FIELDS: ClassVar = ()
    MSGPACK: ClassVar = True

    tokens: list[list[list[int]]] = Field(
        ...,
        min_length=1,
        max_length=MAX_CODEC_ITEMS,
        description="Code arrays [codebooks, T], each at most the model's context in frames.",
    )
    model: str = Field("default", pattern=MODEL_NAME_PATTERN, description="The loaded model whose codec decodes.")

    @field_validator("tokens", mode="before")
    @classmethod
    def _first_bad_code(cls, tokens: object) -> object:
        """One error for an array of many values that are not codes, not one each: a body holds millions, and
        pydantic's list of them took seconds of the event loop and gigabytes."""
        rows = [
            (f"tokens.{i}.{j}", row)
            for i, codes in enumerate(tokens if isinstance(tokens, list) and len(tokens) <= MAX_CODEC_ITEMS else ())
            for j, row in enumerate(codes if isinstance(codes, list) else ())
            if isinstance(row, list) and not set(map(type, row)) <= {int}  # (in C: plain ints pass at once)
        ]  # (what is not a list here gets pydantic's own message)
        for where, row in rows:
            if (k := next((k for k, x in enumerate(row) if not _lax_int(x)), None)) is not None:
                raise ValueError(f"the value at {where}.{k} is not an integer")
        return tokens


_LAX_INT = TypeAdapter(int)  # what the field's own int accepts (1.0 and "1" too)


def _lax_int(value: object) -> bool:
    try:
        _LAX_INT.validate_python(value)
    except ValidationError:
        return False
    return True


REFERENCE_ID_NOTE = "Lower-case letters, digits, '-' and '_' (the original also allowed capitals and spaces)."


class ReferenceAdd(BaseModel):
    """The original S1 server's `POST /v1/references/add` (multipart with a file part `audio`, msgpack
    with bytes, or JSON with base64)."""

    TEXT_FIELDS: ClassVar = ("text",)
    FILE_FIELDS: ClassVar = ("audio",)
    REQUIRED_FILES: ClassVar = ("audio",)
    MSGPACK: ClassVar = True

    id: str = Field(..., pattern=VOICE_ID_PATTERN, description=f"The voice's id. {REFERENCE_ID_NOTE}")
    audio: bytes | str | None = Field(None, description="The clip: bytes in msgpack, base64 in JSON, a file part.")
    text: str = Field(..., **TEXT_BOUND, description="What the clip says.")
    model: str = Field("default", pattern=MODEL_NAME_PATTERN, description="The model that encodes it (an addition).")

    _text_not_blank = field_validator("text")(lambda value: _not_blank(value))


class ReferenceDelete(BaseModel):
    FILE_FIELDS: ClassVar = ()
    MSGPACK: ClassVar = True

    reference_id: str = Field(..., pattern=VOICE_ID_PATTERN)


class ReferenceUpdate(BaseModel):
    FILE_FIELDS: ClassVar = ()
    MSGPACK: ClassVar = True

    old_reference_id: str = Field(..., pattern=VOICE_ID_PATTERN)
    new_reference_id: str = Field(..., pattern=VOICE_ID_PATTERN, description=REFERENCE_ID_NOTE)


class TTSRequest(SamplingFields):
    """The original fish-speech server's `ServeTTSRequest` (its `POST /v1/tts`), so its clients work
    unchanged; sent as JSON or msgpack. Its defaults are the original's; fields it has that are not
    listed here (e.g. `latency`) are accepted and ignored."""

    TEXT_FIELDS: ClassVar = ("text",)
    FILE_FIELDS: ClassVar = ()
    MSGPACK: ClassVar = True  # the original client (ormsgpack) sends application/msgpack

    text: str = Field(..., **TEXT_BOUND)
    references: list[TTSReference] = Field(
        [], description="Inline reference clips with their transcripts (at most one here)."
    )
    reference_id: str | None = Field(
        None, max_length=255, description="A saved voice's id (POST /v1/references); wins over `references`."
    )
    format: Literal[OUTPUT_FORMATS] = Field(
        "wav",
        description=(
            "The file format. Streamed audio is raw 16-bit little-endian mono PCM at the model's rate "
            "(X-Sample-Rate) for wav and pcm alike: what the original sends (its WAV header never went out)."
        ),
    )
    streaming: bool = Field(False, description="Send the audio while it is generated (format wav or pcm).")
    max_new_tokens: int = Field(
        1024, ge=0, le=MAX_CONTEXT, description="Frames to generate at most (the original's default); 0 = no limit."
    )
    # The original's defaults, S1-mini's (a v0.2 model takes its own for the fields left out: sampling_for)
    top_p: float = Field(S1_DEFAULT_SAMPLING.top_p, gt=0, le=1)
    repetition_penalty: float = Field(
        S1_DEFAULT_SAMPLING.repetition_penalty, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY
    )
    temperature: float = Field(S1_DEFAULT_SAMPLING.temperature, gt=0, le=MAX_TEMPERATURE)
    chunk_length: int = Field(200, ge=100, le=1000, description="Accepted; not used (nor by the original).")
    normalize: bool = Field(True, description="Accepted; not used (nor by the original).")
    use_memory_cache: Literal["on", "off"] = Field(
        "off", description="Accepted; saved voices' codes are always kept, inline clips are encoded per request."
    )
    model: str = Field("default", pattern=MODEL_NAME_PATTERN, description="The loaded model to use (an addition).")

    _text_not_blank = field_validator("text")(lambda value: _not_blank(value))

    @field_validator("references", mode="before")  # (before each item is validated: a body holds millions)
    @classmethod
    def _one_reference(cls, references: object) -> object:
        if isinstance(references, list) and len(references) > 1:
            raise ValueError(f"at most one reference clip is supported here (got {len(references)})")
        return references


class VoiceCreate(BaseModel):
    """A saved voice: the audio is encoded once with `model`'s VQGAN and its codes kept."""

    TEXT_FIELDS: ClassVar = ("transcript",)
    FILE_FIELDS: ClassVar = ("audio",)
    REQUIRED_FILES: ClassVar = ("audio",)  # base64 in JSON or a file part: one of them

    name: str = Field(..., min_length=1, max_length=100)
    transcript: str = Field(..., **TEXT_BOUND)
    audio: str | None = Field(None, description="Base64 audio bytes, or a file part `audio` in multipart.")
    id: str | None = Field(None, pattern=VOICE_ID_PATTERN, description="Default: derived from the name.")
    model: str = Field("default", pattern=MODEL_NAME_PATTERN, description="The bundle that encodes the clip.")

    _name_not_blank = field_validator("name", "transcript")(lambda value: _not_blank(value))


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value
