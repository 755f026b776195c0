"""The CPU decode kernels (core/lm/csrc/cpu_kernels.cpp) against plain torch, and their batch invariance:
a row's result is bit-identical whatever else is in the call."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.lm import kernels, load_lm, paths
from core.lm.norm import RMSNorm
from core.lm.quantize import Int4Linear, dequantize_int4, quantize_int4, quantize_int8
from core.lm.rope import apply_rope, rope_table
from tests.paths import PARITY, process_env
from tests.tolerances import AMX_ROW_LIMIT, FLOAT32_EPS, assert_within, longest_reduction, matmul_bound, network_atol

pytestmark = pytest.mark.skipif(not kernels.cpu_kernels_available(), reason="no C++ compiler for the CPU kernels here")


@pytest.mark.parametrize("in_features", [64, 100, 1030])  # 100, 1030: tails after the 64- and 16-wide loops
@pytest.mark.parametrize("weight_format", ["float32", "bfloat16", "int8"])
def test_linear_rows_equals_the_matmul(in_features, weight_format):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(72, in_features, generator=gen)
    scales = None
    if weight_format == "int8":
        weight, scales = quantize_int8(weight)
    elif weight_format == "bfloat16":
        weight = weight.bfloat16()
    for rows in (1, 3, 4, 5, 8):
        x = torch.randn(rows, in_features, generator=gen)
        expected = F.linear(x, weight.float()) * (1 if scales is None else scales)
        # the sums' rounding, scaled like the output, plus one rounding of the scale multiply
        bound = matmul_bound(x, weight.float()) * (1 if scales is None else scales) + FLOAT32_EPS * expected.abs()
        assert_within(kernels.linear_rows(x, weight, scales), expected, bound)


def test_linear_rows_gives_a_row_the_same_bits_alone_and_in_any_batch():
    gen = torch.Generator().manual_seed(1)
    weight, scales = quantize_int8(torch.randn(96, 1024, generator=gen))
    x = torch.randn(8, 1024, generator=gen)
    for w, s in ((weight.float() * scales[:, None], None), (weight, scales)):
        together = kernels.linear_rows(x, w, s)
        for rows in (slice(0, 1), slice(2, 5), slice(3, 8)):
            assert torch.equal(kernels.linear_rows(x[rows], w, s), together[rows])


@pytest.mark.parametrize("setting", ["kernel", "kernel-t0", "kernel-nopf", "kernel-t0-4r", "kernel-l2", "kernel-l2-4r"])
def test_one_row_takes_the_bits_it_has_in_a_batch_under_every_setting(setting):
    """One activation row runs its own loop (single_rows, or several weight rows at once for "-4r"), several
    rows the batch path: the same sums in the same order, whichever prefetch setting is chosen."""
    gen = torch.Generator().manual_seed(5)
    weight, scales = quantize_int8(torch.randn(90, 1024, generator=gen))
    x = torch.randn(5, 1024, generator=gen)
    for fmt, w, s in (("float32", weight.float() * scales[:, None], None), ("int8", weight, scales)):
        with paths.using(fmt, decode=setting, batch_decode=setting):
            together = kernels.linear_rows(x, w, s)
            for row in range(5):
                assert torch.equal(kernels.linear_rows(x[row : row + 1], w, s), together[row : row + 1]), fmt


def _row_kernels() -> dict[str, tuple]:
    """Every kernel of a few activation rows that a prefill may also call with many, with its weights."""
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(80, 1024, generator=gen)
    q8, s8 = quantize_int8(weight)
    ops = torch.ops.fishtts
    found = {
        "float32": (kernels.linear_rows, weight, None),
        "bfloat16": (kernels.linear_rows, weight.bfloat16(), None),
        "int8": (kernels.linear_rows, q8, s8),
        "int4": (ops.linear_rows_int4, *quantize_int4(weight)),
    }
    if ops.int16_dots_available():
        found["int8-vnni"] = (ops.linear_rows_int8_vnni, q8, s8)
    if ops.vnni_available():
        found["int8-bytes"] = (ops.linear_rows_int8_bytes, q8, s8)
    if ops.int8_amx_available():
        found["int8-amx"] = (ops.linear_rows_int8_amx, q8, s8)
    return found


@pytest.mark.parametrize("kernel", list(_row_kernels()) if kernels.cpu_kernels_available() else [])
def test_a_prefill_call_gives_each_row_the_bits_of_a_decode_call(kernel):
    """More rows than a decode step's run on OpenMP's threads, a step's few on the kernels' own pool:
    either way every row is the same bits (how the rows are split between threads changes nothing)."""
    fn, *weights = _row_kernels()[kernel]
    # (one row more than a step's: the AMX kernel computes at most ten rows itself, more go to another)
    x = torch.randn(kernels.MAX_ROWS + 1, 1024, generator=torch.Generator().manual_seed(4))
    many = fn(x, *weights)
    few = torch.cat([fn(x[: kernels.MAX_ROWS], *weights), fn(x[kernels.MAX_ROWS :], *weights)])
    assert torch.equal(many, few)


def test_every_row_is_computed_once_however_the_pool_splits_the_call():
    """Output sizes that make 1, 2, 3 or 4 pieces (16 rows at least each), called repeatedly while another
    process keeps a core busy, so that the worker often starts late and its pieces are taken from the
    far end of its run: every call gives the same bits (a skipped piece would leave unset memory) and
    they equal the matmul within its rounding."""
    gen = torch.Generator().manual_seed(2)
    cases = []
    for out_features in (1, 17, 33, 48, 64, 100, 1000):
        weight = torch.randn(out_features, 256, generator=gen)
        x = torch.randn(3, 256, generator=gen)
        expected = F.linear(x, weight)
        result = kernels.linear_rows(x, weight)
        assert_within(result, expected, matmul_bound(x, weight))
        cases.append((x, weight, result))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # (its interpreter starting)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for x, weight, result in cases:
                assert torch.equal(kernels.linear_rows(x, weight), result)
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.parametrize("shape", [(3, 100), (1024, 2048 + 5), (3 << 20,)])  # small: a plain clone
def test_huge_page_copy_keeps_the_values_and_outlives_the_original(shape):
    original = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    expected = original.clone()
    copies = [torch.ops.fishtts.huge_page_copy(original) for _ in range(3)]
    original.fill_(0)
    del copies[1]  # freeing one copy leaves the others intact
    for copy in copies:
        assert torch.equal(copy, expected) and copy.data_ptr() != original.data_ptr()
        if copy.numel() * 4 >= 2 << 20:
            assert copy.data_ptr() % (2 << 20) == 0  # aligned to a 2 MiB page


def test_move_to_huge_pages_packs_the_modules_tensors_into_one_region_in_order():
    """Every own tensor (parameters and buffers, large or small) moves, keeps its values and type, and
    lies in one 2 MiB-aligned region in module order, each on a cache line; moved modules stay put."""
    gen = torch.Generator().manual_seed(5)
    float_layer = torch.nn.Linear(1024, 700, bias=True)  # (2.9 MB: a region under 2 MiB is a plain copy)
    int4_layer = Int4Linear(256, 40)
    int4_layer.weight, int4_layer.scales, int4_layer.offsets = quantize_int4(torch.randn(40, 256, generator=gen))
    sharing = torch.nn.Linear(1024, 700, bias=False)
    sharing.weight = float_layer.weight  # (tied weights stay one tensor)
    modules = [float_layer, int4_layer, sharing]
    tensors = [
        (m, name)
        for m in modules[:2]
        for name in ("weight", "bias", "scales", "offsets")
        if getattr(m, name, None) is not None
    ]
    before = {(id(m), name): getattr(m, name).clone() for m, name in tensors}
    x = torch.randn(2, 256, generator=gen)
    expected = int4_layer(x)
    kernels.move_to_huge_pages(modules)
    pointers = []
    for m, name in tensors:
        moved = getattr(m, name)
        assert torch.equal(moved, before[(id(m), name)]) and moved.is_contiguous()
        assert pointers == [] or moved.data_ptr() > pointers[-1]  # in order, one region
        assert moved.data_ptr() % kernels.HUGE_PAGE_ALIGNMENT == 0
        pointers.append(moved.data_ptr())
    assert isinstance(float_layer.weight, torch.nn.Parameter) and not float_layer.weight.requires_grad
    first = float_layer.weight.untyped_storage()
    assert all(getattr(m, name).untyped_storage().data_ptr() == first.data_ptr() for m, name in tensors)
    assert first.data_ptr() % (2 << 20) == 0  # the region starts on a 2 MiB page
    assert sharing.weight is float_layer.weight
    assert torch.equal(int4_layer(x), expected)
    kernels.move_to_huge_pages(modules)  # already moved: nothing changes
    assert float_layer.weight.data_ptr() == pointers[0]


@pytest.mark.skipif(not torch.ops.fishtts.int8_amx_available(), reason="no AMX-INT8 here")
@pytest.mark.parametrize("path", ["kernel-amx", "kernel-amx-t0"])
def test_amx_int8_kernel_uses_exact_integer_sums_of_the_rounded_rows(path):
    """The kernel's arithmetic: each row rounded to integers (x * (AMX_ROW_LIMIT / absmax), to nearest even),
    exact sums with the int8 weights, then the two scales; 16-row tiles, the rows after the last whole
    tile, 1 to 10 rows. Widths that divide 4 KiB take their rows in interleaved groups without the prefetch
    hint (149 rows: whole groups, whole blocks after them, then rows without tiles), in order with it."""
    gen = torch.Generator().manual_seed(4)
    with paths.using("int8", decode=path):
        for width, out in ((192, 40), (256, 300), (1024, 149), (2048, 149)):
            weight, scales = quantize_int8(torch.randn(out, width, generator=gen))
            for rows in (1, 5, 6, 10):
                x = torch.randn(rows, width, generator=gen)
                absmax, limit = x.abs().amax(-1, keepdim=True), torch.tensor(float(AMX_ROW_LIMIT))
                x_scale, inverse = absmax / limit, limit / absmax  # (true divisions: torch multiplies by 1 / a number)
                q = torch.round(x * inverse).clamp(-limit, limit)  # (the largest may round up past the limit)
                sums = q.double() @ weight.double().T  # exact: integers below 2**53
                expected = (sums * x_scale.double()).float() * scales
                actual = torch.ops.fishtts.linear_rows_int8_amx(x, weight, scales)
                assert torch.equal(actual, expected), (width, out, rows)


@pytest.mark.skipif(not torch.ops.fishtts.vnni_available(), reason="no AVX512-VNNI in this build")
def test_int8_bytes_kernel_uses_exact_integer_sums_of_the_rows_rounded_to_int16():
    """The kernel's arithmetic: each row rounded to int16 (x * (32767 / absmax), to nearest even), exact
    integer sums with the int8 weights (the two bytes' sums and the weights' own, recombined), then the row's
    scale in double and the weights' scale; 1 to 4 rows a pass, a second pass, and more rows than a decode
    step's (OpenMP's threads). A width that is not whole 64-groups takes the float-activation kernel."""
    gen = torch.Generator().manual_seed(6)
    ops = torch.ops.fishtts
    for width in (64, 192, 2816):
        weight, scales = quantize_int8(torch.randn(40, width, generator=gen))
        weight[0, :] = -128  # the extremes of a weight and of a digit: -128 * 32767 summed over the row
        weight[1, :] = 127
        for rows in (1, 3, 4, 6, kernels.MAX_ROWS + 1):
            x = torch.randn(rows, width, generator=gen) * torch.logspace(-2, 2, rows).view(rows, 1)
            x[0, :] = x[0, 0].abs()  # every value the row's largest: q = 32767 throughout
            absmax, limit = x.abs().amax(-1, keepdim=True), torch.tensor(32767.0)
            x_scale, inverse = absmax / limit, limit / absmax  # (true divisions: torch multiplies by 1 / a number)
            q = torch.round(x * inverse)
            assert q.abs().amax() <= 32767
            sums = q.double() @ weight.double().T  # exact: integers below 2**53
            expected = (sums * x_scale.double()).float() * scales
            assert torch.equal(ops.linear_rows_int8_bytes(x, weight, scales), expected), (width, rows)
    weight, scales = quantize_int8(torch.randn(24, 100, generator=gen))
    x = torch.randn(2, 100, generator=gen)
    assert torch.equal(ops.linear_rows_int8_bytes(x, weight, scales), kernels.linear_rows(x, weight, scales))


def test_int8_to_bfloat16_is_exact():
    q = torch.arange(-128, 128, dtype=torch.int8).repeat(3, 1)
    assert torch.equal(torch.ops.fishtts.int8_to_bfloat16(q), q.to(torch.bfloat16))


def test_int4_to_bfloat16_rounds_as_dequantize_then_cast():
    packed, scales, offsets = quantize_int4(torch.randn(40, 192, generator=torch.Generator().manual_seed(3)) * 3)
    ours = torch.ops.fishtts.int4_to_bfloat16(packed, scales, offsets)
    assert torch.equal(ours, dequantize_int4(packed, scales, offsets, torch.bfloat16))


def torch_rope(x: torch.Tensor, table: torch.Tensor, monkeypatch) -> torch.Tensor:
    """rope.apply_rope's torch formula (the kernels switched off for the call)."""
    with monkeypatch.context() as patch:
        patch.setitem(kernels._state, "ok", False)
        return apply_rope(x, table)


@pytest.mark.parametrize("heads,head_dim", [(16, 64), (8, 128)])  # v0.2's heads; S1-mini's keys
@pytest.mark.parametrize("table_kind", ["bfloat16", "float32", "per row"])
def test_rope_of_prompt_rows_equals_the_torch_formula_bit_for_bit(heads, head_dim, table_kind, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    batch, length = 2, 330
    table = rope_table(400, head_dim, 10000.0)
    if table_kind == "per row":
        table = table[torch.randint(0, 400, (batch, length), generator=gen)]
    else:
        table = table[:length] if table_kind == "bfloat16" else table[:length].float()
    qkv = torch.randn(batch, length, 3 * heads * head_dim, generator=gen) * 4
    x = qkv[..., heads * head_dim : 2 * heads * head_dim].view(batch, length, heads, head_dim)  # a strided view
    got = apply_rope(x, table)
    assert got.is_contiguous() and torch.equal(got, torch_rope(x, table, monkeypatch))


def test_decode_attention_rotates_keys_as_the_torch_formula(monkeypatch):
    """The keys a decode step writes to the cache: the same bits as torch's rotation (each product rounded,
    then the sum: no fused multiply-add, which GCC's vectorizer makes of the scalar loop)."""
    gen = torch.Generator().manual_seed(6)
    n_head, n_kv_head, head_dim, length = 4, 2, 64, 50
    qkv = torch.randn(3, (n_head + 2 * n_kv_head) * head_dim, generator=gen) * 4
    k_cache, v_cache = (torch.zeros(3, n_kv_head, length, head_dim) for _ in range(2))
    positions = torch.tensor([7, 31, 49])
    table = rope_table(length, head_dim, 10000.0)
    torch.ops.fishtts.decode_attention(qkv, k_cache, v_cache, torch.arange(3), positions, table, n_head, n_kv_head)
    keys = qkv[:, n_head * head_dim : (n_head + n_kv_head) * head_dim].reshape(3, 1, n_kv_head, head_dim)
    expected = torch_rope(keys, table[positions].unsqueeze(1), monkeypatch)[:, 0]
    assert torch.equal(k_cache[torch.arange(3), :, positions], expected)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_head,n_kv_head,head_dim", [(4, 4, 64), (4, 2, 128), (2, 2, 48)])  # v0.2, S1-mini, other
def test_decode_attention_equals_softmax_attention_in_float64(cache_dtype, n_head, n_kv_head, head_dim):
    """Every length around the kernel's blocks of 8 keys (and its tail), every head size it compiles for:
    softmax(q.k / sqrt(D)) @ v over each row's filled prefix, the new key and value included."""
    gen = torch.Generator().manual_seed(8)
    lengths = [1, 7, 8, 9, 16, 23, 50]
    rows, slots = len(lengths), 8
    qkv = torch.randn(rows, (n_head + 2 * n_kv_head) * head_dim, generator=gen) * 2
    k_cache, v_cache = (torch.randn(slots, n_kv_head, 64, head_dim, generator=gen).to(cache_dtype) for _ in range(2))
    table = torch.zeros(64, head_dim // 2, 2)
    table[..., 0] = 1.0  # cos 1, sin 0: RoPE leaves q and k as they are
    slot_of = torch.tensor([5, 0, 7, 2, 1, 6, 3])
    positions = torch.tensor(lengths) - 1
    out = torch.ops.fishtts.decode_attention(qkv, k_cache, v_cache, slot_of, positions, table, n_head, n_kv_head)
    q = qkv[:, : n_head * head_dim].view(rows, n_head, head_dim).double()
    for r, length in enumerate(lengths):
        keys = k_cache[slot_of[r], :, :length].double().repeat_interleave(n_head // n_kv_head, dim=0)
        values = v_cache[slot_of[r], :, :length].double().repeat_interleave(n_head // n_kv_head, dim=0)
        products = q[r, :, None, :] * keys  # [heads, length, D]
        probs = torch.softmax(products.sum(-1) / head_dim**0.5, dim=-1)
        expected = (probs[..., None] * values).sum(1)
        # Each score: a float32 sum of D products (a chain of multiply-adds, then a tree), then e^x
        # within ~2 ulp; the output: a sum of `length` weighted values, then the division by their sum.
        score_error = (head_dim + 8) * FLOAT32_EPS * products.abs().sum(-1) / head_dim**0.5 + 4 * FLOAT32_EPS
        weighted = (probs[..., None] * values.abs()).sum(1)  # [heads, D]
        bound = (2 * score_error.max(-1, keepdim=True).values + (length + 8) * FLOAT32_EPS) * weighted
        assert_within(out[r].view(n_head, head_dim), expected, bound + 1e-30)


@pytest.mark.parametrize("dim", [64, 1024, 1030])  # 1030: a tail after the 16-wide loop
def test_rms_norm_of_decode_rows_equals_the_formula(dim):
    gen = torch.Generator().manual_seed(2)
    norm = RMSNorm(dim, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim, generator=gen))
    x = torch.randn(3, 1, dim, generator=gen) * 5
    xf = x.double()
    expected = xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    got = norm(x)
    assert got.shape == x.shape
    # the sum of squares (~√dim roundings), the scale, and the two products
    assert_within(got, expected, (2 * dim**0.5 + 4) * FLOAT32_EPS * expected.abs())


@pytest.fixture(scope="module")
def model():
    return load_lm(PARITY / "llama_state_dict.pt", str(PARITY / "llama_config.json"))


@pytest.fixture(autouse=True)
def kernel_path():
    """The float32 decode on the kernels, whatever the autotuner chose on this machine."""
    with paths.using("float32", decode="kernel"):
        yield


def decode_after_prefill(model, prompts: list[torch.Tensor], step_frames: torch.Tensor) -> torch.Tensor:
    """Prefill each prompt into its own slot, then decode one frame for all of them in one batch."""
    model.clear_caches()
    model.setup_caches(len(prompts), max(p.shape[1] for p in prompts) + 4)
    with torch.inference_mode():
        for slot, prompt in enumerate(prompts):
            model.prefill(prompt.unsqueeze(0), slot)
        out = model.decode(
            step_frames.unsqueeze(-1), torch.arange(len(prompts)), torch.tensor([p.shape[1] for p in prompts])
        )
    return torch.cat([out.token_logits[:, 0], out.codebook_logits[:, 0].flatten(1)], dim=1)


def prompts_and_frames():
    x = torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"])[0]
    prompts = [x[:, :24], x[:, :9], x[:, 3:20]]  # different lengths, so different positions
    return prompts, x[:, [5, 7, 11]].T.contiguous()


def test_kernel_decode_equals_the_torch_path(model, monkeypatch):
    prompts, frames = prompts_and_frames()
    with_kernels = decode_after_prefill(model, prompts, frames)
    monkeypatch.setitem(kernels._state, "ok", False)
    plain = decode_after_prefill(model, prompts, frames)
    torch.testing.assert_close(with_kernels, plain, atol=network_atol(plain, longest_reduction(model)), rtol=0)


@pytest.mark.parametrize("path", [*paths.KERNEL_VARIANTS, "torch"])
def test_decode_gives_a_sequence_the_same_logits_alone_and_batched(model, monkeypatch, path):
    if path == "torch":
        monkeypatch.setitem(kernels._state, "ok", False)
    elif path not in paths.decode_candidates("float32"):
        pytest.skip(f"{path} is not a float32 decode path here (one thread, or int8 only)")
    else:
        paths.set_paths("float32", decode=path)
    prompts, frames = prompts_and_frames()
    batched = decode_after_prefill(model, prompts, frames)
    for i, prompt in enumerate(prompts):
        alone = decode_after_prefill(model, [prompt], frames[i : i + 1])
        if path != "torch":
            assert torch.equal(alone[0], batched[i])
        else:  # torch's matmul may sum in another order for another batch size
            atol = network_atol(batched[i], longest_reduction(model))
            torch.testing.assert_close(alone[0], batched[i], atol=atol, rtol=0)


def test_a_native_build_is_named_for_this_cpus_feature_flags(monkeypatch):
    """-march=native compiles for this CPU's features: a build found in a cache shared with another CPU model
    (an NFS home, a warmed image) under a name keyed only on 'avx512' could hold AVX512-VNNI code for a CPU
    without it (SIGILL at the first kernel call)."""
    from torch.utils import cpp_extension

    from core.tuning import cpu_flags_digest

    names = []

    def recorded(name, *args, **kwargs):
        names.append(name)
        raise RuntimeError("(not built here)")

    monkeypatch.setattr(cpp_extension, "load", recorded)
    monkeypatch.delenv("FISHTTS_NO_KERNELS", raising=False)
    monkeypatch.delenv("FISHTTS_KERNEL_ARCH", raising=False)
    if not kernels._build() and not names:
        pytest.skip("no kernels on this machine")
    assert names and names[0].endswith("_" + cpu_flags_digest())
    assert len(cpu_flags_digest()) == 10


def test_a_build_lock_left_by_a_dead_process_does_not_hang_the_next_load(tmp_path):
    """A build killed midway (Ctrl-C during a first start, the OOM killer) leaves torch's lock file; every
    later load waited on it forever, even of a finished build. Under the build's OS lock it is a dead one."""
    script = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING, stream=sys.stdout)\n"
        "from core.lm import kernels\n"
        "print('available', kernels.cpu_kernels_available())\n"
    )
    builds = [p for p in kernels._builds_root().iterdir() if p.is_dir() and p.name.startswith("fishtts_cpu_")]
    assert builds, "this process built the kernels (the module's skip) into the same cache"
    for build in builds:
        (build / "lock").write_text("")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=process_env()
    )
    assert "available True" in done.stdout, done.stdout + done.stderr
    assert "removing a kernel build lock left by a process that died" in done.stdout


def test_one_process_at_a_time_builds(tmp_path):
    """The build's turn is an OS lock: a second holder waits for the first (who may hold torch's lock file
    meanwhile: it is not removed under it)."""
    import threading

    build = tmp_path / "fishtts_cpu_x"
    build.mkdir()
    order = []
    with kernels._build_turn(build):
        (build / "lock").write_text("")  # the holder's own build in progress
        second = threading.Thread(target=lambda: kernels._build_turn(build).__enter__() or order.append("second"))
        second.start()
        time.sleep(0.5)
        order.append("first done")
        assert (build / "lock").exists()
    second.join(10)
    assert order == ["first done", "second"] and not (build / "lock").exists()
