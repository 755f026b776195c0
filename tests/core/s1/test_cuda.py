"""The S1 CUDA path (bfloat16 Dual-AR, bf16-autocast codec decode). Runs only where CUDA exists;
elsewhere every test is skipped with the reason shown by `pytest -ra`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.s1 import Reference, S1Model, SamplingSettings

from .support import (
    GENERATION_CASES,
    MAX_NEW_FRAMES,
    REF_TEXT,
    S1_CHECKPOINT,
    TARGET_TEXT,
    codec_cases,
    dual_ar_cases,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")


def reference() -> Reference:
    return Reference(torch.from_numpy(dual_ar_cases()["ref_codes"]), REF_TEXT)


def test_cuda_float32_greedy_frames_equal_the_original():
    model = S1Model.from_folder(S1_CHECKPOINT, device="cuda", precision="float32")
    _, temperature, top_p, penalty = GENERATION_CASES["greedy"]
    result = model.generate(TARGET_TEXT, [reference()], SamplingSettings(temperature, top_p, penalty), MAX_NEW_FRAMES)
    np.testing.assert_array_equal(result.frames.numpy(), dual_ar_cases()["gen_greedy_tokens"])


def test_cuda_bfloat16_logits_stay_near_float32():
    """bf16 keeps ~3 significant digits per op; the SPEC measured up to 0.14 (mean 0.016) on these logits."""
    cases = dual_ar_cases()
    model = S1Model.from_folder(S1_CHECKPOINT, device="cuda")
    assert model.lm.norm.weight.dtype == torch.bfloat16
    prompt = torch.from_numpy(cases["prompt"]).cuda()
    with torch.inference_mode():
        logits, _ = model.lm.forward_slow(prompt[None], torch.arange(prompt.size(1), device="cuda"), all_positions=True)
    difference = (logits[0].float().cpu() - torch.from_numpy(cases["forward_slow_logits"])).abs()
    scale = float(np.abs(cases["forward_slow_logits"]).max())
    assert difference.max() < 0.05 * scale and difference.mean() < 0.01 * scale


def test_cuda_synthesis_runs_and_decodes_under_bf16_autocast():
    model = S1Model.from_folder(S1_CHECKPOINT, device="cuda")
    result = model.synthesize(TARGET_TEXT, [reference()], SamplingSettings(), max_new_frames=8, seed=0)
    assert result.audio.size == result.codes.size(1) * model.frame_length and np.isfinite(result.audio).all()
    cases = codec_cases()
    audio = model.decode(torch.from_numpy(cases["codes"][0]))
    assert np.abs(audio - cases["recon_audio"][0, 0]).max() < 0.05 * np.abs(cases["recon_audio"]).max()
    codes = model.encode_reference(cases["signal"], sample_rate=model.sample_rate)  # float32 encode, as the original
    assert (codes.numpy() == cases["codes"][0]).mean() > 0.9


# -- quantized S1 on the GPU (the original's formulas: int8 weights cast per product, int4 dequantized) ---------


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_cuda_quantized_logits_equal_the_cpu_plain_formula(fmt):
    """float32 on both sides: the same weights and formula, so only summation order differs."""
    from core.lm import paths
    from core.s1.load import load_dual_ar

    from .test_quantize import SAME_FORMAT, over_prompts, relative_error

    cpu = load_dual_ar(S1_CHECKPOINT)[0].quantize(fmt)
    gpu = load_dual_ar(S1_CHECKPOINT, device="cuda")[0].quantize(fmt)
    with paths.using(fmt, decode="torch", prefill="float32"):
        expected = over_prompts(cpu)
    ours = over_prompts(gpu)
    for part in expected:
        assert relative_error(ours[part], expected[part]) < SAME_FORMAT, part


def test_cuda_tied_biased_bfloat16_int8_model_keeps_its_biases_and_generates():
    from core.lm.quantize import Int8Linear
    from core.s1.generate import generate

    from .test_quantize import tied_biased_model

    model = tied_biased_model().to(device="cuda", dtype=torch.bfloat16)
    model.build_rope_tables()
    model.quantize("int8")
    assert isinstance(model.output, Int8Linear) and model.embeddings.weight.dtype == torch.bfloat16
    assert model.layers[0].attention.wqkv.bias.dtype == torch.bfloat16
    prompt = torch.from_numpy(dual_ar_cases()["prompt_noref"])
    result = generate(model, prompt, im_end_id=-1, settings=SamplingSettings(), max_new_frames=6)
    assert result.frames.shape == (5, 6)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_cuda_quantized_engine_batches_requests_like_single_runs(fmt):
    """The scheduler on the GPU with quantized linears: greedy codes alone and four at once (the GPU's
    matmuls may sum in another order for another batch size, so most codes, not bits, must agree)."""
    from core.engine import TTSEngine

    from .test_quantize import codes_alone_and_together

    engine = TTSEngine.load_s1(S1_CHECKPOINT, device="cuda", quantize=fmt, max_batch_size=4)
    alone, together = codes_alone_and_together(engine, ["greedy", "greedy_rep1.5"] * 2)
    for a, b in zip(alone, together, strict=True):
        n = min(a.shape[1], b.shape[1])
        assert (a[:, :n] == b[:, :n]).mean() > 0.9


# -- the compiled decode (CUDA graphs) ------------------------------------------------------------------


def test_compiled_decode_is_captured_at_load_and_gives_the_eager_codes():
    """`compile=True` compiles and replays both steps at load (checked there against the eager steps);
    greedy codes through the static scheduler then agree with the eager engine's, alone and four at once
    (bfloat16 fused differently may flip a near-tie, so most codes, not bits)."""
    from core.engine import TTSEngine

    from .test_quantize import codes_alone_and_together

    eager = TTSEngine.load_s1(S1_CHECKPOINT, device="cuda", max_batch_size=4)
    expected, _ = codes_alone_and_together(eager, ["greedy", "greedy_rep1.5"])
    engine = TTSEngine.load_s1(S1_CHECKPOINT, device="cuda", compile=True, max_batch_size=4)
    assert engine.info.compiled and engine.lm.compiled_decode is not None
    alone, together = codes_alone_and_together(engine, ["greedy", "greedy_rep1.5"] * 2)
    for a, b in zip([*expected, *expected], [*alone[:2], *together[:2]], strict=True):
        n = min(a.shape[1], b.shape[1])
        assert (a[:, :n] == b[:, :n]).mean() > 0.9
