"""Configs of OpenAudio S1-mini: the Dual-AR `config.json` and the modded-DAC codec.

The Dual-AR fields and fall-backs are those of the original dataclass (SPEC §3.1); every size comes from
`config.json` and is then checked against the state dict's shapes (load.py), never from an estimate.
The codec has no config file in the official folder: the original builds it from its fixed
`modded_dac_vq.yaml`, which `CodecConfig()` reproduces; a `codec_config.json` beside `codec.pth`
(the shape of that yaml) overrides it, as the small parity checkpoint does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..checkpoints import check_config_flags, check_config_numbers, is_whole_number, read_json_object

MODEL_TYPE = "dual_ar"
FAST_LOGIT_LIMIT = 1024  # the original samples codebooks 1..N-1 from the first 1024 fast logits only


class S1ConfigError(ValueError):
    """config.json (or codec_config.json) is missing, unreadable or not an S1 Dual-AR config."""


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


ATTENTION_FLAGS = ("attention_qkv_bias", "attention_o_bias", "attention_qk_norm")  # each with a fast_ twin


@dataclass
class DualARConfig:
    model_type: str = MODEL_TYPE
    vocab_size: int = 32000
    n_layer: int = 32
    n_head: int = 32
    dim: int = 4096
    intermediate_size: int | None = None
    n_local_heads: int = -1
    head_dim: int | None = 64
    rope_base: float = 10000
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    dropout: float = 0.0
    tie_word_embeddings: bool = True
    attention_qkv_bias: bool = False
    attention_o_bias: bool = False
    attention_qk_norm: bool = False
    codebook_size: int = 160
    num_codebooks: int = 4
    use_gradient_checkpointing: bool = True
    initializer_range: float = 0.02
    is_reward_model: bool = False
    scale_codebook_embeddings: bool = False
    n_fast_layer: int = 4
    fast_dim: int | None = None
    fast_n_head: int | None = None
    fast_n_local_heads: int | None = None
    fast_head_dim: int | None = None
    fast_intermediate_size: int | None = None
    fast_attention_qkv_bias: bool | None = None
    fast_attention_qk_norm: bool | None = None
    fast_attention_o_bias: bool | None = None

    def __post_init__(self):
        if self.model_type != MODEL_TYPE:
            raise S1ConfigError(f"model_type {self.model_type!r} is not supported (S1 checkpoints are {MODEL_TYPE!r})")
        fallbacks = ("fast_dim", "fast_n_head", "fast_n_local_heads", "fast_head_dim", "fast_intermediate_size")
        optional = tuple(n for n in ("intermediate_size", "head_dim") if getattr(self, n) is not None)
        optional += () if self.n_local_heads == -1 else ("n_local_heads",)
        check_config_numbers(
            self,
            sizes=("vocab_size", "n_layer", "n_head", "dim", "max_seq_len", "codebook_size", "num_codebooks")
            + optional,
            counts=("n_fast_layer",) + tuple(n for n in fallbacks if getattr(self, n) is not None),
            reals=("rope_base", "norm_eps"),
            error=S1ConfigError,
        )
        flags = ("tie_word_embeddings", "use_gradient_checkpointing", "is_reward_model", "scale_codebook_embeddings")
        flags += ATTENTION_FLAGS + tuple(f"fast_{n}" for n in ATTENTION_FLAGS if getattr(self, f"fast_{n}") is not None)
        check_config_flags(self, flags, S1ConfigError)
        if self.n_local_heads == -1:
            self.n_local_heads = self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = find_multiple(int(2 * 4 * self.dim / 3), 256)
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_head
        # The original falls back with `or`: a falsy value (None or 0) takes the slow value.
        self.fast_dim = self.fast_dim or self.dim
        self.fast_n_head = self.fast_n_head or self.n_head
        self.fast_n_local_heads = self.fast_n_local_heads or self.n_local_heads
        self.fast_head_dim = self.fast_head_dim or self.head_dim
        self.fast_intermediate_size = self.fast_intermediate_size or self.intermediate_size
        for name in ATTENTION_FLAGS:
            if getattr(self, f"fast_{name}") is None:
                setattr(self, f"fast_{name}", getattr(self, name))
        if self.n_head % self.n_local_heads or self.fast_n_head % self.fast_n_local_heads:
            raise S1ConfigError("n_head must be a multiple of n_local_heads (slow and fast)")

    def slow_layer(self) -> LayerShape:
        return LayerShape(
            self.dim,
            self.n_head,
            self.n_local_heads,
            self.head_dim,
            self.intermediate_size,
            self.attention_qkv_bias,
            self.attention_o_bias,
            self.attention_qk_norm,
            self.norm_eps,
        )

    def fast_layer(self) -> LayerShape:
        return LayerShape(
            self.fast_dim,
            self.fast_n_head,
            self.fast_n_local_heads,
            self.fast_head_dim,
            self.fast_intermediate_size,
            self.fast_attention_qkv_bias,
            self.fast_attention_o_bias,
            self.fast_attention_qk_norm,
            self.norm_eps,
        )


@dataclass(frozen=True)
class LayerShape:
    """What one transformer block needs (the slow and the fast stack differ only here)."""

    dim: int
    n_head: int
    n_local_heads: int
    head_dim: int
    intermediate_size: int
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    norm_eps: float


def load_dual_ar_config(path: str | Path) -> DualARConfig:
    """Read `config.json` (a folder or the file). Unknown keys fail, as in the original (it passes them all)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    data = read_json_object(path, "S1 config.json", S1ConfigError)
    known = {f.name for f in fields(DualARConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise S1ConfigError(f"{path}: unknown config keys {unknown}")
    if "model_type" not in data:
        raise S1ConfigError(f"{path}: no model_type (expected {MODEL_TYPE!r})")
    try:
        return DualARConfig(**data)
    except TypeError as exc:
        raise S1ConfigError(f"{path}: {exc}") from None


@dataclass
class CodecTransformerConfig:
    """One window-limited causal transformer of the codec (SPEC §2.5)."""

    n_layer: int
    dim: int
    n_head: int
    head_dim: int = 64
    intermediate_size: int | None = None
    window_size: int | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    block_size: int = 4096  # rows of the original's RoPE table; we compute longer tables on demand

    def __post_init__(self):
        if self.intermediate_size is None:
            self.intermediate_size = 3 * self.dim
        sizes = ("dim", "n_head", "head_dim", "intermediate_size", "block_size")
        check_config_numbers(self, sizes=sizes, counts=("n_layer",), error=S1ConfigError)


@dataclass
class CodecConfig:
    """The modded DAC of `modded_dac_vq.yaml` (SPEC §2.1); defaults are the official S1-mini codec."""

    sample_rate: int = 44100
    encoder_dim: int = 64
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    encoder_transformer_layers: tuple[int, ...] = (0, 0, 0, 4)
    encoder_window: int = 512  # hard-coded in the original's encoder block
    general_block_size: int = 16384
    general_head_dim: int = 64
    general_rope_base: float = 10000
    general_norm_eps: float = 1e-5
    latent_dim: int = 1024
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    semantic_codebook_size: int = 4096
    downsample_factor: tuple[int, ...] = (2, 2)
    quantizer_transformer: CodecTransformerConfig = field(
        default_factory=lambda: CodecTransformerConfig(
            n_layer=8, dim=1024, n_head=16, intermediate_size=3072, window_size=128, block_size=4096
        )
    )

    def __post_init__(self):
        sizes = ("sample_rate", "encoder_dim", "decoder_dim", "latent_dim", "n_codebooks", "codebook_size")
        check_config_numbers(self, sizes=sizes + ("codebook_dim", "semantic_codebook_size"), error=S1ConfigError)
        for name in ("encoder_rates", "decoder_rates", "downsample_factor"):
            if not getattr(self, name) or not all(is_whole_number(r, 1) for r in getattr(self, name)):
                raise S1ConfigError(f"{name} must be a list of whole numbers >= 1, got {getattr(self, name)!r}")
        if len(self.encoder_transformer_layers) != len(self.encoder_rates):
            raise S1ConfigError("encoder_transformer_layers must have one count for each of encoder_rates")

    @property
    def hop_length(self) -> int:
        hop = 1
        for rate in self.encoder_rates:
            hop *= rate
        return hop

    @property
    def frame_length(self) -> int:
        """Audio samples per code frame (the quantizer down-samples the latent again)."""
        factor = 1
        for f in self.downsample_factor:
            factor *= f
        return self.hop_length * factor

    @property
    def num_codebooks(self) -> int:
        return 1 + self.n_codebooks

    def encoder_transformer(self, width: int, n_layer: int) -> CodecTransformerConfig:
        return CodecTransformerConfig(
            n_layer=n_layer,
            dim=width,
            n_head=width // 64,
            head_dim=self.general_head_dim,
            intermediate_size=3 * width,
            window_size=self.encoder_window,
            rope_base=self.general_rope_base,
            norm_eps=self.general_norm_eps,
            block_size=self.general_block_size,
        )


def load_codec_config(path: str | Path | None) -> CodecConfig:
    """`None` or a missing file → the official codec; else a `codec_config.json` shaped like the yaml."""
    if path is None or not Path(path).is_file():
        return CodecConfig()
    data = read_json_object(path, "codec config", S1ConfigError)
    try:
        general = data.get("transformer_general_config", {})
        quantizer = data["quantizer"]
        module = quantizer["pre_module"]
        module_cfg = module.get("config", module)
        encoder_dim = int(data["encoder_dim"])
        rates = tuple(int(r) for r in data["encoder_rates"])
        qt = CodecTransformerConfig(
            n_layer=int(module_cfg["n_layer"]),
            dim=int(module_cfg["dim"]),
            n_head=int(module_cfg["n_head"]),
            head_dim=int(module_cfg.get("head_dim", 64)),
            intermediate_size=module_cfg.get("intermediate_size"),
            window_size=module.get("window_size"),
            rope_base=float(module_cfg.get("rope_base", 10000)),
            norm_eps=float(module_cfg.get("norm_eps", 1e-5)),
            block_size=int(module_cfg.get("block_size", 4096)),
        )
        return CodecConfig(
            sample_rate=int(data["sample_rate"]),
            encoder_dim=encoder_dim,
            encoder_rates=rates,
            decoder_dim=int(data["decoder_dim"]),
            decoder_rates=tuple(int(r) for r in data["decoder_rates"]),
            encoder_transformer_layers=tuple(int(n) for n in data["encoder_transformer_layers"]),
            general_block_size=int(general.get("block_size", 16384)),
            general_head_dim=int(general.get("head_dim", 64)),
            general_rope_base=float(general.get("rope_base", 10000)),
            general_norm_eps=float(general.get("norm_eps", 1e-5)),
            latent_dim=int(data.get("latent_dim") or encoder_dim * 2 ** len(rates)),
            n_codebooks=int(quantizer["n_codebooks"]),
            codebook_size=int(quantizer["codebook_size"]),
            codebook_dim=int(quantizer["codebook_dim"]),
            semantic_codebook_size=int(quantizer["semantic_codebook_size"]),
            downsample_factor=tuple(int(f) for f in quantizer["downsample_factor"]),
            quantizer_transformer=qt,
        )
    except S1ConfigError as exc:
        raise S1ConfigError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # (AttributeError: a list where a map goes)
        raise S1ConfigError(f"{path}: not a modded-DAC codec config ({exc!r})") from None
