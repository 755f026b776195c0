"""Int8 weight-only quantization: the original's checkpoint format, quantizing at load, quality bounds
against float32 on the parity model, the CPU kernels (int8's and int4's) against the plain formula, and
the CLI flag."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.checkpoints import CheckpointError
from core.lm import SamplingParams, generate, load_lm, paths
from core.lm.kernels import cpu_kernels_available
from core.lm.quantize import Int4Linear, Int8Linear, dequantize_int4, quantize_int4, quantize_int8, unblocked
from core.request import SynthesisRequest
from tests.helpers import load_tiny_lm, run_cli
from tests.paths import PARITY
from tests.tolerances import AMX_ROW_LIMIT, FLOAT32_EPS, assert_within, matmul_bound

CONFIG = str(PARITY / "llama_config.json")


@pytest.fixture(scope="module")
def float_model():
    return load_lm(PARITY / "llama_state_dict.pt", CONFIG)


@pytest.fixture(scope="module")
def int8_model():
    return load_lm(PARITY / "llama_state_dict.pt", CONFIG, quantize="int8")


def original_int8_state_dict(dtype=torch.float32) -> dict[str, torch.Tensor]:
    """What the original's tools/llama/quantize.py --mode int8 saves: every linear as weight + scales."""
    state = torch.load(PARITY / "llama_state_dict.pt", weights_only=True)
    for key in [k for k in state if k.endswith(".weight") and state[k].dim() == 2 and not k.startswith("embeddings")]:
        q, scales = quantize_int8(state[key].to(dtype))
        state[key], state[key[: -len("weight")] + "scales"] = q, scales
    return state


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_quantize_int8_is_symmetric_per_row_within_half_a_step():
    w = torch.randn(64, 96) * torch.linspace(0.01, 2, 64)[:, None]
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and scales.shape == (64,)
    torch.testing.assert_close(scales, w.abs().amax(dim=1) / 127.5)
    assert ((q.float() * scales[:, None] - w).abs() <= scales[:, None] * 0.5001).all()


def test_int8_weights_are_the_original_formula_with_ieee_division():
    """Every value as numpy computes the original's formula in float32 (each division correctly
    rounded). CUDA's product with the reciprocal of a Python number leaves about two scales in three
    1 ulp off, and that moves the rounding of many rows' extreme weights by a whole step."""
    w = torch.randn(256, 96, generator=torch.Generator().manual_seed(5))
    q, scales = quantize_int8(w)
    x = w.numpy()
    absmax = np.maximum(-x.min(axis=1).clip(max=0), x.max(axis=1).clip(min=0))
    expected_scales = absmax / np.float32(127.5)
    expected = np.round(x / expected_scales[:, None]).clip(-128, 127)
    np.testing.assert_array_equal(scales.numpy(), expected_scales)
    np.testing.assert_array_equal(q.numpy(), expected)


def test_every_linear_becomes_int8_and_embeddings_stay_float(int8_model):
    linears = [m for m in int8_model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears and isinstance(int8_model.output, Int8Linear)
    assert int8_model.embeddings.weight.dtype == torch.float32


def test_original_int8_checkpoint_loads_to_the_same_model_as_quantizing_at_load(tmp_path, int8_model):
    path = tmp_path / "model.int8.pth"
    torch.save(original_int8_state_dict(), path)
    stored = load_lm(path, CONFIG)
    assert isinstance(stored.layers[0].attention.wqkv, Int8Linear)
    for (k, a), (_, b) in zip(stored.state_dict().items(), int8_model.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"])
    with torch.inference_mode():
        assert torch.equal(stored(x).token_logits, int8_model(x).token_logits)


def test_bfloat16_scales_of_a_gpu_made_checkpoint_load_as_float32(tmp_path):
    path = tmp_path / "model.int8.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in original_int8_state_dict(torch.bfloat16).items()}}, path)
    model = load_lm(path, CONFIG)
    assert model.output.scales.dtype == torch.float32 and model.output.weight.dtype == torch.int8


def test_int4_checkpoints_are_refused_with_a_clear_message(tmp_path):
    state = torch.load(PARITY / "llama_state_dict.pt", weights_only=True)
    state["output.scales_and_zeros"] = torch.zeros(1, 1, 2)
    torch.save(state, tmp_path / "model.int4.g32.pth")
    with pytest.raises(CheckpointError, match="int4"):
        load_lm(tmp_path / "model.int4.g32.pth", CONFIG)


def test_unknown_quantize_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="int8"):
        load_lm(PARITY / "llama_state_dict.pt", CONFIG, quantize="int3")


def test_int8_logits_stay_close_to_float32_on_case4(float_model, int8_model):
    """Quality stated as a bound: measured 0.41-0.80% relative error by prefill path, 96-100% top-1 agreement
    (README, int8)."""
    x = torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"])
    with torch.inference_mode():
        ref, out = float_model(x), int8_model(x)
    assert relative_error(out.token_logits, ref.token_logits) < 0.01
    assert relative_error(out.codebook_logits, ref.codebook_logits) < 0.01
    assert (out.token_logits.argmax(-1) == ref.token_logits.argmax(-1)).float().mean() >= 0.9
    assert (out.codebook_logits.argmax(-1) == ref.codebook_logits.argmax(-1)).float().mean() >= 0.95


@pytest.mark.parametrize("path", sorted({"torch", *(k for k in paths.KERNEL_VARIANTS if not k.endswith("-1t"))}))
def test_int8_greedy_generation_mostly_agrees_with_float32(float_model, int8_model, path):
    """On every decode path the autotuner may pick (int8 activations on the VNNI path once gave 30%)."""
    if path not in paths.decode_candidates("int8"):
        pytest.skip(f"{path} is not an int8 decode path here")
    case = np.load(PARITY / "case5_generate.npz")
    kwargs = json.loads((PARITY / "case5_generate_config.json").read_text())["generate_kwargs"]
    prompt = torch.from_numpy(case["prompt"])
    params = SamplingParams(temperature=1.0, top_p=None, top_k=1, repetition_penalty=1.0)
    with paths.using("int8", decode=path):
        runs = [
            generate(m, prompt, max_new_tokens=32, eos_token_id=kwargs["eos_token_id"], params=params)[0]
            for m in (float_model, int8_model)
        ]
    n = min(r.shape[1] for r in runs)
    agreement = (runs[0][:, :n] == runs[1][:, :n]).float().mean()
    assert agreement >= 0.9, f"top-1 agreement over the generation: {agreement:.2f}"


def int16_activation_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What rounding x to int16 per 64-group (scale absmax / 32767) can move x @ weight.T: half a step
    per input, times |w|."""
    groups = x.unflatten(-1, (-1, 64))
    half_step = (groups.abs().amax(-1, keepdim=True) / 32767 / 2).expand_as(groups).flatten(-2)
    return half_step.double() @ weight.abs().double().T


def row_activation_bound(x: torch.Tensor, weight: torch.Tensor, limit: int) -> torch.Tensor:
    """What rounding each row of x to integers up to `limit` (scale absmax / limit) can move x @ weight.T:
    half a step per input, times |w|. The AMX kernel's limit is AMX_ROW_LIMIT (three signed bytes), the
    "-bytes" kernel's 32767 (int16)."""
    half_step = (x.abs().amax(-1, keepdim=True) / limit / 2).expand_as(x)
    return half_step.double() @ weight.abs().double().T


@pytest.mark.skipif(not cpu_kernels_available(), reason="no C++ compiler for the CPU kernels here")
@pytest.mark.parametrize("path", sorted(k for k in paths.KERNEL_VARIANTS if not k.endswith("-1t")))
@pytest.mark.parametrize("rows", [1, 3, 4, 8])
@pytest.mark.parametrize("in_features", [64, 100, 192])  # 100: a tail after the 16-wide vectors
def test_int8_kernel_equals_dequantize_then_matmul(rows, in_features, path):
    if path not in paths.decode_candidates("int8"):
        pytest.skip(f"{path} is not an int8 decode path here")
    layer = Int8Linear(in_features, 72)
    layer.weight, layer.scales = quantize_int8(torch.randn(72, in_features))
    x = torch.randn(rows, 1, in_features)
    expected = F.linear(x, layer.weight.float()) * layer.scales
    bound = matmul_bound(x, layer.weight.float()) * layer.scales + FLOAT32_EPS * expected.abs()
    if "-vnni" in path and in_features % 64 == 0:  # (other widths take the float-activation kernel)
        bound = bound + int16_activation_bound(x, layer.weight.float()) * layer.scales
    if "-amx" in path and in_features % 64 == 0:
        bound = bound + row_activation_bound(x, layer.weight.float(), AMX_ROW_LIMIT) * layer.scales
    if "-bytes" in path and in_features % 64 == 0:
        bound = bound + row_activation_bound(x, layer.weight.float(), 32767) * layer.scales
    with paths.using("int8", decode=path):
        assert_within(layer(x), expected, bound)


def int4_kernel_bound(x: torch.Tensor, layer: Int4Linear) -> torch.Tensor:
    """What int4's kernel may differ from x @ dequantize_int4(...).T. It rounds x to int8 per 64-group
    (scale absmax / 127) and adds back 8 * scale * the rounding's sum, so the rounding meets (q - 8) * scale
    of each weight: half a step times that, summed. Its float arithmetic sums per group q * scale * x,
    8 * scale * x and offset * x: a matmul's rounding over those magnitudes."""
    ones, zeros = torch.ones_like(layer.scales), torch.zeros_like(layer.scales)
    rows = slice(0, layer.out_features)
    q = dequantize_int4(layer.weight, ones, zeros)[rows].double()  # the stored 0..15
    scale, offset = (unblocked(t)[rows].repeat_interleave(64, dim=1).double() for t in (layer.scales, layer.offsets))
    groups = x.double().unflatten(-1, (-1, 64))
    half_step = (groups.abs().amax(-1, keepdim=True) / 127 / 2).expand_as(groups).flatten(-2)
    rounding = half_step @ (scale * (q - 8)).abs().T
    magnitudes = scale * q + 8 * scale + offset.abs()
    return rounding + 4 * FLOAT32_EPS * math.sqrt(x.shape[-1]) * (x.abs().double() @ magnitudes.T)


@pytest.mark.skipif(not cpu_kernels_available(), reason="no C++ compiler for the CPU kernels here")
@pytest.mark.parametrize("path", sorted(k for k in paths.KERNEL_VARIANTS if not k.endswith("-1t")))
@pytest.mark.parametrize("rows", [1, 3, 4, 8])
@pytest.mark.parametrize("shape", [(40, 64), (40, 192), (96, 1024)])  # 40: a padded last block of rows
def test_int4_kernel_equals_dequantize_then_matmul_within_its_activation_rounding(rows, shape, path):
    if path not in paths.decode_candidates("int4"):
        pytest.skip(f"{path} is not an int4 decode path here")
    out_features, in_features = shape
    gen = torch.Generator().manual_seed(rows * 1000 + in_features)
    layer = Int4Linear(in_features, out_features)
    layer.weight, layer.scales, layer.offsets = quantize_int4(torch.randn(out_features, in_features, generator=gen))
    x = torch.randn(rows, 1, in_features, generator=gen) * torch.rand(in_features, generator=gen) * 4
    # Row 0 rounds every input the same way (scale 1: each group's largest is 127, the rest k + 0.4), so
    # that the errors add up: only the kernel's correction keeps them within the bound.
    x[0, 0] = torch.arange(in_features) % 100 + 0.4
    x[0, 0, ::64] = 127.0
    weight = dequantize_int4(layer.weight, layer.scales, layer.offsets)[:out_features]
    expected = x.double() @ weight.double().T
    with paths.using("int4", decode=path):
        ours = layer(x)
        assert torch.equal(layer(x[:1]), ours[:1])  # a row alone: the same bits
    assert_within(ours, expected, int4_kernel_bound(x, layer))


def test_engine_quantize_option_generates_codes(tiny_checkpoints):
    engine = load_tiny_lm(tiny_checkpoints, device="cpu", quantize="int8")
    assert isinstance(engine.lm.output, Int8Linear)
    codes = engine.generate_codes(SynthesisRequest(text="hi", use_g2p=False, max_frames=4, seed=1), num_samples=2)
    assert len(codes) == 2 and all(c.shape[0] == 4 for c in codes)


def test_cli_quantize_flag(tiny_checkpoints, tmp_path):
    result = run_cli(
        [
            "generate",
            "--text",
            "hi",
            "--no-g2p",
            "--max-new-tokens",
            "4",
            "--quantize",
            "int8",
            "--checkpoint-path",
            tiny_checkpoints["lm"],
            "--config-name",
            tiny_checkpoints["lm_config"],
            "--tokenizer",
            tiny_checkpoints["tokenizer"],
            "--device",
            "cpu",
            "--output-dir",
            tmp_path,
        ]
    )
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "codes_0.npy").shape[0] == 4


@pytest.mark.parametrize("spread", [0.1, 3.0, 30.0])  # 0.1: the nucleus needs more than 256 candidates
def test_nucleus_from_candidates_keeps_the_same_set_as_the_full_sort(spread):
    from core.lm.sampling import apply_top_p, nucleus

    logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(0)) * spread
    for row in logits:
        for top_p in (0.1, 0.5, 0.9):
            found = nucleus(row, top_p, candidates=256)
            kept = set(torch.nonzero(~apply_top_p(row[None], top_p)[0].isinf()).flatten().tolist())
            if found is None:
                assert len(kept) >= 256  # the candidates did not hold the nucleus: the full sort decides
            else:
                assert set(found[1].tolist()) == kept


def test_fast_sampling_draws_from_the_same_distribution():
    from core.lm.sampling import logits_to_probs, sample, sample_fast

    logits = torch.randn(1, 2000, generator=torch.Generator().manual_seed(1)) * 4
    params = SamplingParams(temperature=0.7, top_p=0.8, top_k=None, repetition_penalty=1.0)
    draws = 4000
    exact = torch.cat([sample(logits, params, None, torch.Generator().manual_seed(i)) for i in range(draws)])
    fast = torch.cat([sample_fast(logits, params, torch.Generator().manual_seed(i), 16) for i in range(draws)])
    p_exact = torch.bincount(exact.long(), minlength=2000).float() / draws
    p_fast = torch.bincount(fast.long(), minlength=2000).float() / draws
    allowed = logits_to_probs(logits, params)[0] > 0
    assert allowed[p_fast > 0].all()
    assert (p_exact - p_fast).abs().max() < 0.03  # ~4 standard errors at p = 0.5
