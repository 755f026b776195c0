"""The compiled CPU decode step (opt-in here: it compiles for ~1 min cold) generates what eager does."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from core.lm import SamplingParams, generate, load_lm
from tests.paths import PARITY

CONFIG = str(PARITY / "llama_config.json")


@pytest.mark.skipif(
    not os.environ.get("FISHTTS_SLOW_TESTS"), reason="torch.compile takes ~1 min; set FISHTTS_SLOW_TESTS=1"
)
def test_compiled_cpu_decode_generates_the_same_tokens_as_eager():
    from core.lm.compile import compile_decode

    prompt = torch.from_numpy(np.load(PARITY / "case5_generate.npz")["prompt"])
    params = SamplingParams(temperature=1.0, top_p=None, top_k=1, repetition_penalty=1.0)
    eager = load_lm(PARITY / "llama_state_dict.pt", CONFIG, quantize="int8")
    compiled = load_lm(PARITY / "llama_state_dict.pt", CONFIG, quantize="int8")
    compile_decode(compiled)
    runs = [
        generate(m, prompt, max_new_tokens=24, eos_token_id=2, params=params, ignore_stop=True)[0]
        for m in (eager, compiled)
    ]
    assert (runs[0] == runs[1]).float().mean() >= 0.95
