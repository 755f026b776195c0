"""VQGAN v1 audio codec: 22050 Hz audio <-> [4, T] codes at 21.5 Hz."""

from .config import VQGANConfig, load_vqgan_config
from .load import checkpoint_layout, load_vqgan, vqgan_from_state_dict
from .model import VQGAN
from .precision import DEFAULT_VQGAN_PRECISION, VQGAN_PRECISIONS

__all__ = [
    "DEFAULT_VQGAN_PRECISION",
    "VQGAN",
    "VQGANConfig",
    "VQGAN_PRECISIONS",
    "checkpoint_layout",
    "load_vqgan",
    "load_vqgan_config",
    "vqgan_from_state_dict",
]
