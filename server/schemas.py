"""Request and response bodies, with every bound a pydantic `Field` limit so /openapi.json shows it.

The text-length bound is a server setting, so the request models are built per app by
`make_schemas(settings)`; the original's field names and defaults are kept (SPEC-server §7.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.engine import DEFAULT_LLAMA_CONFIG, DEFAULT_TOKENIZER, DEFAULT_VQGAN_CONFIG

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VOICE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]{1,2})?)$"
ORDER_PATTERN = r"^(zh|jp|en)(,(zh|jp|en)){0,2}$"
MAX_CONTEXT = 4096  # the official LM's context; the loaded model's own context is checked per request
MAX_PATH = 1024
DEFAULT_TEXT = "你说的对, 但是原神是一款由米哈游自主研发的开放世界手游."
AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg", "pcm")  # pcm: raw 16-bit little-endian mono
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


def check_order(order: str) -> str:
    languages = order.split(",")
    if len(set(languages)) != len(languages):
        raise ValueError("languages in order must not repeat")
    return order


# -- models -------------------------------------------------------------------------------------


class LlamaSpec(BaseModel):
    config_name: str = Field(DEFAULT_LLAMA_CONFIG, min_length=1, max_length=MAX_PATH,
                             description="A preset name or a .json file inside the checkpoints folder.")
    checkpoint_path: str = Field("checkpoints/text2semantic-400m-v0.2-4k.pth", min_length=1, max_length=MAX_PATH,
                                 description="A file inside the checkpoints folder.")
    precision: Literal["float16", "bfloat16", "float32"] | None = Field(
        None, description="Default bfloat16 (float16 with --half). CPU always computes in float32.")
    tokenizer: str = Field(DEFAULT_TOKENIZER, min_length=1, max_length=MAX_PATH,
                           description="A folder (or tokenizer.json) inside the checkpoints folder, or a Hugging Face "
                                       "repo id: the official one is read from the checkpoints folder; others need "
                                       "--allow-downloads.")
    compile: bool = Field(True, description="torch.compile the decode step; honoured only with --compile.")
    quantize: Literal["int8", "int4", "none"] | None = Field(None, description=(
        "int8: weights stored as int8 (~3x faster decoding on CPU; logits within ~1% of float32); int4: faster "
        "still, less exact (see the README). Default: the server's --quantize."))


class VQGANSpec(BaseModel):
    config_name: str = Field(DEFAULT_VQGAN_CONFIG, min_length=1, max_length=MAX_PATH,
                             description="A preset name or a .json file inside the checkpoints folder.")
    checkpoint_path: str = Field("checkpoints/vqgan-v1.pth", min_length=1, max_length=MAX_PATH,
                                 description="A file inside the checkpoints folder.")
    precision: Literal["float32", "bfloat16"] | None = Field(None, description=(
        "Decode audio in bfloat16 (faster on CPUs with AMX / AVX512-BF16). Default: the server's --vqgan-precision."))


class LoadModelRequest(BaseModel):
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description=(
        "cpu, cuda or cuda:N. --device on the server wins; 'cuda' on a machine without CUDA falls back to the CPU."))
    llama: LlamaSpec = Field(default_factory=LlamaSpec)
    vqgan: VQGANSpec = Field(default_factory=VQGANSpec)


class LoadModelResponse(BaseModel):
    name: str
    device: str
    precision: str
    compiled: bool


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


class G2PSegment(BaseModel):
    line: int
    text: str
    language: str
    phones: list[str]


class G2PResponse(BaseModel):
    segments: list[G2PSegment]


class Voice(BaseModel):
    id: str
    name: str
    transcript: str
    duration_s: float
    frames: int
    model: str
    created_at: float


class VoiceList(BaseModel):
    references: list[Voice]


class Health(BaseModel):
    status: Literal["ok"]
    models: list[dict]
    loading: list[str]
    load_errors: dict[str, str] = {}
    queue: dict


@dataclass(frozen=True)
class Schemas:
    InvokeRequest: type[BaseModel]
    SpeechRequest: type[BaseModel]
    G2PRequest: type[BaseModel]
    VoiceCreate: type[BaseModel]


def make_schemas(max_text_length: int) -> Schemas:
    """The request models whose bounds depend on the server's settings."""
    text_field = dict(min_length=1, max_length=max_text_length)

    class SamplingFields(BaseModel):
        model_config = ConfigDict(extra="ignore")

        max_new_tokens: int = Field(0, ge=0, le=MAX_CONTEXT, description=(
            "Frames to generate at most (~21.5 per second of audio); 0 = until the model stops or its context is "
            "full. Must also fit the loaded model's context."))
        top_k: int | None = Field(None, ge=0, le=1000, description="null or 0 = off.")
        top_p: float = Field(0.5, gt=0, le=1)
        repetition_penalty: float = Field(1.5, gt=0, le=10)
        temperature: float = Field(0.7, gt=0, le=10)
        seed: int | None = Field(None, ge=0, le=2**63 - 1, description="null = a fresh random seed.")

    class InvokeRequest(SamplingFields):
        """The original's invoke body, plus uploads, saved voices and the output format."""

        text: str = Field(DEFAULT_TEXT, **text_field)
        prompt_text: str | None = Field(None, max_length=max_text_length, description="Transcript of the reference.")
        prompt_tokens: str | None = Field(None, max_length=MAX_PATH, description=(
            "A .npy of codes [4, T] or an audio file (.wav/.flac/.ogg/.mp3) inside the references folder."))
        order: str = Field("zh,jp,en", pattern=ORDER_PATTERN)
        use_g2p: bool = True
        speaker: str | None = Field(None, max_length=100)
        reference_audio: str | None = Field(None, description=(
            "Base64 audio bytes (any format soundfile reads), or a file part of that name in multipart/form-data."))
        reference_text: str | None = Field(None, max_length=max_text_length, description="Alias of prompt_text.")
        reference_id: str | None = Field(None, pattern=VOICE_ID_PATTERN, description="A saved voice's id.")
        format: Literal[AUDIO_FORMATS] = "wav"
        streaming: bool = Field(False, description=(
            "Send the audio while it is generated (chunked transfer): wav (a header with its length fields set "
            "to 0xFFFFFFFF, then 16-bit PCM) or pcm. The samples equal the non-streamed response's."))

        _text_not_blank = field_validator("text")(_not_blank)
        _order = field_validator("order")(check_order)

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

        model: str = Field(..., min_length=1, max_length=64, description=(
            "A loaded model name; tts-1, tts-1-hd and gpt-4o-mini-tts mean the model 'default'."))
        input: str = Field(..., **text_field)
        voice: str = Field(..., min_length=1, max_length=64, description="A saved voice id (POST /v1/references).")
        response_format: Literal[OPENAI_FORMATS] = Field("mp3", description="mp3, wav, flac or pcm (16-bit "
                                                                           "little-endian mono at 22050 Hz); opus "
                                                                           "and aac are not supported.")
        speed: float = Field(1.0, ge=0.25, le=4.0, description="Accepted for compatibility; the model has no speed "
                                                               "control, so it is not applied.")
        instructions: str | None = Field(None, max_length=4096, description="Accepted and ignored.")
        stream_format: Literal["audio", "sse"] | None = Field(None, description=(
            "'audio': stream the audio as it is generated (pcm or wav); 'sse' is not supported."))
        stream: bool = Field(False, description="Same as stream_format 'audio'.")

        _input_not_blank = field_validator("input")(_not_blank)

    class G2PRequest(BaseModel):
        text: str = Field(..., **text_field)
        order: str = Field("zh,jp,en", pattern=ORDER_PATTERN)

        _order = field_validator("order")(check_order)

    class VoiceCreate(BaseModel):
        """A saved voice: the audio is encoded once with `model`'s VQGAN and its codes kept."""

        name: str = Field(..., min_length=1, max_length=100)
        transcript: str = Field(..., **text_field)
        audio: str | None = Field(None, description="Base64 audio bytes, or a file part `audio` in multipart.")
        id: str | None = Field(None, pattern=VOICE_ID_PATTERN, description="Default: derived from the name.")
        model: str = Field("default", pattern=MODEL_NAME_PATTERN, description="The bundle that encodes the clip.")

        _name_not_blank = field_validator("name", "transcript")(_not_blank)

    return Schemas(InvokeRequest, SpeechRequest, G2PRequest, VoiceCreate)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value
