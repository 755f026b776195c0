"""The CUDA path (bfloat16 / float16, static cache, torch.compile). Runs only where CUDA exists;
elsewhere every test is skipped with the reason shown by `pytest -ra`."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from core.lm import SamplingParams, generate, load_lm
from tests.paths import PARITY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")

CONFIG = str(PARITY / "llama_config.json")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_logits_match_float32_cpu(dtype):
    x = torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"])
    cpu = load_lm(PARITY / "llama_state_dict.pt", CONFIG)
    gpu = load_lm(PARITY / "llama_state_dict.pt", CONFIG, device="cuda", dtype=dtype)
    with torch.inference_mode():
        expected = cpu(x).codebook_logits
        got = gpu(x.cuda()).codebook_logits.float().cpu()
    assert (got - expected).abs().max() < 0.1


@pytest.mark.parametrize("static_cache", [False, True])
def test_cuda_float32_generation_equals_cpu(static_cache):
    case = np.load(PARITY / "case5_generate.npz")
    prompt = torch.from_numpy(case["prompt"])
    params = SamplingParams(temperature=0.7, top_p=0.7, top_k=1, repetition_penalty=1.5)
    model = load_lm(PARITY / "llama_state_dict.pt", CONFIG, device="cuda", dtype=torch.float32)
    frames = generate(model, prompt, max_new_tokens=32, eos_token_id=2, params=params, static_cache=static_cache)[0]
    np.testing.assert_array_equal(torch.cat([prompt, frames], 1).numpy(), case["output"])


def test_compiled_decode_runs_and_agrees_on_cuda():
    from core.lm.compile import compile_decode

    case = np.load(PARITY / "case5_generate.npz")
    prompt = torch.from_numpy(case["prompt"])
    params = SamplingParams(temperature=0.7, top_p=0.7, top_k=1, repetition_penalty=1.5)
    model = load_lm(PARITY / "llama_state_dict.pt", CONFIG, device="cuda", dtype=torch.float32)
    compile_decode(model)
    frames = generate(model, prompt, max_new_tokens=32, eos_token_id=2, params=params, static_cache=True)[0]
    result = torch.cat([prompt, frames], 1).numpy()
    assert result.shape == case["output"].shape
    # Kernel fusion may reorder float sums; top-k 1 ties aside, the tokens must agree.
    assert (result == case["output"]).mean() > 0.9


def test_batched_requests_on_cuda_match_their_single_runs():
    """The scheduler on the GPU: a request's greedy tokens alone and in a batch of 4 (float32; the GPU's
    matmuls may sum in another order for another batch size, so tokens, not bits, must agree)."""
    from core.lm import Sequence
    from core.lm.stepper import LMStepper
    from core.scheduler import Job, Scheduler

    model = load_lm(PARITY / "llama_state_dict.pt", CONFIG, device="cuda", dtype=torch.float32)
    params = SamplingParams(temperature=1.0, top_p=None, top_k=1, repetition_penalty=1.5)
    prompts = [torch.from_numpy(np.load(PARITY / "case5_generate.npz")["prompt"])[:, :n] for n in (20, 14, 9, 17)]

    def run(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        scheduler = Scheduler(LMStepper(model), max_batch=4)
        sequences = [Sequence(p, 24, params, eos_token_id=2, code_limit=160, ignore_stop=True) for p in batch]
        done = []
        for seq in sequences:
            finished = threading.Event()
            scheduler.submit(Job([seq], lambda i, f: None, lambda e, f=finished: f.set()))
            done.append(finished)
        for finished in done:
            assert finished.wait(120)
        scheduler.close()
        return [torch.stack(seq.frames, 1).cpu() for seq in sequences]

    together = run(prompts)
    for prompt, batched in zip(prompts, together):
        alone = run([prompt])[0]
        assert (alone == batched).float().mean() >= 0.95


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantizing_on_the_gpu_gives_the_cpus_bits(fmt):
    """A model quantized at load on the GPU holds the same weights as one quantized on the CPU."""
    from core.lm.quantize import quantize_int4, quantize_int8

    quantize = quantize_int8 if fmt == "int8" else quantize_int4
    w = torch.randn(256, 192, generator=torch.Generator().manual_seed(5))
    for cpu, gpu in zip(quantize(w), quantize(w.cuda()), strict=True):
        assert torch.equal(gpu.cpu(), cpu)


def test_the_engine_captures_the_compiled_decode_at_load_and_speaks_as_the_eager_one(tiny_checkpoints):
    """`compile=True` on CUDA: the static step is compiled and replayed at load on the scheduler's thread
    (core/lm/compile.py capture_decode), not in the first request; greedy codes then agree with the eager
    engine's (fusion may reorder float sums: most codes, not bits)."""
    from core.request import SynthesisRequest
    from tests.helpers import load_tiny_lm

    def load(compile: bool):
        return load_tiny_lm(tiny_checkpoints, device="cuda", precision="float32", compile=compile, max_batch_size=4)

    greedy = SamplingParams(temperature=1.0, top_p=None, top_k=1, repetition_penalty=1.5)
    request = SynthesisRequest(text="captured at load", sampling=greedy, max_frames=24, seed=2, use_g2p=False)
    expected = load(False).generate_codes(request, ignore_stop=True)[0]
    engine = load(True)
    assert engine.info.compiled and engine.lm.compiled_decode is not None
    codes = engine.generate_codes(request, ignore_stop=True)[0]
    assert codes.shape == expected.shape and (codes == expected).mean() >= 0.9
