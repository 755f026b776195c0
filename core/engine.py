"""TTSEngine: the one door the CLI, the server and the benchmark go through.

Load once; `info` says what callers may need to know (rates, context, precision, capabilities);
`stream` / `synthesize` turn a `SynthesisRequest` (core/request.py) into audio; `generate_codes`
stops at the codes (the original's `generate` step). An engine can be shared between threads: its
scheduler batches their generations (core/scheduler.py).
"""

from __future__ import annotations

import functools
import itertools
import logging
import numbers
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from .audio import SAMPLE_RATE, input_samples
from .checkpoints import DEFAULT_CHECKPOINTS_DIR, HF_REPO_ID, LM_FILENAME, VQGAN_FILENAME, require_checkpoint
from .device import DEVICE_NAMES, DEVICE_PATTERN, lm_dtype, release_openmp_threads, resolve_device
from .families import FAMILIES, FISH_SPEECH_V02, OPENAUDIO_S1_MINI, ModelFamily
from .families.fish_speech import FishSpeech
from .families.openaudio import OpenAudioS1
from .frontend import PromptText, warm_up_g2p
from .lm import load_lm, load_tokenizer
from .lm.compile import uses_static_cache
from .lm.config import PRESETS as LM_PRESETS
from .lm.quantize import QUANT_MODES
from .lm.tokenizer import resolve_tokenizer_dir
from .reference import prepare_reference
from .request import SynthesisRequest
from .scheduler import Cancelled, Job, Scheduler, SchedulerFailed
from .speech import SpeechStream
from .text.split import MAX_SEGMENT_WEIGHT
from .vqgan import DEFAULT_VQGAN_PRECISION, VQGAN_PRECISIONS, load_vqgan
from .vqgan.config import PRESETS as VQGAN_PRESETS

FAMILY = FISH_SPEECH_V02  # what `load` loads
S1_FAMILY = OPENAUDIO_S1_MINI  # what `load_s1` loads
DEFAULT_LM_CHECKPOINT = str(DEFAULT_CHECKPOINTS_DIR / LM_FILENAME)
DEFAULT_VQGAN_CHECKPOINT = str(DEFAULT_CHECKPOINTS_DIR / VQGAN_FILENAME)
DEFAULT_LM_CONFIG = "text2semantic_finetune"
DEFAULT_VQGAN_CONFIG = "vqgan_pretrain"
DEFAULT_TOKENIZER = HF_REPO_ID
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    """What callers may know about a loaded engine, without reaching into its models."""

    family: str  # the model family (core/families): FAMILY or S1_FAMILY
    device: str
    precision: str | None  # the LM's weight dtype (None: no LM)
    quantize: str  # "none", "int8" or "int4"
    compiled: bool
    max_batch_size: int  # sequences decoded together
    context: int | None  # the LM's context in positions (prompt + generated frames)
    num_codebooks: int | None
    codebook_size: int | None  # codes the codec can decode (None: no codec loaded)
    sample_rate: int  # of the audio it reads and writes
    frame_rate: float | None  # codec frames per second of audio
    vqgan_precision: str | None = None  # the codec's decode dtype (None: no codec loaded)
    lm_paths: dict = field(default_factory=dict)  # per weight format, the decode/prefill code chosen at load
    phonemes: bool = True  # g2p, the language order and speaker tags apply to its prompts


def sample_generators(device: torch.device, seed: int | None, count: int) -> list[torch.Generator]:
    """One random stream per sample: seed, seed + 1, ... (sample 0 is what a single run with `seed` gives)."""
    generators = []
    for i in range(count):
        generator = torch.Generator(device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed + i)
        generators.append(generator)
    return generators


MAX_BATCH_SIZE = 256  # far past what a step gains from (2 vCPUs: 8; an H200: 16); more is a typo's cache


def default_max_batch(device: torch.device, lm=None) -> int:
    """Sequences decoded together. CPU: 8 (a step for 8 costs ~2x one; cache memory is committed only
    as positions fill). CUDA: up to 16, as many full-context KV caches as fit in half the free memory."""
    if device.type != "cuda" or lm is None:
        return 8
    cfg = lm.config
    dtype = getattr(lm, "kv_cache_dtype", None) or lm.embeddings.weight.dtype
    per_slot = 2 * cfg.n_layer * cfg.n_local_heads * cfg.max_seq_len * cfg.head_dim * dtype.itemsize
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(16, int(0.5 * free // per_slot)))


class TTSEngine:
    """Text -> codes -> audio for one loaded model family (core/families). With an LM, all model work
    runs on one scheduler thread that batches the decode steps of concurrent requests
    (core/scheduler.py); without one (a codec only), calls run directly under a lock."""

    def __init__(
        self,
        *,
        lm=None,
        tokenizer=None,
        vqgan=None,
        device: torch.device | str = "cpu",
        compile: bool = False,
        max_batch_size: int | None = None,
        family: ModelFamily | None = None,
    ):
        """A v0.2 engine from its parts, or any `family` (then lm/tokenizer/vqgan are not given)."""
        self.family = family or FishSpeech(lm, tokenizer, vqgan)
        self.lm = self.family.lm
        self.device = torch.device(device)
        self.compile = compile
        if max_batch_size is not None and (
            isinstance(max_batch_size, bool)
            or not isinstance(max_batch_size, numbers.Integral)
            or not 0 <= max_batch_size <= MAX_BATCH_SIZE
        ):
            raise ValueError(f"max_batch_size must be from 1 to {MAX_BATCH_SIZE} (0: sized to the device)")
        self.max_batch_size = max_batch_size or default_max_batch(self.device, self.lm)
        self.lock = threading.RLock()
        self._scheduler: Scheduler | None = None
        self._closed = False  # (close() is final: work after it fails instead of starting a new scheduler)
        # Model work runs on the scheduler thread from now on: the OpenMP workers of the thread that
        # loaded the models (this one) would only slow the scheduler's (core/device.py).
        release_openmp_threads()

    @classmethod
    def load(
        cls,
        *,
        lm_checkpoint: str | os.PathLike | None = DEFAULT_LM_CHECKPOINT,
        lm_config: str = DEFAULT_LM_CONFIG,
        tokenizer: str | os.PathLike = DEFAULT_TOKENIZER,
        vqgan_checkpoint: str | os.PathLike | None = DEFAULT_VQGAN_CHECKPOINT,
        vqgan_config: str = DEFAULT_VQGAN_CONFIG,
        device: str | None = None,
        half: bool = False,
        precision: str | None = None,
        compile: bool = False,
        quantize: str | None = None,
        max_batch_size: int | None = None,
        vqgan_precision: str = DEFAULT_VQGAN_PRECISION,
    ) -> TTSEngine:
        """Load the Fish Speech v0.2 parts whose checkpoint is given (None skips the LM or the VQGAN).

        `quantize="int8"` / `"int4"` stores the LM's linears as int8 / int4 (~4x / ~6x less to read per
        token than float32 on CPU). `vqgan_precision="bfloat16"` decodes audio in bfloat16; "auto" (the
        default) where that is measured faster on this machine (core/vqgan/precision.py).
        """
        dev = resolve_device(device)
        for path in (lm_checkpoint, vqgan_checkpoint):  # a missing one named first, before the tokenizer's search
            if path is not None:
                require_checkpoint(path)
        lm = tok = vqgan = None
        if lm_checkpoint is not None:
            tok = load_tokenizer(tokenizer, checkpoints_dir=os.path.dirname(str(lm_checkpoint)) or ".")
            lm = load_lm(lm_checkpoint, lm_config, device=dev, dtype=lm_dtype(dev, half, precision), quantize=quantize)
        if vqgan_checkpoint is not None:
            vqgan = load_vqgan(vqgan_checkpoint, vqgan_config, device=dev, precision=vqgan_precision)
        engine = cls(lm=lm, tokenizer=tok, vqgan=vqgan, device=dev, compile=compile, max_batch_size=max_batch_size)
        if compile and lm is not None:
            engine._compile_decode()
        return engine

    @classmethod
    def load_s1(
        cls,
        folder: str | os.PathLike,
        *,
        device: str | None = None,
        precision: str | None = None,
        quantize: str | None = None,
        compile: bool = False,
        max_batch_size: int | None = None,
        vqgan_precision: str = DEFAULT_VQGAN_PRECISION,
    ) -> TTSEngine:
        """Load an OpenAudio S1-mini folder as downloaded (config.json, model.pth, codec.pth,
        tokenizer.tiktoken, special_tokens.json). `compile` captures the decode in CUDA graphs on a GPU
        (core/s1/compile.py, here at load); the CPU decode runs its fused kernels either way.
        `vqgan_precision`: the codec's decode precision (core/s1/pipeline.py says what each does)."""
        family = OpenAudioS1.load(
            folder, device=device, precision=precision, quantize=quantize, codec_precision=vqgan_precision
        )
        engine = cls(family=family, device=family.model.device, compile=compile, max_batch_size=max_batch_size)
        if compile:
            engine._compile_decode()
        elif engine.device.type == "cuda":
            log.info(
                "S1-mini decodes op by op on CUDA, bound by launching ~7,100 ops a frame (an H200: ~10 "
                "frames/s, half real time); compile (the server's --compile) captures it in CUDA graphs"
            )
        return engine

    # -- what callers may know -------------------------------------------------------------

    @functools.cached_property
    def info(self) -> EngineInfo:
        """Fixed once loaded, so built once: request paths read it (sample rate, codebook size)."""
        return EngineInfo(
            family=self.family.name,
            device=str(self.device),
            compiled=self.compile,
            max_batch_size=self.max_batch_size,
            phonemes=self.family.phonemes,
            **self.family.describe(),
        )

    @property
    def lm_paths(self) -> dict[str, dict[str, str]]:
        """The code computing the LM's linears per weight format, {"int8": {"decode": ..., "prefill": ...}}
        (core/lm/paths.py, chosen at load by core/lm/autotune.py); {} without an LM or off the CPU."""
        return self.info.lm_paths

    # -- parts -----------------------------------------------------------------------------

    def _need_lm(self):
        if self.lm is None:
            raise RuntimeError("this engine was loaded without the lm")
        return self.lm

    def _need_codec(self):
        if not self.family.has_codec:
            raise RuntimeError("this engine was loaded without the vqgan")

    @property
    def scheduler(self) -> Scheduler:
        """The thread that owns the LM (started on first use)."""
        lm = self._need_lm()
        with self.lock:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            if self._scheduler is None:
                static = self.compile and uses_static_cache(lm)  # CUDA graphs want one batch shape
                self._scheduler = Scheduler(self.family.stepper(), self.max_batch_size, static=static)
            return self._scheduler

    @property
    def failure(self) -> BaseException | None:
        """Why this engine's scheduler thread died, if it did: it then refuses all work (load anew)."""
        scheduler = self._scheduler
        return None if scheduler is None else scheduler.failure

    def _compile_decode(self) -> None:
        """The family's compiled decode, made at load on the scheduler's thread, which replays it (torch
        keeps CUDA graph trees per thread); where it fails or does not apply, this engine decodes eagerly."""
        self.compile = self._model_call(lambda: self.family.compile_decode(self.max_batch_size))
        if not self.compile:
            self._stop_scheduler()  # (it steps for CUDA graphs; the next one is made as usual)

    def _model_call(self, fn: Callable[[], T]) -> T:
        """Run model work where it does not compete with the scheduler for the cores."""
        if self.lm is not None:
            return self.scheduler.run(fn)
        with self.lock, torch.inference_mode():
            if self._closed:  # (a codec-only engine: close() is final for it too)
                raise RuntimeError("the model was unloaded")
            return fn()

    def close(self) -> None:
        """Stop the scheduler thread (requests still in it fail, later ones too); the engine can be dropped
        after. An engine dropped without it keeps its thread and, through it, its model."""
        with self.lock:
            self._closed = True
        self._stop_scheduler()

    def __enter__(self) -> TTSEngine:
        return self

    def __exit__(self, *exc_info) -> None:  # `with TTSEngine.load(...) as engine:` closes it at the end
        self.close()

    def _stop_scheduler(self) -> None:
        with self.lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()

    # -- audio <-> codes -------------------------------------------------------------------

    def encode_reference(self, audio: np.ndarray, stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Mono float32 audio at the codec's rate -> codes [codebooks, T] int64. Beside an LM, a codec that
        encodes chunk by chunk (S1's) does so one scheduler task per chunk, as `decode_codes` decodes, and
        `stop()` true before a chunk: Cancelled."""
        self._need_codec()
        audio = input_samples(audio, "audio")
        encoder = self.family.chunk_encoder(audio) if self.lm is not None else None
        if encoder is None:
            return self._model_call(lambda: self.family.encode(audio))
        for chunk in itertools.count():
            if encoder.done:
                return encoder.codes.numpy().astype(np.int64)
            if stop is not None and stop():
                raise Cancelled()
            self.scheduler.run(encoder.step, priority=chunk)  # (priority: as `decode_codes`)

    def decode_codes(self, codes: np.ndarray | torch.Tensor, stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Codes [codebooks, T] -> mono float32 audio at the codec's rate, whole. Beside an LM, decoded in
        the codec's chunks for whole audio (as `synthesize`), one scheduler task each, so a long decode
        holds up the generations in progress by one chunk at a time, not by all of it; the chunks join to
        the one-piece decode within float rounding. `stop()` true before a chunk: Cancelled."""
        self._need_codec()
        codes = torch.as_tensor(_integer_array(codes))
        if codes.dim() > 2:  # (S1's codec takes a batch, and the engine would have decoded its first item alone)
            raise ValueError(f"codes must be [codebooks, T], got shape {tuple(codes.shape)}")
        if self.lm is None or codes.dim() == 0 or codes.shape[-1] == 0:  # (empty: the codec's own refusal)
            return self._model_call(lambda: self.family.decode(codes))
        decoder = self.family.chunk_decoder(streamed=False)

        def next_chunk(first: bool) -> list[np.ndarray]:
            if first:
                decoder.push(codes)  # (checks them, on the model's thread like every torch op here)
            return decoder.chunks(final=True, limit=1)

        chunks: list[np.ndarray] = []
        while not chunks or not decoder.done:
            if stop is not None and stop():
                raise Cancelled()
            # Chunk k runs at priority k, as a stream's segment k decodes (lower first): a stream's segment i
            # waits for at most i + 1 chunks of a codec request, and a long request still makes its way.
            chunk = self.scheduler.run(functools.partial(next_chunk, not chunks), priority=len(chunks))
            if not chunk:  # (final codes always give one: no loop that never ends)
                raise RuntimeError("the codec's decoder returned no audio for its codes")
            chunks += chunk
        return np.concatenate(chunks)

    # -- text -> codes ---------------------------------------------------------------------

    def _check(self, request: SynthesisRequest, stop: Callable[[], bool] | None = None) -> np.ndarray | None:
        """Request limits that depend on the model; the reference's codes (`stop`: as `encode_reference`)."""
        context = self.info.context
        if context is None:
            self._need_lm()
        if request.max_frames > context:
            raise ValueError(f"max_new_tokens: {request.max_frames} exceeds the model's context of {context}.")
        if request.reference is None:
            return None
        return prepare_reference(self, request.reference, stop).codes

    def encode_prompt(self, request: SynthesisRequest) -> torch.Tensor:
        """The LM's input [1 + codebooks, L (+ T)] for the request's whole text as one prompt."""
        return self.family.prompt(self.family.whole_piece(request), request, self._check(request))

    def _sequences(
        self, request: SynthesisRequest, prompt: torch.Tensor, count: int, seed: int | None, ignore_stop: bool
    ) -> list:
        generators = sample_generators(self.device, seed, count)
        return self.family.sequences(request, prompt, generators, ignore_stop)

    def generate_codes(
        self,
        request: SynthesisRequest,
        *,
        num_samples: int = 1,
        prompt: torch.Tensor | None = None,
        progress: Callable[[], None] | None = None,
        ignore_stop: bool = False,
    ) -> list[np.ndarray]:
        """Codes [codebooks, n] per sample for the whole text as one prompt (`encode_prompt`'s, unless
        given; the samples decode as one batch); v0.2: dtype int32, or int64 with int64 reference codes
        (as the original). `progress` is called once per step; `ignore_stop` (benchmarks: random weights
        stop anywhere) runs the whole budget."""
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if num_samples > self.max_batch_size:
            raise ValueError(f"num_samples is {num_samples}; at most {self.max_batch_size} run as one batch")
        self.scheduler.refuse_own_thread()
        if prompt is None:
            prompt = self.encode_prompt(request)
        sequences = self._sequences(request, prompt, num_samples, request.seed, ignore_stop)
        done = threading.Event()
        errors: list[BaseException] = []

        def on_frame(index: int, _frame) -> None:
            if index == 0 and progress is not None:
                progress()

        def on_done(error) -> None:
            if error is not None:
                errors.append(error)
            done.set()

        owner = object()
        self.scheduler.submit(Job(sequences, on_frame, on_done, owner))
        try:
            done.wait()
        except BaseException:  # e.g. Ctrl-C: free the slots
            self.scheduler.cancel(owner)
            raise
        if errors:
            raise errors[0]
        return [self.family.codes(seq, prompt) for seq in sequences]

    # -- everything ------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Load now what a first request would wait for: the g2p's dictionaries and models, where this
        model reads phonemes (~2.5 s once per process; a server calls it after loading a model)."""
        if self.info.phonemes:
            warm_up_g2p()

    def read_text(
        self, request: SynthesisRequest, reference_frames: int = 0, max_segment_weight: int = MAX_SEGMENT_WEIGHT
    ) -> list[PromptText]:
        """The pieces the request's text is synthesized in (v0.2: core/frontend.py, each with a prompt
        that leaves at least half the context for its audio; S1: the text whole, as the original)."""
        self._need_lm()
        return self.family.pieces(request, reference_frames, max_segment_weight)

    def stream(
        self,
        request: SynthesisRequest,
        *,
        progress: Callable[[], None] | None = None,
        max_parallel: int = 2,
        max_segment_weight: int = MAX_SEGMENT_WEIGHT,
        ignore_stop: bool = False,
        streamed: bool = True,
        stop: Callable[[], bool] | None = None,
    ) -> SpeechStream:
        """The request's audio as a SpeechStream of chunks, while it is generated (`streamed=False`: to be
        joined whole, in the codec's larger chunks for that).

        The text is read in pieces (`read_text`), each generated with the reference as its prompt;
        piece i samples with seed + i. `progress` is called for every frame. Up to `max_parallel`
        pieces generate at once, the others join as earlier ones finish; streamed, the first piece
        starts alone and the others join once its audio is well ahead of playback (each would delay
        the first audio by a prompt's prefill; core/speech.py). `stop()` true while the reference's audio
        is encoded, before the stream exists to be cancelled: Cancelled (`encode_reference`).
        """
        self._need_codec()
        self.scheduler.refuse_own_thread()
        codes = self._check(request, stop)
        pieces = self.read_text(request, 0 if codes is None else codes.shape[1], max_segment_weight)
        sequences = []
        for i, piece in enumerate(pieces):
            seed = None if request.seed is None else request.seed + i
            prompt = self.family.prompt(piece, request, codes)
            sequences += self._sequences(request, prompt, 1, seed, ignore_stop)
        return SpeechStream(
            self.scheduler,
            lambda: self.family.chunk_decoder(streamed),
            self.info.sample_rate,
            sequences,
            max_parallel,
            progress,
            first_audio_alone=streamed,
        )

    def synthesize(
        self,
        request: SynthesisRequest,
        *,
        ignore_stop: bool = False,
        on_stream: Callable[[SpeechStream], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """The whole stream's audio at once: the same frames as streaming it, decoded in larger chunks
        (the same audio within float rounding, and closer to the original's one-piece decode).
        `on_stream` gets the stream as it starts, for a caller that may cancel it (a client gone); `stop`
        cancels the reference's encode before it (`stream`)."""
        # (no first audio to hurry: four pieces at once)
        stream = self.stream(request, max_parallel=4, ignore_stop=ignore_stop, streamed=False, stop=stop)
        try:
            if on_stream is not None:
                on_stream(stream)
            chunks = list(stream)
        except BaseException:  # the callback's error, or a Ctrl-C before the stream was iterated: stop it too
            stream.cancel()
            raise
        if not chunks:
            raise ValueError("the model produced no audio for this text (try a larger max_new_tokens)")
        return np.concatenate(chunks)


def _integer_array(codes):
    """Integer numpy codes as int64 torch can compare (not unsigned) and take (no negative strides, native
    order); values past int64 are refused. Other arrays and tensors as they are, for the codec's own checks."""
    if not isinstance(codes, np.ndarray) or not np.issubdtype(codes.dtype, np.integer):
        return codes
    if codes.dtype.kind == "u" and codes.size and codes.max() > np.iinfo(np.int64).max:
        raise ValueError("code values out of range (past 2**63)")
    return np.ascontiguousarray(codes, dtype=np.int64)


__all__ = [
    "Cancelled",
    "DEFAULT_VQGAN_PRECISION",
    "DEVICE_NAMES",
    "DEVICE_PATTERN",
    "EngineInfo",
    "FAMILIES",
    "FAMILY",
    "S1_FAMILY",
    "LM_PRESETS",
    "QUANT_MODES",
    "SAMPLE_RATE",
    "SchedulerFailed",
    "SpeechStream",
    "SynthesisRequest",
    "TTSEngine",
    "VQGAN_PRECISIONS",
    "VQGAN_PRESETS",
    "resolve_tokenizer_dir",
]
