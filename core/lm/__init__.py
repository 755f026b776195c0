"""The text2semantic language model: config, transformer, loading, sampling, generation, prompts."""

from .config import LMConfig, LoraConfig, ModelArgs, load_lm_config
from .generate import Sequence, decode_step, frames_to_codes, generate, prefill, prefill_many
from .load import load_lm
from .model import Transformer
from .prompt import encode_prompt
from .sampling import SamplingParams
from .tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "LMConfig",
    "LoraConfig",
    "ModelArgs",
    "SamplingParams",
    "TextTokenizer",
    "Transformer",
    "Sequence",
    "decode_step",
    "encode_prompt",
    "frames_to_codes",
    "generate",
    "prefill",
    "prefill_many",
    "load_lm",
    "load_lm_config",
    "load_tokenizer",
]
