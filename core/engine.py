"""TTSEngine: the one object the CLI, the server and the tests use.

Load once; encode a reference clip to codes; generate codes for text in that voice; decode codes to
audio. One lock serialises model use, so an engine can be shared between threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .checkpoints import DEFAULT_CHECKPOINTS_DIR, LLAMA_FILENAME, VQGAN_FILENAME
from .device import lm_dtype, resolve_device
from .lm import SamplingParams, encode_prompt, frames_to_codes, generate, load_lm, load_tokenizer
from .lm.compile import uses_static_cache
from .lm.quantize import is_quantized
from .lm.prompt import DEFAULT_ORDER
from .vqgan import load_vqgan
from .vqgan.config import VQConfig

DEFAULT_LLAMA_CHECKPOINT = str(DEFAULT_CHECKPOINTS_DIR / LLAMA_FILENAME)
DEFAULT_VQGAN_CHECKPOINT = str(DEFAULT_CHECKPOINTS_DIR / VQGAN_FILENAME)
DEFAULT_LLAMA_CONFIG = "text2semantic_finetune"
DEFAULT_VQGAN_CONFIG = "vqgan_pretrain"
DEFAULT_TOKENIZER = "fishaudio/speech-lm-v1"


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


class TTSEngine:
    def __init__(self, *, lm=None, tokenizer=None, vqgan=None, device: torch.device | str = "cpu",
                 compile: bool = False):
        self.lm = lm
        self.tokenizer = tokenizer
        self.vqgan = vqgan
        self.device = torch.device(device)
        self.compile = compile
        self.lock = threading.RLock()

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
    ) -> "TTSEngine":
        """Load the parts whose checkpoint is given (None skips the LM or the VQGAN).

        `quantize="int8"` stores the LM's linears as int8 (~4x less to read per token on CPU).
        """
        dev = resolve_device(device)
        lm = tok = vqgan = None
        if llama_checkpoint is not None:
            tok = load_tokenizer(tokenizer, checkpoints_dir=os.path.dirname(str(llama_checkpoint)) or ".")
            lm = load_lm(llama_checkpoint, llama_config, device=dev, dtype=lm_dtype(dev, half, precision),
                         quantize=quantize)
        if vqgan_checkpoint is not None:
            vqgan = load_vqgan(vqgan_checkpoint, vqgan_config, device=dev)
        if compile and lm is not None:
            from .lm.compile import compile_decode

            compile_decode(lm)
        return cls(lm=lm, tokenizer=tok, vqgan=vqgan, device=dev, compile=compile)

    # -- parts -----------------------------------------------------------------------------

    def _need(self, part: str):
        value = getattr(self, part)
        if value is None:
            raise RuntimeError(f"this engine was loaded without the {part}")
        return value

    @property
    def codebook_size(self) -> int | None:
        return None if self.vqgan is None else self.vqgan.config.vq.codebook_size

    # -- audio <-> codes -------------------------------------------------------------------

    def encode_reference(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at 22,050 Hz -> codes [4, T] int64."""
        vqgan = self._need("vqgan")
        with self.lock:  # the VQGAN checks the shape and length and moves the audio to its device
            codes = vqgan.encode(torch.as_tensor(np.asarray(audio, dtype=np.float32)))
        return codes.cpu().numpy().astype(np.int64)

    def decode_codes(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Codes [4, T] -> mono float32 audio at 22,050 Hz."""
        vqgan = self._need("vqgan")
        with self.lock:  # the VQGAN checks shape, dtype and range
            audio = vqgan.decode(codes)
        return audio.reshape(-1).float().cpu().numpy()

    # -- text -> codes ---------------------------------------------------------------------

    def encode_prompt(self, request: GenerationRequest) -> torch.Tensor:
        prompt_tokens = None if request.prompt_tokens is None else torch.as_tensor(request.prompt_tokens)
        return encode_prompt(
            self._need("tokenizer"), request.text, prompt_text=request.prompt_text, prompt_tokens=prompt_tokens,
            use_g2p=request.use_g2p, speaker=request.speaker, order=request.order,
            num_codebooks=self._need("lm").config.num_codebooks,
        )

    def generate_codes(self, request: GenerationRequest, prompt: torch.Tensor | None = None,
                       progress: Callable[[], None] | None = None) -> list[np.ndarray]:
        """Codes [4, n] per sample; dtype int32, or int64 with int64 reference codes (as the original)."""
        lm = self._need("lm")
        if prompt is None:
            prompt = self.encode_prompt(request)
        code_limit = None
        if request.code_mask:
            code_limit = self.codebook_size or VQConfig().codebook_size
        generators = sample_generators(self.device, request.seed, request.num_samples)
        with self.lock:
            frames = generate(
                lm, prompt, max_new_tokens=request.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                params=request.sampling, num_samples=request.num_samples, code_limit=code_limit,
                generator=generators, static_cache=self.compile and uses_static_cache(lm), progress=progress,
                fast_sampling=is_quantized(lm),  # the int8 path is not bit-exact anyway
            )
        return [frames_to_codes(f).numpy() for f in frames]

    # -- everything ------------------------------------------------------------------------

    def synthesize(self, request: GenerationRequest, reference_audio: np.ndarray | None = None,
                   progress: Callable[[], None] | None = None) -> np.ndarray:
        """Text (+ optional reference clip or codes) -> audio of the first sample."""
        if reference_audio is not None:
            if request.prompt_text is None:
                raise ValueError("a reference clip needs its transcript (reference text)")
            request = replace(request, prompt_tokens=self.encode_reference(reference_audio))
        codes = self.generate_codes(request, progress=progress)[0]
        if codes.shape[1] == 0:
            raise ValueError("the model produced no audio for this text (try a larger max_new_tokens)")
        return self.decode_codes(codes)


__all__ = ["GenerationRequest", "TTSEngine", "SAMPLE_RATE"]
