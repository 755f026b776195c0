"""TTSEngine: the one door the CLI, the server and the benchmark go through.

Load once; `info` says what callers may need to know (rates, context, precision, capabilities);
`stream` / `synthesize` turn a `SynthesisRequest` (core/request.py) into audio; `generate_codes`
stops at the codes (the original's `generate` step). An engine can be shared between threads: its
scheduler batches their generations (core/scheduler.py).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .checkpoints import DEFAULT_CHECKPOINTS_DIR, HF_REPO_ID, LM_FILENAME, VQGAN_FILENAME
from .device import lm_dtype, resolve_device
from .frontend import PromptText, read_piece, read_text
from .lm import Sequence, encode_prompt, frames_to_codes, load_lm, load_tokenizer
from .lm.autotune import model_paths
from .lm.compile import uses_static_cache
from .lm.config import PRESETS as LM_PRESETS
from .lm.generate import budget_new_frames
from .lm.quantize import QUANT_MODES, is_quantized, quantization
from .lm.tokenizer import resolve_tokenizer_dir
from .reference import prepare_reference
from .request import SynthesisRequest
from .scheduler import Job, Scheduler, SchedulerFailed
from .speech import SpeechStream
from .text.split import MAX_SEGMENT_WEIGHT
from .vqgan import load_vqgan
from .vqgan.config import PRESETS as VQGAN_PRESETS
from .vqgan.config import VQConfig
from .vqgan.load import VQGAN_PRECISIONS

FAMILY = "fish-speech-v0.2"
DEFAULT_LM_CHECKPOINT = str(DEFAULT_CHECKPOINTS_DIR / LM_FILENAME)
DEFAULT_VQGAN_CHECKPOINT = str(DEFAULT_CHECKPOINTS_DIR / VQGAN_FILENAME)
DEFAULT_LM_CONFIG = "text2semantic_finetune"
DEFAULT_VQGAN_CONFIG = "vqgan_pretrain"
DEFAULT_TOKENIZER = HF_REPO_ID
T = TypeVar("T")


@dataclass(frozen=True)
class EngineInfo:
    """What callers may know about a loaded engine, without reaching into its models."""

    family: str  # the model family; another family plugs in behind the same door with its own
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


def default_max_batch(device: torch.device, lm=None) -> int:
    """Sequences decoded together. CPU: 8 (a step for 8 costs ~2x one; cache memory is committed only
    as positions fill). CUDA: up to 16, as many full-context KV caches as fit in half the free memory."""
    if device.type != "cuda" or lm is None:
        return 8
    cfg = lm.config
    dtype = lm.kv_cache_dtype or lm.embeddings.weight.dtype
    per_slot = 2 * cfg.n_layer * cfg.n_local_heads * cfg.max_seq_len * cfg.head_dim * dtype.itemsize
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(16, int(0.5 * free // per_slot)))


class TTSEngine:
    """Text -> codes -> audio. With an LM, all model work runs on one scheduler thread that batches
    the decode steps of concurrent requests (core/scheduler.py); without one (VQGAN only), calls
    run directly under a lock."""

    def __init__(
        self,
        *,
        lm=None,
        tokenizer=None,
        vqgan=None,
        device: torch.device | str = "cpu",
        compile: bool = False,
        max_batch_size: int | None = None,
    ):
        self.lm = lm
        self.tokenizer = tokenizer
        self.vqgan = vqgan
        self.device = torch.device(device)
        self.compile = compile
        self.max_batch_size = max_batch_size or default_max_batch(self.device, lm)
        self.lock = threading.RLock()
        self._scheduler: Scheduler | None = None

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
        vqgan_precision: str = "float32",
    ) -> TTSEngine:
        """Load the parts whose checkpoint is given (None skips the LM or the VQGAN).

        `quantize="int8"` / `"int4"` stores the LM's linears as int8 / int4 (~4x / ~6x less to read per
        token than float32 on CPU). `vqgan_precision="bfloat16"` decodes audio in bfloat16.
        """
        dev = resolve_device(device)
        lm = tok = vqgan = None
        if lm_checkpoint is not None:
            tok = load_tokenizer(tokenizer, checkpoints_dir=os.path.dirname(str(lm_checkpoint)) or ".")
            lm = load_lm(lm_checkpoint, lm_config, device=dev, dtype=lm_dtype(dev, half, precision), quantize=quantize)
        if vqgan_checkpoint is not None:
            vqgan = load_vqgan(vqgan_checkpoint, vqgan_config, device=dev, precision=vqgan_precision)
        if compile and lm is not None:
            from .lm.compile import compile_decode

            compile_decode(lm)
        return cls(lm=lm, tokenizer=tok, vqgan=vqgan, device=dev, compile=compile, max_batch_size=max_batch_size)

    # -- what callers may know -------------------------------------------------------------

    @functools.cached_property
    def info(self) -> EngineInfo:
        """Fixed once loaded, so built once: request paths read it (sample rate, codebook size)."""
        lm, vqgan = self.lm, self.vqgan
        return EngineInfo(
            family=FAMILY,
            device=str(self.device),
            precision=None if lm is None else str(lm.output.weight.dtype).removeprefix("torch."),
            quantize="none" if lm is None else quantization(lm),
            compiled=self.compile,
            max_batch_size=self.max_batch_size,
            context=None if lm is None else lm.config.max_seq_len,
            num_codebooks=lm.config.num_codebooks
            if lm is not None
            else (vqgan.config.vq.codebook_groups if vqgan is not None else None),
            codebook_size=None if vqgan is None else vqgan.config.vq.codebook_size,
            sample_rate=SAMPLE_RATE if vqgan is None else vqgan.config.sample_rate,
            frame_rate=None if vqgan is None else vqgan.config.sample_rate / vqgan.config.samples_per_code,
            vqgan_precision=None if vqgan is None else str(vqgan.decode_dtype).removeprefix("torch."),
            lm_paths=self.lm_paths,
        )

    # -- parts -----------------------------------------------------------------------------

    def _need(self, part: str):
        value = getattr(self, part)
        if value is None:
            raise RuntimeError(f"this engine was loaded without the {part}")
        return value

    @property
    def lm_paths(self) -> dict[str, dict[str, str]]:
        """The code computing the LM's linears per weight format, {"int8": {"decode": ..., "prefill": ...}}
        (core/lm/paths.py, chosen at load by core/lm/autotune.py); {} without an LM or off the CPU."""
        if self.lm is None or self.device.type != "cpu":
            return {}
        return model_paths(self.lm)

    @property
    def scheduler(self) -> Scheduler:
        """The thread that owns the LM (started on first use)."""
        lm = self._need("lm")
        with self.lock:
            if self._scheduler is None:
                static = self.compile and uses_static_cache(lm)  # CUDA graphs want one batch shape
                self._scheduler = Scheduler(lm, self.max_batch_size, static=static)
            return self._scheduler

    @property
    def failure(self) -> BaseException | None:
        """Why this engine's scheduler thread died, if it did: it then refuses all work (load anew)."""
        scheduler = self._scheduler
        return None if scheduler is None else scheduler.failure

    def _model_call(self, fn: Callable[[], T]) -> T:
        """Run model work where it does not compete with the scheduler for the cores."""
        if self.lm is not None:
            return self.scheduler.run(fn)
        with self.lock, torch.inference_mode():
            return fn()

    def close(self) -> None:
        """Stop the scheduler thread (requests still in it fail); the engine can be dropped after."""
        with self.lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()

    # -- audio <-> codes -------------------------------------------------------------------

    def encode_reference(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at the codec's rate -> codes [4, T] int64."""
        vqgan = self._need("vqgan")
        audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        codes = self._model_call(lambda: vqgan.encode(audio))  # the VQGAN checks shape and length
        return codes.cpu().numpy().astype(np.int64)

    def decode_codes(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Codes [4, T] -> mono float32 audio at the codec's rate (in one piece)."""
        vqgan = self._need("vqgan")
        audio = self._model_call(lambda: vqgan.decode(codes))  # the VQGAN checks shape, dtype and range
        return audio.reshape(-1).float().cpu().numpy()

    # -- text -> codes ---------------------------------------------------------------------

    def _check(self, request: SynthesisRequest) -> np.ndarray | None:
        """Request limits that depend on the model; the reference's codes."""
        context = self._need("lm").config.max_seq_len
        if request.max_frames > context:
            raise ValueError(f"max_new_tokens: {request.max_frames} exceeds the model's context of {context}.")
        if request.reference is None:
            return None
        return prepare_reference(self, request.reference).codes

    def encode_prompt(self, request: SynthesisRequest) -> torch.Tensor:
        """The LM's input [1 + codebooks, L (+ T)] for the request's whole text as one prompt."""
        piece = read_piece(
            request.text, request.transcript, use_g2p=request.use_g2p, speaker=request.speaker, order=request.order
        )
        return self._prompt_tensor(piece, self._check(request))

    def _prompt_tensor(self, piece: PromptText, reference_codes: np.ndarray | None) -> torch.Tensor:
        codes = None if reference_codes is None else torch.as_tensor(reference_codes)
        return encode_prompt(self._need("tokenizer"), piece.prompt, codes, self._need("lm").config.num_codebooks)

    def _sequences(
        self, request: SynthesisRequest, prompt: torch.Tensor, count: int, seed: int | None, ignore_stop: bool
    ) -> list[Sequence]:
        lm = self._need("lm")
        budget = budget_new_frames(prompt.shape[1], request.max_frames, lm.config.max_seq_len)
        code_limit = (self.info.codebook_size or VQConfig().codebook_size) if request.code_mask else None
        return [
            Sequence(
                prompt,
                budget,
                request.sampling,
                self._need("tokenizer").eos_token_id,
                generator,
                code_limit,
                fast_sampling=is_quantized(lm),  # the int8 path is not bit-exact anyway
                ignore_stop=ignore_stop,
            )
            for generator in sample_generators(self.device, seed, count)
        ]

    def generate_codes(
        self,
        request: SynthesisRequest,
        *,
        num_samples: int = 1,
        prompt: torch.Tensor | None = None,
        progress: Callable[[], None] | None = None,
        ignore_stop: bool = False,
    ) -> list[np.ndarray]:
        """Codes [4, n] per sample for the whole text as one prompt (`encode_prompt`'s, unless given;
        the samples decode as one batch); dtype int32, or int64 with int64 reference codes (as the
        original). `progress` is called once per step; `ignore_stop` (benchmarks: random weights stop
        anywhere) runs the whole budget."""
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if num_samples > self.max_batch_size:
            raise ValueError(f"num_samples is {num_samples}; at most {self.max_batch_size} run as one batch")
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
        return [frames_to_codes(torch.stack(seq.frames, dim=1).to(prompt.dtype).cpu()).numpy() for seq in sequences]

    # -- everything ------------------------------------------------------------------------

    def read_text(
        self, request: SynthesisRequest, reference_frames: int = 0, max_segment_weight: int = MAX_SEGMENT_WEIGHT
    ) -> list[PromptText]:
        """The pieces the request's text is synthesized in (core/frontend.py), each with a prompt that
        leaves at least half the context for its audio (a long transcript, a small model)."""
        limit = self._need("lm").config.max_seq_len // 2
        tokenizer = self._need("tokenizer")
        return read_text(
            request.text,
            request.transcript,
            use_g2p=request.use_g2p,
            speaker=request.speaker,
            order=request.order,
            max_weight=max_segment_weight,
            fits=lambda prompt: len(tokenizer.encode(prompt)) + reference_frames <= limit,
        )

    def stream(
        self,
        request: SynthesisRequest,
        *,
        progress: Callable[[], None] | None = None,
        max_parallel: int = 2,
        max_segment_weight: int = MAX_SEGMENT_WEIGHT,
        ignore_stop: bool = False,
    ) -> SpeechStream:
        """The request's audio as a SpeechStream of chunks, while it is generated.

        The text is read in pieces (`read_text`), each generated with the reference as its prompt;
        piece i samples with seed + i. `progress` is called for every frame. `max_parallel` pieces
        generate at once: each one more at the start delays the first audio by a prompt's prefill;
        later ones join as earlier ones finish, when plenty of audio is buffered.
        """
        self._need("vqgan")
        codes = self._check(request)
        pieces = self.read_text(request, 0 if codes is None else codes.shape[1], max_segment_weight)
        sequences = []
        for i, piece in enumerate(pieces):
            seed = None if request.seed is None else request.seed + i
            sequences += self._sequences(request, self._prompt_tensor(piece, codes), 1, seed, ignore_stop)
        return SpeechStream(self.scheduler, self.vqgan, sequences, max_parallel, progress)

    def synthesize(self, request: SynthesisRequest, *, ignore_stop: bool = False) -> np.ndarray:
        """The whole stream's audio at once (the same samples as streaming it)."""
        chunks = list(self.stream(request, max_parallel=4, ignore_stop=ignore_stop))  # no first audio to hurry
        if not chunks:
            raise ValueError("the model produced no audio for this text (try a larger max_new_tokens)")
        return np.concatenate(chunks)


__all__ = [
    "EngineInfo",
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
