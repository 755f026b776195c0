"""VQGAN v1 configuration: dataclasses whose defaults are the official `vqgan_pretrain` preset.

A JSON file in the format of the original YAML's `model` section is also accepted; Hydra
`_target_` keys and training-only entries (optimizer, discriminator, segment_size, ...) are
ignored, and nothing named in a config is ever instantiated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..checkpoints import check_config_numbers, is_whole_number, read_json_object, resolve_config


def _check_lists(config, *names: str, depth: int = 1) -> None:
    """ValueError naming the field unless it is a non-empty list of whole numbers >= 1 (of such lists if depth 2).
    Strides, kernel sizes and channel lists of 0, strings or None would fail deep inside the model."""

    def ok(value, depth: int) -> bool:
        if not isinstance(value, (list, tuple)) or not value:
            return False
        if depth > 1:
            return all(ok(v, depth - 1) for v in value)
        return all(is_whole_number(v, 1) for v in value)

    for name in names:
        value = getattr(config, name)
        if not ok(value, depth):
            kind = "list of non-empty lists" if depth > 1 else "list"
            raise ValueError(f"{name} must be a non-empty {kind} of whole numbers >= 1, got {value!r}")


@dataclass
class MelConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0

    def __post_init__(self):
        check_config_numbers(
            self, sizes=("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"), reals=("f_min", "f_max")
        )


@dataclass
class DownsampleConfig:
    dims: tuple[int, ...] = (80, 512, 256)
    kernel_sizes: tuple[int, ...] = (3, 3)
    strides: tuple[int, ...] = (2, 2)

    def __post_init__(self):
        _check_lists(self, "dims", "kernel_sizes", "strides")

    @property
    def total_strides(self) -> int:
        return math.prod(self.strides)


@dataclass
class WNConfig:
    hidden_channels: int = 256
    kernel_size: int = 3
    dilation_rate: int = 2
    n_layers: int = 6
    out_channels: int | None = None

    def __post_init__(self):
        optional = () if self.out_channels is None else ("out_channels",)
        check_config_numbers(self, sizes=("hidden_channels", "kernel_size", "dilation_rate", "n_layers") + optional)


@dataclass
class VQConfig:
    in_channels: int = 256
    vq_channels: int = 256
    codebook_size: int = 160
    codebook_groups: int = 4

    def __post_init__(self):
        check_config_numbers(self, sizes=("in_channels", "vq_channels", "codebook_size", "codebook_groups"))


@dataclass
class GeneratorConfig:
    initial_channel: int = 80
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)

    def __post_init__(self):
        check_config_numbers(self, sizes=("initial_channel", "upsample_initial_channel"))
        _check_lists(self, "resblock_kernel_sizes", "upsample_rates", "upsample_kernel_sizes")
        _check_lists(self, "resblock_dilation_sizes", depth=2)


@dataclass
class VQGANConfig:
    sample_rate: int = 22050
    hop_length: int = 256
    mel: MelConfig = field(default_factory=MelConfig)
    downsample: DownsampleConfig = field(default_factory=DownsampleConfig)
    mel_encoder: WNConfig = field(default_factory=WNConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    decoder: WNConfig = field(default_factory=lambda: WNConfig(out_channels=80))
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def __post_init__(self):
        check_config_numbers(self, sizes=("sample_rate", "hop_length"))

    @property
    def samples_per_code(self) -> int:
        return self.hop_length * self.downsample.total_strides


PRESETS = {"vqgan_pretrain": VQGANConfig}

# JSON section name -> (attribute, dataclass). All six are required in a JSON config.
_SECTIONS = {
    "mel_transform": ("mel", MelConfig),
    "downsample": ("downsample", DownsampleConfig),
    "mel_encoder": ("mel_encoder", WNConfig),
    "vq_encoder": ("vq", VQConfig),
    "decoder": ("decoder", WNConfig),
    "generator": ("generator", GeneratorConfig),
}


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _section(name: str, cls, data: dict):
    if not isinstance(data, dict):
        raise ValueError(f"VQGAN config: section {name!r} must be an object")
    _check_supported(name, data)
    known = {f.name for f in fields(cls)}
    # Missing keys take the preset value, except out_channels whose original default is None.
    kwargs = {k: _tuples(v) for k, v in data.items() if k in known}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"VQGAN config: bad section {name!r}: {exc}") from None
    except ValueError as exc:  # a bad number: the message starts with the field, so name its section
        raise ValueError(f"VQGAN config: {name}.{exc}") from None


def _check_supported(name: str, data: dict) -> None:
    """Reject settings the original supports but this inference code does not implement."""
    unsupported = {
        "mel_transform": {"center": False},
        "mel_encoder": {"gin_channels": 0},
        "decoder": {"gin_channels": 0},
        "vq_encoder": {"downsample": 1},
        "generator": {"resblock": "1", "gin_channels": 0},
    }.get(name, {})
    for key, supported in unsupported.items():
        if key in data and data[key] != supported:
            raise ValueError(f"VQGAN config: {name}.{key}={data[key]!r} is not supported (only {supported!r})")


def vqgan_config_from_dict(data: dict) -> VQGANConfig:
    """Build a config from the original YAML's `model` section (as a dict)."""
    if isinstance(data.get("model"), dict):
        data = data["model"]
    if data.get("speaker_encoder") is not None:
        raise ValueError("VQGAN config: a speaker_encoder is not supported")
    missing = [name for name in _SECTIONS if name not in data]
    if missing:
        raise ValueError(f"VQGAN config: missing sections {missing}")
    kwargs = {attr: _section(name, cls, data[name]) for name, (attr, cls) in _SECTIONS.items()}
    for key in ("sample_rate", "hop_length"):
        if key in data:
            kwargs[key] = data[key]
    try:
        config = VQGANConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"VQGAN config: {exc}") from None
    try:
        _validate(config)
    except TypeError:
        raise ValueError("VQGAN config: a value has the wrong type (numbers and lists of numbers expected)") from None
    return config


def _validate(c: VQGANConfig) -> None:
    problems = []
    if c.mel.hop_length != c.hop_length or c.mel.sample_rate != c.sample_rate:
        problems.append("mel_transform sample_rate/hop_length differ from the model's")
    if c.downsample.dims[0] != c.mel.n_mels or c.generator.initial_channel != c.mel.n_mels:
        problems.append("downsample.dims[0] and generator.initial_channel must equal n_mels")
    if c.decoder.out_channels != c.mel.n_mels:
        problems.append("decoder.out_channels must equal n_mels")
    if not (c.downsample.dims[-1] == c.mel_encoder.hidden_channels == c.vq.in_channels):
        problems.append("downsample.dims[-1], mel_encoder.hidden_channels and vq_encoder.in_channels must match")
    if c.vq.vq_channels % c.vq.codebook_groups:
        problems.append("vq_channels must be divisible by codebook_groups")
    if c.vq.in_channels != c.decoder.hidden_channels:
        problems.append("vq_encoder.in_channels must equal decoder.hidden_channels")
    g = c.generator
    if not (
        len(g.upsample_rates) == len(g.upsample_kernel_sizes)
        and len(g.resblock_kernel_sizes) == len(g.resblock_dilation_sizes)
    ):
        problems.append("generator kernel/rate lists have mismatched lengths")
    elif math.prod(g.upsample_rates) != c.hop_length:
        problems.append("prod(generator.upsample_rates) must equal hop_length")
    if problems:
        raise ValueError("VQGAN config: " + "; ".join(problems))


def load_vqgan_config(name_or_path: str | Path) -> VQGANConfig:
    """`vqgan_pretrain` (the official preset) or a path to a JSON model section."""
    choice = resolve_config(str(name_or_path), PRESETS, "VQGAN config")
    if not isinstance(choice, Path):
        return PRESETS[choice]()
    return vqgan_config_from_dict(read_json_object(choice, "VQGAN config"))
