"""Every path the autotuner may choose (core/lm/paths.py) against the float32 reference within its format's
tolerance, on whatever CPU runs the suite (a candidate this CPU lacks is skipped); the autotuner's cache;
int4 quality bounds; the plain-torch path of every format (no C++ kernels at all)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import tuning
from core.engine import TTSEngine
from core.lm import SamplingParams, autotune, fused, generate, kernels, load_lm, paths, prefill_attention
from core.lm.quantize import Int4Linear, dequantize_int4, quantize_int4, unblocked
from core.request import SynthesisRequest
from tests.helpers import load_tiny_lm, run_cli
from tests.paths import PARITY

CONFIG = str(PARITY / "llama_config.json")
# Relative logit error against float32 (scale-aware: |a - b| / |b| over all logits). int8: half a step
# of 1/255 of each row's range per weight, measured 0.4-0.5%; int4: 1/15 of each 64-weight group's range,
# measured 6.6% on the parity model (random-init weights); the bounds leave ~2x room.
TOLERANCE = {"float32": 1e-5, "int8": 0.01, "int4": 0.12}
# Between two paths of one format: float32 and int8 differ only in summation order (~1e-6; int8's VNNI
# paths also round the activations to int16 per 64-group or per row, at most 1/65534 of the group's or the
# row's largest, its AMX path to 24 bits per row, 1/16711422 of the row's largest);
# bfloat16 prefill rounds activations to 8 bits (~0.4% per product, averaging down); int4's kernel
# rounds activations to int8 per 64-group (~0.6% of a product).
SAME_FORMAT = {"float32": 2e-5, "int8": 1e-4, "int4": 0.03}
# Prefill paths that round the activations, against the same model's float32 prefill: bfloat16 to 8 bits
# (~0.4% per product, averaging down); int8 to a step of 1/127 of each row's largest magnitude, an error
# of step / sqrt(12) per value, ~0.8% of a Gaussian row's RMS (its largest is ~3.4 RMS at 1024 inputs),
# measured 0.7% on case4's logits (0.8% against float32 weights, with the weights' own 0.4%).
ACTIVATION_ROUNDING = {"bfloat16": 0.02, "int8": 0.02}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def models():
    return {
        fmt: load_lm(PARITY / "llama_state_dict.pt", CONFIG, quantize=None if fmt == "float32" else fmt)
        for fmt in paths.FORMATS
    }


def decode_logits(model, prompts: list[torch.Tensor], frames: torch.Tensor) -> torch.Tensor:
    """Prefill each prompt into its own slot, then one decode step for all of them (1 to 3 rows)."""
    model.clear_caches()
    model.setup_caches(len(prompts), max(p.shape[1] for p in prompts) + 4)
    with torch.inference_mode():
        for slot, prompt in enumerate(prompts):
            model.prefill(prompt.unsqueeze(0), slot)
        out = model.decode(
            frames.unsqueeze(-1), torch.arange(len(prompts)), torch.tensor([p.shape[1] for p in prompts])
        )
    return torch.cat([out.token_logits[:, 0], out.codebook_logits[:, 0].flatten(1)], dim=1)


def prompts_and_frames():
    x = torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"])[0]
    return [x[:, :24], x[:, :9], x[:, 3:20]], x[:, [5, 7, 11]].T.contiguous()


@pytest.fixture(scope="module")
def reference(models):
    """float32 on plain torch: the reference every path is held to."""
    prompts, frames = prompts_and_frames()
    with paths.using("float32", decode="torch"), prefill_attention.using("torch"):
        decoded = decode_logits(models["float32"], prompts, frames)
    with torch.inference_mode():
        forward = models["float32"](torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"]))
    return decoded, forward


ALL_DECODE = sorted({*paths.KERNEL_VARIANTS, "torch", "int8pack"})


@pytest.mark.parametrize("path", ALL_DECODE)
@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_every_decode_path_matches_float32_within_its_format_tolerance(models, reference, fmt, path):
    if path not in paths.decode_candidates(fmt):
        pytest.skip(f"{path} is not a {fmt} decode path on this machine")
    prompts, frames = prompts_and_frames()
    with paths.using(fmt, decode="torch"):
        plain = decode_logits(models[fmt], prompts, frames)
    with paths.using(fmt, decode=path):
        batched = decode_logits(models[fmt], prompts, frames)
        alone = decode_logits(models[fmt], prompts[1:2], frames[1:2])
    assert relative_error(batched, reference[0]) < TOLERANCE[fmt]
    assert relative_error(batched, plain) < SAME_FORMAT[fmt]
    if path.startswith("kernel"):  # the kernels are batch-invariant: a row alone gets the same bits
        assert torch.equal(alone[0], batched[1])


@pytest.mark.parametrize("path", sorted(k for k in paths.KERNEL_VARIANTS if not k.endswith("-1t")))
@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_a_fused_decode_layer_gives_the_same_bits_as_the_modules(models, monkeypatch, fmt, path):
    """fused.py's one C++ call a layer runs the modules' kernels in their order: not one bit differs."""
    if path not in paths.decode_candidates(fmt):
        pytest.skip(f"{path} is not a {fmt} decode path on this machine")
    prompts, frames = prompts_and_frames()
    calls = []
    kind = fused.decode_kind
    monkeypatch.setattr(fused, "decode_kind", lambda *a: calls.append(kind(*a)) or calls[-1])
    with paths.using(fmt, decode=path):
        together = decode_logits(models[fmt], prompts, frames)
        monkeypatch.setattr(fused, "decode_kind", lambda *a: None)
        apart = decode_logits(models[fmt], prompts, frames)
    assert calls and calls[-1] is not None  # the fused op did run
    assert torch.equal(together, apart)


@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_the_layer_stack_gives_the_bits_of_one_call_a_layer(models, monkeypatch, fmt):
    """fused.py's one C++ call a step (LayerStack) runs the layers' own calls in order."""
    kernels = [path for path in paths.decode_candidates(fmt) if path.startswith("kernel")]
    if not kernels:
        pytest.skip("no decode kernel here")
    prompts, frames = prompts_and_frames()
    stacks = []
    stack = fused.layer_stack
    monkeypatch.setattr(fused, "layer_stack", lambda *a: stacks.append(stack(*a)) or stacks[-1])
    with paths.using(fmt, decode=kernels[0]):
        together = decode_logits(models[fmt], prompts, frames)
        monkeypatch.setattr(fused, "layer_stack", lambda *a: None)
        apart = decode_logits(models[fmt], prompts, frames)
    assert stacks and all(s is not None for s in stacks)  # the stack did run
    assert torch.equal(together, apart)


@pytest.mark.parametrize("path", ["float32", "bfloat16", "int8", "kernel"])
@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_every_prefill_path_matches_float32_within_its_format_tolerance(models, reference, fmt, path):
    if path not in paths.prefill_candidates(fmt):
        pytest.skip(f"{path} is not a {fmt} prefill path on this machine")
    x = torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"])
    with torch.inference_mode():
        with paths.using(fmt, prefill="float32"):
            plain = models[fmt](x).codebook_logits
        with paths.using(fmt, prefill=path):
            out = models[fmt](x)
    rounding = ACTIVATION_ROUNDING.get(path, 0.0)
    assert relative_error(out.token_logits, reference[1].token_logits) < TOLERANCE[fmt] + rounding
    assert relative_error(out.codebook_logits, reference[1].codebook_logits) < TOLERANCE[fmt] + rounding
    assert relative_error(out.codebook_logits, plain) < (rounding or SAME_FORMAT[fmt])


def test_int8_prefill_sums_its_rounded_rows_exactly_and_each_row_alone():
    """The int8 matmul's integer sums are exact, so its result is the rounded activations' product on every
    CPU, and a row's result depends on no other row (zero and NaN rows included)."""
    assert kernels.MAX_ROWS < 12
    if not paths.int8_matmul_available():
        pytest.skip("no int8 matmul in this torch")
    gen = torch.Generator().manual_seed(0)
    weight = torch.randint(-128, 128, (48, 320), dtype=torch.int8, generator=gen)
    scales = torch.rand(48, generator=gen) / 100
    x = torch.randn(2, 20, 320, generator=gen) * torch.logspace(-3, 3, 20).view(1, 20, 1)
    x[0, 3] = 0
    x[1, 5, 7] = float("nan")
    with paths.using("int8", prefill="int8"):
        y = paths.linear_int8(x, weight, scales)
        fewer = paths.linear_int8(x[0, 8:], weight, scales)  # (more than a decode step's rows: still prefill)
    rows = x.reshape(-1, 320)
    step = rows.abs().amax(dim=1, keepdim=True) / 127  # the rounding in float32, as the path does it
    q = torch.round(rows / step)
    expected = (q.double() @ weight.double().T * step.double() * scales.double()).view(2, 20, 48)
    usual = torch.ones(2, 20, dtype=torch.bool)
    usual[0, 3] = usual[1, 5] = False
    assert q[usual.view(-1)].abs().amax(dim=1).eq(127).all()
    assert torch.allclose(y[usual].double(), expected[usual], rtol=2e-6, atol=0)  # float32 rescaling only
    assert not y[0, 3].any() and y[1, 5].isnan().all()
    assert torch.equal(fewer, y[0, 8:])
    assert (rows.abs().amax(dim=1) < paths.INT8_SPREAD * rows.square().mean(dim=1).sqrt())[usual.view(-1)].all()


def test_int8_prefill_gives_rows_with_an_outlier_a_second_digit():
    """A row dominated by one value would round its others to nothing at int8: its largest is ~18 times its
    RMS here (over INT8_SPREAD), so its remainder is rounded again, to 1/254 of the step (a few such rows, or
    all of them), and its result stays near the exact product; the other rows keep one digit."""
    if not paths.int8_matmul_available():
        pytest.skip("no int8 matmul in this torch")
    gen = torch.Generator().manual_seed(1)
    weight = torch.randint(-128, 128, (48, 320), dtype=torch.int8, generator=gen)
    scales = torch.rand(48, generator=gen) / 100
    few, every = torch.randn(20, 320, generator=gen), torch.randn(12, 320, generator=gen)
    few[[2, 9], 5] = 1000.0
    every[:, 7] = 1000.0

    def row_errors(x, y):
        exact = x.double() @ (weight.double() * scales.double()[:, None]).T
        return ((y.double() - exact).norm(dim=1) / exact.norm(dim=1)).tolist()

    with paths.using("int8", prefill="int8"):
        errors = row_errors(few, paths.linear_int8(few, weight, scales))
        errors_every = row_errors(every, paths.linear_int8(every, weight, scales))
    step = few[2].abs().max() / 127
    rounded = (torch.round(few[2:3] / step) * step) @ (weight * scales[:, None]).T
    assert row_errors(few[2:3], rounded)[0] > 0.01  # what one digit would leave (1.6%)
    # two digits: a step of 1/(127 * 254) of the largest value, rms step/√12 per input: ~1.6e-4 of the product
    assert max(errors[2], errors[9], *errors_every) < 5e-4
    assert 1e-3 < min(e for i, e in enumerate(errors) if i not in (2, 9))  # the others: one digit, ~1%


# A prompt attention's error against float64: float32's rounding (6e-8) over a score's D-term dot product
# and a row's S-term weighted sum, ~1e-6 of the values' scale at these sizes (measured 2e-7 to 1.3e-6 for
# both paths); the kernel's exp is within 2 ulp.
ATTENTION_TOLERANCE = 1e-5


@pytest.mark.parametrize(
    "shape",
    [(1, 0, 4, 4, 16), (5, 3, 4, 4, 32), (17, 0, 4, 2, 64), (17, 40, 4, 2, 64), (33, 0, 2, 1, 128), (1, 20, 2, 1, 128)]
    + [(100, 0, 16, 16, 64)],
)
def test_every_prompt_attention_path_matches_float64_and_sees_no_later_position(shape):
    """Causal attention of a prompt's positions (new rows, earlier positions, heads, key/value heads, head
    size): torch's and the kernel's (csrc/prefill_attention.cpp; grouped heads, lengths that are not whole
    blocks of 8 queries or 32 keys, queries after cached positions), on q/k/v views laid out as the
    model's projection leaves them."""
    length, before, n_head, n_kv_head, head_dim = shape
    layout = (n_head, n_kv_head, head_dim)
    if kernels.cpu_kernels_available():
        assert prefill_attention.candidates(layout) == ["kernel", "torch"]
    gen = torch.Generator().manual_seed(length + before)
    positions = before + length
    qkv = 2 * torch.randn(2, positions, n_head + 2 * n_kv_head, head_dim, generator=gen)
    q, k, v = (part.transpose(1, 2) for part in qkv.split([n_head, n_kv_head, n_kv_head], dim=2))
    q = q[:, :, before:]  # the new positions' queries, over every position's keys
    repeat = n_head // n_kv_head
    visible = torch.arange(positions) <= torch.arange(before, positions)[:, None]
    expected = F.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(repeat, 1), v.double().repeat_interleave(repeat, 1), visible
    )
    cut = before + length // 2
    later = qkv.clone()
    later[:, cut + 1 :, n_head:] = 5 * torch.randn(later[:, cut + 1 :, n_head:].shape, generator=gen)
    _, k2, v2 = (part.transpose(1, 2) for part in later.split([n_head, n_kv_head, n_kv_head], dim=2))
    for path in prefill_attention.candidates(layout):
        y = prefill_attention.causal_attention(q, k, v, path=path)
        assert y.shape == expected.shape and y.dtype == torch.float32
        assert float((y.double() - expected).abs().max()) <= ATTENTION_TOLERANCE * float(expected.abs().max())
        changed = prefill_attention.causal_attention(q, k2, v2, path=path)  # other keys and values after `cut`
        assert torch.equal(changed[:, :, : cut + 1 - before], y[:, :, : cut + 1 - before])


def test_both_prompt_attention_paths_prefill_the_same_logits(models, reference):
    prompts, frames = prompts_and_frames()
    layout = (4, 4, 32)  # the parity model's heads
    for path in prefill_attention.candidates(layout):
        with paths.using("float32", decode="torch"), prefill_attention.using(path):
            decoded = decode_logits(models["float32"], prompts, frames)
        assert relative_error(decoded, reference[0]) < SAME_FORMAT["float32"]


@pytest.mark.skipif(not kernels.cpu_kernels_available(), reason="no C++ kernels here")
def test_int8_prefill_rounds_and_rescales_in_cpp_with_the_torch_formulas_bits(monkeypatch):
    """The C++ rounding and rescaling around the int8 matmul (csrc/int8_rows.cpp) do the torch code's
    float32 operations one for one: the same bits, for rows with one digit, a few or all with two, a zero
    row, and widths that are not whole vectors of 16 (the rounding alone: the matmul needs 8s)."""
    if not paths.int8_matmul_available():
        pytest.skip("no int8 matmul in this torch")
    gen = torch.Generator().manual_seed(2)
    weight = torch.randint(-128, 128, (40, 336), dtype=torch.int8, generator=gen)
    scales = torch.rand(40, generator=gen) / 100
    few = torch.randn(30, 336, generator=gen) * torch.logspace(-3, 3, 30).view(30, 1)
    few[[4, 17], 9] = 1000.0
    few[3] = 0
    every = torch.randn(12, 336, generator=gen)
    every[:, 7] = -1000.0
    for x in (few, every):
        with paths.using("int8", prefill="int8"):
            fused = paths.linear_int8(x, weight, scales)
            monkeypatch.setattr(paths, "cpu_kernels_available", lambda: False)
            plain = paths.linear_int8(x, weight, scales)
            monkeypatch.undo()
        assert torch.equal(fused, plain)

    odd = torch.randn(9, 37, generator=gen)  # 2 vectors and 5 left over
    odd[2, 36] = 50.0  # (its one outlier in the left-over part)
    q, step, wide, digits, fine = torch.ops.fishtts.quantize_rows_int8(odd, paths.INT8_SPREAD)
    expected_step = odd.abs().amax(dim=1, keepdim=True) / 127
    expected_q = torch.round(odd / expected_step)
    assert torch.equal(step, expected_step) and torch.equal(q, expected_q.to(torch.int8))
    assert wide.tolist() == [2] and torch.equal(fine, expected_step[2:3] / 254)
    rest = odd[2:3] - expected_q[2:3] * expected_step[2:3]
    assert torch.equal(digits, torch.round(rest / fine).clamp(-127, 127).to(torch.int8))


def test_a_torch_without_a_working_int8_matmul_offers_no_int8_prefill(monkeypatch):
    def missing(*_):
        raise RuntimeError("_int_mm: not implemented for this CPU")

    monkeypatch.setattr(torch, "_int_mm", missing)
    paths.int8_matmul_available.cache_clear()
    try:
        assert "int8" not in paths.prefill_candidates("int8") and "float32" in paths.prefill_candidates("int8")
    finally:
        monkeypatch.undo()
        paths.int8_matmul_available.cache_clear()


def test_unknown_or_unavailable_paths_are_refused():
    with pytest.raises(ValueError, match="decode path"):
        paths.set_paths("float32", decode="int8pack")
    with pytest.raises(ValueError, match="prefill path"):
        paths.set_paths("float32", prefill="bfloat16")  # float32 models keep float32 prefill


@pytest.mark.parametrize("in_features", [64, 128, 1024])
def test_int4_packing_round_trips_and_stays_within_half_a_step(in_features):
    w = torch.randn(40, in_features, generator=torch.Generator().manual_seed(0))
    packed, scales, offsets = quantize_int4(w)  # 40 rows: blocks of 16, the last padded
    assert packed.dtype == torch.uint8 and packed.shape == (3, in_features // 8, 16, 4)
    assert scales.shape == offsets.shape == (3, in_features // 64, 16)
    restored = dequantize_int4(packed, scales, offsets)
    assert restored.shape == (48, in_features) and not restored[40:].any()
    restored = restored[:40]

    def per_input(t):  # [blocks, groups, 16] -> [rows, in]
        return unblocked(t)[:40].repeat_interleave(64, dim=1)

    step = per_input(scales)
    assert ((restored - w).abs() <= step * 0.5 + 1e-6).all()
    q = torch.round((restored - per_input(offsets)) / step)
    assert q.min() >= 0 and q.max() <= 15


def test_int4_rejects_widths_it_cannot_pack():
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize_int4(torch.randn(8, 96))


def test_int4_quality_against_float32_on_the_parity_model(models, reference):
    """Published in the README: logits 6.6% relative error, top-1 ~90% (text) / ~89% (codes) on case4;
    greedy decoding parts from float32's within the first few frames (int8: ~35). Bounds leave room for
    other CPUs."""
    assert isinstance(models["int4"].output, Int4Linear)
    x = torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"])
    with torch.inference_mode():
        out = models["int4"](x)
    ref = reference[1]
    assert relative_error(out.token_logits, ref.token_logits) < TOLERANCE["int4"]
    assert (out.token_logits.argmax(-1) == ref.token_logits.argmax(-1)).float().mean() >= 0.75
    assert (out.codebook_logits.argmax(-1) == ref.codebook_logits.argmax(-1)).float().mean() >= 0.8


def test_int4_weights_take_nine_sixteenths_of_a_byte_each(models):
    layer = models["int4"].layers[0].feed_forward.w1
    stored = sum(t.numel() * t.element_size() for t in (layer.weight, layer.scales, layer.offsets))
    assert stored / (layer.in_features * layer.out_features) == pytest.approx(0.5 + 4 / 64)


# -- the autotuner ------------------------------------------------------------------------------------


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FISHTTS_AUTOTUNE", raising=False)
    monkeypatch.setattr(prefill_attention, "_chosen", {})  # (what a test's tuning chooses stays in the test)
    return tmp_path / "fishtts" / "lm_paths.json"


def test_autotune_measures_once_then_uses_the_cached_choice(models, cache_home, monkeypatch):
    previous = {fmt: dict(paths.chosen(fmt)) for fmt in paths.FORMATS}
    try:
        chosen = autotune.tune_model(models["int8"])
        assert chosen["int8"]["decode"] in paths.decode_candidates("int8")
        entry = next(iter(json.loads(cache_home.read_text()).values()))
        assert set(entry["proxy_gb_per_s"]) == set(paths.decode_candidates("int8"))
        one_row, batch = entry["one_row_step_ms"], entry["batch_step_ms"]
        assert set(one_row) <= set(entry["proxy_gb_per_s"]) and set(batch) <= set(entry["proxy_gb_per_s"])
        assert {paths.arithmetic(k) for k in batch} <= {paths.arithmetic(k) for k in one_row}
        # the fastest setting of the chosen arithmetic for each, one and several sequences
        kind = paths.arithmetic(entry["decode"])
        assert paths.arithmetic(entry["batch_decode"]) == kind
        assert one_row[entry["decode"]] == min(v for k, v in one_row.items() if paths.arithmetic(k) == kind)
        assert batch[entry["batch_decode"]] == min(v for k, v in batch.items() if paths.arithmetic(k) == kind)
        assert chosen["int8"]["batch_decode"] == entry["batch_decode"]

        def no_measuring(*_):
            raise AssertionError("measured again")

        monkeypatch.setattr(autotune, "_measure", no_measuring)
        monkeypatch.setattr(autotune, "_measure_attention", no_measuring)
        assert autotune.tune_model(models["int8"]) == chosen
        assert TTSEngine(lm=models["int8"]).lm_paths == {"int8": chosen["int8"]}
        attention = prefill_attention.candidates((4, 4, 32))
        assert chosen["int8"]["prefill_attention"] in attention
        if len(attention) > 1:  # timed and kept: the fastest of the two
            entry = next(v for k, v in json.loads(cache_home.read_text()).items() if "prefill_attention" in k)
            # (the kept times are rounded to the microsecond: two may tie there, so the path's time is the least)
            assert set(entry["ms"]) == set(attention) and entry["ms"][entry["path"]] == min(entry["ms"].values())
            assert entry["path"] == chosen["int8"]["prefill_attention"]
    finally:
        for fmt, choice in previous.items():
            paths.set_paths(fmt, **choice)


def test_prefill_is_timed_on_the_linears_that_see_every_prompt_position(models, cache_home, monkeypatch):
    """The output head takes only the last position's rows in a prefill: timed with the prompt's rows it
    outweighed the blocks' linears and once flipped int4's prefill choice to a 4x slower path."""
    model = models["int8"]
    timed = {}

    def record(fmt, layers, prompt_layers, probe):
        timed[fmt] = (layers, prompt_layers)
        first = paths.decode_candidates(fmt)[0]
        return {"decode": first, "batch_decode": first, "prefill": paths.prefill_candidates(fmt)[0]}

    monkeypatch.setattr(autotune, "_measure", record)
    previous = dict(paths.chosen("int8"))
    try:
        autotune.tune_model(model)
    finally:
        paths.set_paths("int8", **previous)
    layers, prompt_layers = timed["int8"]
    assert model.output in layers and model.output not in prompt_layers
    assert prompt_layers == [m for m in layers if m is not model.output]
    assert {id(m) for m in prompt_layers} >= {id(model.layers[0].feed_forward.w2)}


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", '{"x": 3}'])
def test_a_corrupt_cache_is_ignored_and_rewritten(models, cache_home, garbage):
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text(garbage)
    previous = dict(paths.chosen("float32"))
    try:
        chosen = autotune.tune_model(models["float32"])
    finally:
        paths.set_paths("float32", **previous)
    assert chosen["float32"]["decode"] in paths.decode_candidates("float32")
    assert any(
        v.get("decode") == chosen["float32"]["decode"]
        for v in json.loads(cache_home.read_text()).values()
        if isinstance(v, dict)
    )


def test_a_cached_path_this_machine_cannot_run_is_measured_again(models, cache_home):
    key = autotune._key("float32", autotune.model_formats(models["float32"])["float32"])
    attention_key = autotune._attention_key((4, 4, 32))
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text(
        json.dumps(
            {
                key: {"decode": "kernel-from-the-future", "batch_decode": "kernel", "prefill": "float32"},
                attention_key: {"path": "kernel-from-the-future", "ms": {}},
            }
        )
    )
    previous = dict(paths.chosen("float32"))
    try:
        chosen = autotune.tune_model(models["float32"])["float32"]
    finally:
        paths.set_paths("float32", **previous)
    assert chosen["decode"] in paths.decode_candidates("float32")
    assert chosen["prefill_attention"] in prefill_attention.candidates((4, 4, 32))


def test_a_candidate_slow_in_one_warm_up_gets_a_second_before_it_sits_out():
    """One slow pass (a shared VM's hiccup) must not rule a path out; a path slow twice sits out."""
    costs = {  # per candidate: its warm-ups, then its timed runs
        "kernel": {"warm": [1.0], "timed": [1.0] * autotune.RUNS},
        "torch": {"warm": [3.0, 1.1], "timed": [0.8] * autotune.RUNS},  # slow once, then the fastest
        "slow": {"warm": [5.0, 4.0], "timed": []},
    }
    current, calls = [], []

    def run(kind):
        calls.append((current[-1], kind))
        return costs[current[-1]][kind].pop(0)

    best = autotune._timed_in_turns(list(costs), current.append, lambda: run("warm"), lambda: run("timed"))
    assert best == {"kernel": 1.0, "torch": 0.8, "slow": 4.0}
    assert calls.count(("slow", "warm")) == 2 and ("slow", "timed") not in calls  # sat out after two
    assert calls.count(("kernel", "warm")) == 1  # a fast one is warmed up once


def measure_with_timings(monkeypatch, model, candidates, proxy, step_seconds, contenders) -> dict:
    """The autotuner's int8 decode choice (`_measure`) over `candidates`, given the proxy's seconds per GB and
    the steps' timings (`step_seconds(names, rows)`: seconds by name), with (STEP_CONTENDERS,
    BATCH_CONTENDERS) = `contenders`; the paths in use are restored afterwards."""

    def steps(fmt, names, probe, rows):
        assert probe == model.decode_probe
        return step_seconds(names, rows)

    layers = autotune.model_formats(model)["int8"]
    with paths.using("int8"), monkeypatch.context() as patch:  # (using: the paths in use come back after)
        patch.setattr(paths, "decode_candidates", lambda fmt: candidates)
        patch.setattr(autotune, "STEP_CONTENDERS", contenders[0])
        patch.setattr(autotune, "BATCH_CONTENDERS", contenders[1])
        patch.setattr(autotune, "_decode_seconds_per_gb", lambda fmt, names, layers, rows: proxy)
        patch.setattr(autotune, "_decode_step_seconds", steps)
        return autotune._measure("int8", layers, autotune._prompt_layers(model, layers), model.decode_probe)


def test_the_models_decode_steps_decide_one_sequence_and_a_batch_each(models, monkeypatch):
    """The linears' proxy only sorts out the slow candidates (on an AMD EPYC it ranked int8's two VNNI
    kernels the wrong way round, 18% apart in real steps): the model's own decode steps decide, one row
    and then BATCH_ROWS for the fastest few. The arithmetic with the best geometric mean of its best
    one-row and batch steps wins (torch's faster single row does not make up for its batches), and
    within it one sequence and a batch may take different settings."""
    model = models["int8"]
    kernels_ = [c for c in paths.decode_candidates("int8") if paths.arithmetic(c) == "kernel"][:5]
    if len(kernels_) < 5:
        pytest.skip("needs five float-activation kernel paths (the C++ kernels)")
    candidates = [*kernels_, "torch"]
    proxy_fast, slow, fast, mid, out = kernels_
    batch = autotune.BATCH_ROWS
    scenarios = {  # the proxy's seconds per GB, then per call of _decode_step_seconds: (rows, seconds a step)
        "settings": (
            {proxy_fast: 0.5, slow: 1.0, fast: 1.1, mid: 1.2, out: 3.0, "torch": 5.0},
            [(1, {proxy_fast: 2.0, slow: 1.0, fast: 0.7, mid: 3.0}), (batch, {proxy_fast: 2.0, slow: 0.8, fast: 1.03})],
        ),
        "arithmetic": (
            {"torch": 0.4, proxy_fast: 0.5, slow: 1.0, fast: 1.1, mid: 1.2, out: 3.0},
            [
                (1, {"torch": 0.5, proxy_fast: 2.0, slow: 1.0, fast: 1.5}),
                (batch, {"torch": 4.0, slow: 1.0, fast: 1.5, proxy_fast: 2.5}),
            ],
        ),
    }
    measured = {}
    for name, (proxy, calls) in scenarios.items():
        timed = []

        def fake(names, rows, proxy=proxy, calls=calls, timed=timed):
            expected_rows, seconds = calls[len(timed)]
            timed.append(rows)
            # fastest first: by the proxy, then by one row (the arithmetic's other setting last)
            ranking = proxy if rows == 1 else calls[0][1]
            assert rows == expected_rows and names == sorted(seconds, key=ranking.get)
            return seconds

        entry = measure_with_timings(monkeypatch, model, candidates, proxy, fake, contenders=(4, 3))
        measured[name] = (entry, timed)
    entry, timed = measured["settings"]
    assert timed == [1, batch] and (entry["decode"], entry["batch_decode"]) == (fast, slow)
    assert entry["one_row_step_ms"][fast] == 700.0 and entry["batch_step_ms"][slow] == 800.0
    entry, timed = measured["arithmetic"]
    assert timed == [1, batch] and (entry["decode"], entry["batch_decode"]) == (slow, slow)
    assert entry["proxy_gb_per_s"]["torch"] == 2.5


def test_a_batch_times_the_other_prefetch_settings_of_the_contending_arithmetics(models, monkeypatch):
    """A batch's best setting is often not among one row's fastest (AMD EPYC, int8's bytes kernel: four
    sequences 16.9 ms a step fetching ahead, 22.5 ms with one row's winner, which does not): after the
    fastest one-row contenders, their arithmetics' other prefetch settings on the same threads are timed
    with BATCH_ROWS, and the batch may take one that one row never timed. Other thread counts, settings
    of weight rows at once (which a batch does not use) and other arithmetics are not."""
    model = models["int8"]
    names = ["kernel", "kernel-t0", "kernel-nopf", "kernel-t0-4r", "kernel-nopf-1t"]
    if not set(names) <= set(paths.decode_candidates("int8")):
        pytest.skip("needs the float-activation kernel's settings on two threads (the C++ kernels)")
    candidates = [*names, "torch"]
    proxy = {
        "kernel-nopf": 0.5,
        "torch": 0.6,
        "kernel": 0.7,
        "kernel-t0": 1.0,
        "kernel-t0-4r": 1.1,
        "kernel-nopf-1t": 2.0,
    }
    one_row = {"kernel-nopf": 1.0, "torch": 1.1}
    batch = {"kernel-nopf": 3.0, "torch": 9.0, "kernel": 2.9, "kernel-t0": 2.0}
    timed = []

    def fake(names, rows):
        timed.append((rows, names))
        return {name: (one_row if rows == 1 else batch)[name] for name in names}

    entry = measure_with_timings(monkeypatch, model, candidates, proxy, fake, contenders=(2, 1))
    assert timed == [
        (1, ["kernel-nopf", "torch"]),
        (autotune.BATCH_ROWS, ["kernel-nopf", "kernel", "kernel-t0"]),
    ]
    assert (entry["decode"], entry["batch_decode"]) == ("kernel-nopf", "kernel-t0")


def test_slow_decode_steps_time_fewer_candidates(monkeypatch):
    """A large model's float32 step can take 0.2 s (S1-mini): the steps of each row count stay within
    STEP_BUDGET by timing fewer of the (fastest first) candidates, two at least."""
    candidates = [c for c in paths.decode_candidates("float32") if c.startswith("kernel")][:4]
    if len(candidates) < 4:
        pytest.skip("needs four kernel paths (the C++ kernels)")
    monkeypatch.setattr(autotune, "STEP_BUDGET", 0.4)
    previous = dict(paths.chosen("float32"))
    timed = {}
    try:
        for pause in (0.0, 0.05):  # 3 steps of 0.05 s a candidate: two fit in 0.4 s

            @contextmanager
            def probe(rows, position, pause=pause):
                yield lambda: time.sleep(pause)

            timed[pause] = autotune._decode_step_seconds("float32", candidates, probe, 1)
    finally:
        paths.set_paths("float32", **previous)
    assert list(timed[0.0]) == candidates
    assert list(timed[0.05]) == candidates[:2] and min(timed[0.05].values()) >= 0.05


def test_a_decode_step_candidate_is_timed_by_the_mean_of_its_steps(monkeypatch):
    """A timing runs the steps of STEP_TIMING_SECONDS (three of 10 ms) and takes their mean: a candidate
    whose every third step is quick but whose mean is slower loses, where the best of single steps (as
    before) picked it. The clock is the test's: each step advances it by its candidate's time."""
    candidates = [c for c in paths.decode_candidates("float32") if c.startswith("kernel")][:2]
    if len(candidates) < 2:
        pytest.skip("needs two kernel paths (the C++ kernels)")
    steady, uneven = candidates
    costs = {steady: [0.010], uneven: [0.0125, 0.0125, 0.007]}  # means 10 and 10.67 ms
    calls = dict.fromkeys(candidates, 0)
    clock = [0.0]

    def step():
        path = paths.chosen("float32")["decode"]
        clock[0] += costs[path][calls[path] % len(costs[path])]
        calls[path] += 1

    @contextmanager
    def probe(rows, position):
        yield step

    monkeypatch.setattr(autotune, "time", SimpleNamespace(perf_counter=lambda: clock[0]))  # (autotune's alone)
    previous = dict(paths.chosen("float32"))
    try:
        timed = autotune._decode_step_seconds("float32", candidates, probe, 1)
    finally:
        paths.set_paths("float32", **previous)
    assert timed[steady] == pytest.approx(0.010) and timed[uneven] == pytest.approx(0.0320 / 3)
    assert calls[uneven] == (1 + autotune.RUNS) * 3  # a warm-up and RUNS timings of three steps each


@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_one_sequence_and_a_batch_on_different_settings_decode_the_same_bits(models, fmt):
    """The settings of one arithmetic (prefetch, threads, weight rows at once) change no bit, so the
    autotuner may give one sequence and a batch different ones: a sequence decodes alone (on the one-row
    setting) exactly as in a batch (on the batch setting), in every kernel arithmetic here."""
    by_kind: dict[str, list[str]] = {}
    for path in paths.decode_candidates(fmt):
        if path.startswith("kernel"):
            by_kind.setdefault(paths.arithmetic(path), []).append(path)
    if not by_kind:
        pytest.skip("needs the C++ kernels")
    prompts, frames = prompts_and_frames()
    for kind, settings in by_kind.items():
        one, several = settings[-1], settings[0]  # e.g. "-4r" / "-1t" alone, the default batched
        with paths.using(fmt, decode=one, batch_decode=several):
            batched = decode_logits(models[fmt], prompts, frames)
            for i, prompt in enumerate(prompts):
                alone = decode_logits(models[fmt], [prompt], frames[i : i + 1])
                assert torch.equal(alone[0], batched[i]), (kind, one, several)


def test_one_sequence_and_a_batch_take_paths_of_one_arithmetic_only():
    candidates = paths.decode_candidates("int8")
    if "kernel" not in candidates:
        pytest.skip("needs the C++ kernels")
    previous = dict(paths.chosen("int8"))
    try:
        with pytest.raises(ValueError, match="does not compute as"):
            paths.set_paths("int8", decode="torch", batch_decode="kernel")
        assert paths.chosen("int8") == previous  # (nothing changed)
        paths.set_paths("int8", decode="kernel")
        assert paths.chosen("int8")["batch_decode"] == "kernel"  # a new decode path serves batches too
        with paths.using("int8", batch_decode="kernel-nopf"):
            assert paths.chosen("int8")["decode"] == "kernel" and paths.chosen("int8")["batch_decode"] == "kernel-nopf"
        assert paths.chosen("int8")["batch_decode"] == "kernel"
    finally:
        paths.set_paths("int8", **previous)


def test_the_decode_probe_runs_the_models_own_step_and_gives_the_caches_back(models):
    """What the autotuner times: a real decode step of `rows` sequences on scratch caches, written at the
    position asked for, leaving the model's own caches as they were."""
    model = models["float32"]
    model.clear_caches()
    model.setup_caches(2, 40)
    before = [layer.attention.kv_cache for layer in model.layers]
    with torch.inference_mode(), model.decode_probe(3, 17) as step:
        out = step()
        cache = model.layers[0].attention.kv_cache
        assert cache.k_cache.size(0) == 3
        written = cache.k_cache.abs().sum(dim=(0, 1, 3)) > 0  # per position
        assert written.nonzero().flatten().tolist() == [17]
    assert out.token_logits.shape[:2] == (3, 1) and torch.isfinite(out.token_logits).all()
    assert all(a is b for a, b in zip(before, (layer.attention.kv_cache for layer in model.layers), strict=True))
    assert (model.cache_batch_size, model.cache_seq_len) == (2, 40)
    with torch.inference_mode(), model.decode_probe(1, 10_000) as step:  # (beyond the model: its last position)
        assert step().token_logits.shape[:2] == (1, 1)


def test_a_kernel_close_to_the_fastest_path_wins_over_torch():
    assert autotune._prefer_kernels({"torch": 1.0, "kernel": 1.04, "kernel-t0": 1.2}) == "kernel"
    assert autotune._prefer_kernels({"torch": 1.0, "kernel": 1.2}) == "torch"
    assert autotune._prefer_kernels({"torch": 1.0}) == "torch"


def test_cpu_info_names_the_model_and_only_known_flags():
    info = tuning.cpu_info()
    assert info["model"] and set(info["flags"]) <= set(tuning.CPU_FLAGS)


# -- without the C++ kernels ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_every_format_generates_on_plain_torch_without_the_kernels(models, monkeypatch, fmt):
    """As on a machine without a compiler: the kernels are off, whatever path was chosen."""
    monkeypatch.setitem(kernels._state, "ok", False)
    prompt = torch.from_numpy(np.load(PARITY / "case5_generate.npz")["prompt"])
    params = SamplingParams(temperature=1.0, top_p=None, top_k=1, repetition_penalty=1.0)
    frames = generate(
        models[fmt], prompt, max_new_tokens=6, eos_token_id=2, params=params, num_samples=2, ignore_stop=True
    )
    assert len(frames) == 2 and frames[0].shape[1] == 6 and torch.equal(frames[0], frames[1])


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_cli_quantized_generation_without_kernels(tiny_checkpoints, tmp_path, monkeypatch, mode):
    """FISHTTS_NO_KERNELS=1: a fresh process that never builds the kernels (issue 12 item 7)."""
    monkeypatch.setenv("FISHTTS_NO_KERNELS", "1")
    result = run_cli(
        [
            "generate",
            "--text",
            "hi",
            "--no-g2p",
            "--max-new-tokens",
            "4",
            "--quantize",
            mode,
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


def test_engine_int4_generates_codes(tiny_checkpoints):
    engine = load_tiny_lm(tiny_checkpoints, device="cpu", quantize="int4")
    assert isinstance(engine.lm.output, Int4Linear) and set(engine.lm_paths) == {"int4"}
    assert engine.info.quantize == "int4" and engine.info.lm_paths == engine.lm_paths
    codes = engine.generate_codes(SynthesisRequest(text="hi", use_g2p=False, max_frames=4, seed=1))
    assert codes[0].shape[0] == 4


def test_a_model_keeps_its_own_paths_while_another_of_its_format_loads(tiny_checkpoints, cache_home, monkeypatch):
    """Each model's paths are its own, and its scheduler thread computes with them: the paths were kept per
    format for the whole process, so loading a second int8 model (its own shapes, its own timings) switched
    the first one's arithmetic under it, and its codes for the same request and seed changed (its reported
    paths did not)."""
    plain = {"decode": "torch", "batch_decode": "torch", "prefill": "float32"}
    # the other: the arithmetic furthest from plain here (activations rounded to int16 / int8 where it can)
    decode = paths.decode_candidates("int8")
    other = next((c for c in decode if "-vnni" in c or "-bytes" in c), decode[0])
    prefill = paths.prefill_candidates("int8")
    rounded = next((c for c in ("int8", "bfloat16") if c in prefill), prefill[-1])
    measured = {"decode": other, "batch_decode": other, "prefill": rounded}
    if measured == plain:
        pytest.skip("needs a second int8 arithmetic (the C++ kernels or torch's int8 matmul)")
    choices = iter([plain, measured])
    monkeypatch.setattr(autotune, "read_cache", lambda name: {})  # each load measures
    monkeypatch.setattr(autotune, "_measure", lambda *args: dict(next(choices)))
    previous = dict(paths.chosen("int8"))
    first = load_tiny_lm(tiny_checkpoints, quantize="int8", device="cpu")
    second = None
    try:
        request = SynthesisRequest(text="hello there, this is a test", use_g2p=False, max_frames=24, seed=3)
        before = first.generate_codes(request, ignore_stop=True)[0]
        second = load_tiny_lm(tiny_checkpoints, quantize="int8", device="cpu")
        assert paths.model_table(second.lm)["int8"] == measured and paths.chosen("int8") == measured
        assert first.info.lm_paths["int8"]["decode"] == "torch" and paths.model_table(first.lm)["int8"] == plain
        np.testing.assert_array_equal(first.generate_codes(request, ignore_stop=True)[0], before)
    finally:
        first.close()
        if second is not None:
            second.close()
        paths.set_paths("int8", **previous)
