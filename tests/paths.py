"""Where the tests' files are: the repository and the golden data (each file stored once)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
PARITY = DATA / "parity"  # the original's models and outputs (weights, configs, tokenizer, cases 1-8)
TEXT_DATA = DATA / "text"  # text front end cases (g2p, normalizer, OpenJTalk, case 6)
# For the tests' subprocesses: the repository first, then what the caller had (a site folder of wheels, say)
PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
# Settings every process the tests start keeps, though a developer's own FISHTTS_ ones are dropped: audio is
# compared with float32 references within float32's rounding, and "auto" picks bfloat16 by a timing on some
# CPUs (test_vqgan_precision.py tests it).
PINNED_SETTINGS = {"FISHTTS_VQGAN_PRECISION": "float32"}


def process_env(drop: tuple[str, ...] = ("FISHTTS_",), **extra: str) -> dict[str, str]:
    """The environment of a process the tests start: this one's without the developer's own settings
    (variables starting with `drop`), with the pinned settings and PYTHONPATH above, then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **PINNED_SETTINGS, "PYTHONPATH": PYTHONPATH, **extra}
