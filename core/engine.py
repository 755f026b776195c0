"""TTSEngine: the one object the CLI, the server and the tests use.

Load once; encode a reference clip to codes; generate codes for text in that voice; decode codes to
audio, streaming or in one piece. An engine can be shared between threads: its scheduler batches
their generations (core/scheduler.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .checkpoints import DEFAULT_CHECKPOINTS_DIR, LLAMA_FILENAME, VQGAN_FILENAME
from .device import lm_dtype, resolve_device
from .lm import SamplingParams, Sequence, encode_prompt, frames_to_codes, load_lm, load_tokenizer
from .lm.autotune import model_paths
from .lm.compile import uses_static_cache
from .lm.generate import budget_new_frames
from .lm.prompt import DEFAULT_ORDER
from .lm.quantize import is_quantized
from .scheduler import Job, Scheduler
from .speech import SpeechStream
from .text.split import MAX_SEGMENT_WEIGHT, split_text
from .vqgan import load_vqgan
from .vqgan.config import VQConfig

DEFAULT_LLAMA_CHECKPOINT = str(DEFAULT_CHECKPOINTS_DIR / LLAMA_FILENAME)
DEFAULT_VQGAN_CHECKPOINT = str(DEFAULT_CHECKPOINTS_DIR / VQGAN_FILENAME)
DEFAULT_LLAMA_CONFIG = "text2semantic_finetune"
DEFAULT_VQGAN_CONFIG = "vqgan_pretrain"
DEFAULT_TOKENIZER = "fishaudio/speech-lm-v1"
T = TypeVar("T")


@dataclass
class GenerationRequest:
    """Everything that decides what the LM generates (the original CLI's options and defaults)."""

    text: str
    prompt_text: str | None = None
    prompt_tokens: np.ndarray | torch.Tensor | None = None  # reference codes [4, T]
    max_new_tokens: int = 0  # 0 = until the context is full
    sampling: SamplingParams = SamplingParams()
    use_g2p: bool = True
    speaker: str | None = None
    order: str = DEFAULT_ORDER
    seed: int | None = None
    num_samples: int = 1
    code_mask: bool = True  # never sample codes the VQGAN cannot decode
    ignore_stop: bool = False  # benchmarks: run the whole max_new_tokens (random weights stop anywhere)

    def __post_init__(self):
        if not self.text or not self.text.strip():
            raise ValueError("text is empty")
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")


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

    def __init__(self, *, lm=None, tokenizer=None, vqgan=None, device: torch.device | str = "cpu",
                 compile: bool = False, max_batch_size: int | None = None):
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
        llama_checkpoint: str | os.PathLike | None = DEFAULT_LLAMA_CHECKPOINT,
        llama_config: str = DEFAULT_LLAMA_CONFIG,
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
    ) -> "TTSEngine":
        """Load the parts whose checkpoint is given (None skips the LM or the VQGAN).

        `quantize="int8"` / `"int4"` stores the LM's linears as int8 / int4 (~4x / ~6x less to read per
        token than float32 on CPU). `vqgan_precision="bfloat16"` decodes audio in bfloat16.
        """
        dev = resolve_device(device)
        lm = tok = vqgan = None
        if llama_checkpoint is not None:
            tok = load_tokenizer(tokenizer, checkpoints_dir=os.path.dirname(str(llama_checkpoint)) or ".")
            lm = load_lm(llama_checkpoint, llama_config, device=dev, dtype=lm_dtype(dev, half, precision),
                         quantize=quantize)
        if vqgan_checkpoint is not None:
            vqgan = load_vqgan(vqgan_checkpoint, vqgan_config, device=dev, precision=vqgan_precision)
        if compile and lm is not None:
            from .lm.compile import compile_decode

            compile_decode(lm)
        return cls(lm=lm, tokenizer=tok, vqgan=vqgan, device=dev, compile=compile, max_batch_size=max_batch_size)

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
    def codebook_size(self) -> int | None:
        return None if self.vqgan is None else self.vqgan.config.vq.codebook_size

    @property
    def scheduler(self) -> Scheduler:
        """The thread that owns the LM (started on first use)."""
        lm = self._need("lm")
        with self.lock:
            if self._scheduler is None:
                static = self.compile and uses_static_cache(lm)  # CUDA graphs want one batch shape
                self._scheduler = Scheduler(lm, self.max_batch_size, static=static)
            return self._scheduler

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
        """Mono float32 audio at 22,050 Hz -> codes [4, T] int64."""
        vqgan = self._need("vqgan")
        audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        codes = self._model_call(lambda: vqgan.encode(audio))  # the VQGAN checks shape and length
        return codes.cpu().numpy().astype(np.int64)

    def decode_codes(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Codes [4, T] -> mono float32 audio at 22,050 Hz (in one piece)."""
        vqgan = self._need("vqgan")
        audio = self._model_call(lambda: vqgan.decode(codes))  # the VQGAN checks shape, dtype and range
        return audio.reshape(-1).float().cpu().numpy()

    # -- text -> codes ---------------------------------------------------------------------

    def encode_prompt(self, request: GenerationRequest) -> torch.Tensor:
        prompt_tokens = None if request.prompt_tokens is None else torch.as_tensor(request.prompt_tokens)
        return encode_prompt(
            self._need("tokenizer"), request.text, prompt_text=request.prompt_text, prompt_tokens=prompt_tokens,
            use_g2p=request.use_g2p, speaker=request.speaker, order=request.order,
            num_codebooks=self._need("lm").config.num_codebooks,
        )

    def _sequences(self, request: GenerationRequest, prompt: torch.Tensor, count: int,
                   seed: int | None) -> list[Sequence]:
        lm = self._need("lm")
        budget = budget_new_frames(prompt.shape[1], request.max_new_tokens, lm.config.max_seq_len)
        code_limit = (self.codebook_size or VQConfig().codebook_size) if request.code_mask else None
        return [Sequence(prompt, budget, request.sampling, self._need("tokenizer").eos_token_id, generator,
                         code_limit, fast_sampling=is_quantized(lm),  # the int8 path is not bit-exact anyway
                         ignore_stop=request.ignore_stop)
                for generator in sample_generators(self.device, seed, count)]

    def generate_codes(self, request: GenerationRequest, prompt: torch.Tensor | None = None,
                       progress: Callable[[], None] | None = None) -> list[np.ndarray]:
        """Codes [4, n] per sample (the samples decode as one batch); dtype int32, or int64 with int64
        reference codes (as the original). `progress` is called once per step."""
        if prompt is None:
            prompt = self.encode_prompt(request)
        if request.num_samples > self.max_batch_size:
            raise ValueError(f"num_samples is {request.num_samples}; at most {self.max_batch_size} run as one batch")
        sequences = self._sequences(request, prompt, request.num_samples, request.seed)
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

    def stream(self, request: GenerationRequest, reference_audio: np.ndarray | None = None,
               max_segment_weight: int = MAX_SEGMENT_WEIGHT, progress: Callable[[], None] | None = None,
               max_parallel: int = 2) -> SpeechStream:
        """Text (+ optional reference clip or codes) -> a SpeechStream of audio chunks (first sample).

        A long text is split into segments (core/text/split.py), each generated with the reference
        as its prompt; segment i samples with seed + i. `progress` is called for every frame.
        `max_parallel` segments generate at once: each one more at the start delays the first audio by
        a prompt's prefill; later ones join as earlier ones finish, when plenty of audio is buffered.
        """
        self._need("vqgan")
        if reference_audio is not None:
            if request.prompt_text is None:
                raise ValueError("a reference clip needs its transcript (reference text)")
            request = replace(request, prompt_tokens=self.encode_reference(reference_audio))
        sequences = []
        for i, (segment, prompt) in enumerate(self._segment_prompts(request, max_segment_weight)):
            seed = None if request.seed is None else request.seed + i
            sequences += self._sequences(segment, prompt, 1, seed)
        return SpeechStream(self.scheduler, self.vqgan, sequences, max_parallel, progress)

    def _segment_prompts(self, request: GenerationRequest, max_weight: int) -> list[tuple[GenerationRequest, torch.Tensor]]:
        """(request, prompt) per segment of the text. A segment whose prompt takes more than half the
        context (a long transcript, a small model) is split further, so that its audio has room."""
        limit = self._need("lm").config.max_seq_len // 2
        out = []

        def add(text: str, weight: int) -> None:
            segment = replace(request, text=text)
            prompt = self.encode_prompt(segment)
            if prompt.shape[1] > limit and weight > 1:
                pieces = split_text(text, max(1, weight // 2))
                if len(pieces) > 1:
                    for piece in pieces:
                        add(piece, weight // 2)
                    return
            out.append((segment, prompt))

        for text in split_text(request.text, max_weight) or [request.text]:
            add(text, max_weight)
        return out

    def synthesize(self, request: GenerationRequest, reference_audio: np.ndarray | None = None) -> np.ndarray:
        """The whole stream's audio at once (the same samples as streaming it)."""
        chunks = list(self.stream(request, reference_audio, max_parallel=4))  # no first audio to hurry
        if not chunks:
            raise ValueError("the model produced no audio for this text (try a larger max_new_tokens)")
        return np.concatenate(chunks)


__all__ = ["GenerationRequest", "TTSEngine", "SAMPLE_RATE"]
