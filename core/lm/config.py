"""text2semantic model configuration: the original ModelArgs, its presets and JSON loading."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..checkpoints import check_config_numbers, read_json_object, resolve_config


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


@dataclass
class ModelArgs:
    vocab_size: int = 32000
    n_layer: int = 32
    n_head: int = 32
    dim: int = 4096
    intermediate_size: int | None = None
    n_local_heads: int = -1
    head_dim: int = 64
    rope_base: float = 10000
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    codebook_size: int = 160
    num_codebooks: int = 4
    codebook_padding_idx: int = 0

    def __post_init__(self):
        optional = tuple(n for n in ("intermediate_size",) if getattr(self, n) is not None)
        optional += () if self.n_local_heads == -1 else ("n_local_heads",)
        check_config_numbers(
            self,
            sizes=("vocab_size", "n_layer", "n_head", "dim", "max_seq_len", "codebook_size", "num_codebooks")
            + optional,
            counts=("codebook_padding_idx",),
            reals=("rope_base", "norm_eps"),
        )
        if self.dim % self.n_head:
            raise ValueError(f"dim ({self.dim}) must be a multiple of n_head ({self.n_head})")
        if self.n_local_heads == -1:
            self.n_local_heads = self.n_head
        if self.n_head % self.n_local_heads:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_local_heads ({self.n_local_heads})")
        if self.intermediate_size is None:
            # SwiGLU sizing of LLaMA: 2/3 of 4*dim, rounded up to a multiple of 256.
            self.intermediate_size = find_multiple(int(2 * 4 * self.dim / 3), 256)
        # The original always derives head_dim from dim (the field default is overwritten).
        self.head_dim = self.dim // self.n_head

    @property
    def total_vocab(self) -> int:
        """Rows of the shared embedding / output: text vocab + every codebook's entries."""
        return self.vocab_size + self.codebook_size * self.num_codebooks


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass
class LMConfig:
    model: ModelArgs
    lora: LoraConfig | None = None


_OFFICIAL_ARGS = dict(
    max_seq_len=4096,
    vocab_size=36408,
    n_layer=24,
    n_head=16,
    dim=1024,
    rope_base=10000,
    norm_eps=1e-5,
    num_codebooks=4,
    codebook_size=168,
)

PRESETS = {
    "text2semantic_finetune": lambda: LMConfig(ModelArgs(**_OFFICIAL_ARGS)),
    "text2semantic_finetune_lora": lambda: LMConfig(ModelArgs(**_OFFICIAL_ARGS), LoraConfig(rank=8, alpha=16)),
}

# Keys of the original ModelArgs that only matter for training.
_IGNORED_KEYS = {"use_flash_attention", "use_gradient_checkpointing", "_target_"}


def lm_config_from_dict(data: dict) -> LMConfig:
    """Accept a flat ModelArgs object, or `{"constructor_args": {...}}` as in the parity files.

    A `"lora": {"rank"|"r": 8, "alpha"|"lora_alpha": 16}` entry selects the LoRA variant.
    """
    if "constructor_args" in data:
        data = data["constructor_args"]
    data = dict(data)
    lora_data = data.pop("lora", None) or data.pop("lora_config", None)
    known = {f.name for f in fields(ModelArgs)}
    unknown = set(data) - known - _IGNORED_KEYS
    if unknown:
        raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
    model = ModelArgs(**{k: v for k, v in data.items() if k in known})
    lora = None
    if lora_data:
        # A user's file: a list or string here, or a rank of "x", must be a message, not an AttributeError.
        if not isinstance(lora_data, dict):
            raise ValueError(f"lora must be an object with rank and alpha, got {lora_data!r}")
        try:
            lora = LoraConfig(
                rank=int(lora_data.get("rank", lora_data.get("r", 8))),
                alpha=float(lora_data.get("alpha", lora_data.get("lora_alpha", 16))),
            )
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"lora rank and alpha must be numbers, got {lora_data!r}") from None
        try:
            check_config_numbers(lora, sizes=("rank",), reals=("alpha",))  # rank 0 would divide by zero
        except ValueError as exc:
            raise ValueError(f"lora.{exc}") from None
    return LMConfig(model, lora)


def load_lm_config(name_or_path: str | Path) -> LMConfig:
    """A preset name of the original (`text2semantic_finetune`, `..._lora`) or a JSON file."""
    choice = resolve_config(str(name_or_path), PRESETS, "LM config")
    if not isinstance(choice, Path):
        return PRESETS[choice]()
    path = choice
    data = read_json_object(path, "LM config")
    try:
        return lm_config_from_dict(data)
    except TypeError as exc:
        raise ValueError(f"bad LM config {path}: {exc}") from None
