"""core.convs: every conv the VQGAN and the S1 codec run (dilated, strided, grouped, transposed; float32 and
bfloat16) is the conv within its arithmetic's rounding on each path (oneDNN with the weight packed once,
torch's ops, and those with oneDNN turned off), and a packed weight follows its conv's weight and compute
dtype."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from core.convs import causal_conv_transpose1d, conv1d, conv_transpose1d, phase_taps, set_packed_weights
from tests.tolerances import BFLOAT16_EPS, FLOAT32_EPS

CONVS = [  # (in, out, kernel, stride, dilation, groups, frames)
    (64, 96, 3, 1, 2, 1, 9),  # a WN layer's dilated conv over a streamed chunk's few frames
    (64, 96, 3, 1, 8, 1, 40),
    (64, 96, 3, 1, 32, 1, 80),
    (32, 32, 11, 1, 5, 1, 300),  # a resblock's conv
    (48, 24, 7, 2, 1, 1, 50),  # the S1 codec's strided and grouped (depthwise) convs
    (32, 32, 7, 1, 1, 32, 60),
]
TRANSPOSED = [  # (in, out, kernel, stride, frames)
    (64, 32, 16, 8, 11),
    (32, 16, 4, 2, 37),
]


PATHS = ["packed", "torch", "no onednn"]


def _take_path(conv: torch.nn.Module, path: str, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", path != "no onednn")
    set_packed_weights(conv, path == "packed")


def _random_(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / 8)
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen))


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What the conv computes with: t rounded to its compute dtype, exactly, in float64."""
    return t.detach().to(dtype).double()


def _assert_is_the_conv(actual, x, module, dtype, reference, products: int) -> None:
    """actual against the float64 conv of the inputs as rounded to `dtype`: each output is a float32 sum
    of `products` products (bfloat16's also rounded once more at the end)."""
    args = (_rounded(x, dtype), _rounded(module.weight, dtype), _rounded(module.bias, dtype))
    expected = reference(*args)
    magnitude = reference(*(a.abs() for a in args))
    ulps = 4 * FLOAT32_EPS * products + (BFLOAT16_EPS if dtype == torch.bfloat16 else 0.0)
    assert actual.shape == expected.shape and actual.dtype == x.dtype
    assert bool(((actual.double() - expected).abs() <= ulps * magnitude).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_a_conv_is_the_conv(path, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    for cin, cout, k, stride, dilation, groups, frames in CONVS:
        pad = (k - 1) * dilation // 2
        conv = torch.nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation, padding=pad, groups=groups)
        _random_(conv, gen)
        conv.__dict__["compute_dtype"] = dtype
        _take_path(conv, path, monkeypatch)
        x = torch.randn(2, cin, frames, generator=gen)
        with torch.inference_mode():
            actual = conv1d(conv, x)
        reference = partial(F.conv1d, stride=stride, padding=pad, dilation=dilation, groups=groups)
        _assert_is_the_conv(actual, x, conv, dtype, reference, k * cin // groups + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_a_transposed_conv_is_the_conv(path, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    for cin, cout, k, stride, frames in TRANSPOSED:
        conv = torch.nn.ConvTranspose1d(cin, cout, k, stride=stride, padding=(k - stride) // 2)
        _random_(conv, gen)
        conv.__dict__["compute_dtype"] = dtype
        _take_path(conv, path, monkeypatch)
        x = torch.randn(1, cin, frames, generator=gen)
        for padding in (None, 0):  # its own, and none (the streamed generator's)
            pad = conv.padding[0] if padding is None else padding
            with torch.inference_mode():
                actual = conv_transpose1d(conv, x, padding)
            reference = partial(F.conv_transpose1d, stride=stride, padding=pad)
            _assert_is_the_conv(actual, x, conv, dtype, reference, k * cin + 1)


@pytest.mark.parametrize("transposed", [False, True])
def test_a_packed_weight_follows_its_conv(transposed):
    """The weight oneDNN packs once is packed again when the conv's weight changes in place or its
    compute dtype changes (VQGAN.decode_dtype), never run stale."""
    gen = torch.Generator().manual_seed(5)
    make = torch.nn.ConvTranspose1d if transposed else torch.nn.Conv1d
    conv = make(16, 16, 4, stride=2) if transposed else make(16, 16, 3, padding=1)
    _random_(conv, gen)
    set_packed_weights(conv, True)
    run = conv_transpose1d if transposed else conv1d
    x = torch.randn(1, 16, 20, generator=gen)
    with torch.inference_mode():
        before = run(conv, x)
    with torch.no_grad():
        conv.weight.mul_(-1)
    reference = partial(F.conv_transpose1d, stride=2) if transposed else partial(F.conv1d, padding=1)
    with torch.inference_mode():
        flipped = run(conv, x)
        conv.__dict__["compute_dtype"] = torch.bfloat16
        rounded = run(conv, x)
    assert "_packed_weight" in conv.__dict__ and not torch.equal(before, flipped)
    _assert_is_the_conv(flipped, x, conv, torch.float32, reference, 16 * 4 + 1)
    _assert_is_the_conv(rounded, x, conv, torch.bfloat16, reference, 16 * 4 + 1)


CAUSAL_TRANSPOSED = [  # (in, out, kernel, stride, frames): S1's (kernel 2 x stride, and stride alone) and others
    (48, 24, 16, 8, 9),
    (24, 12, 4, 2, 30),
    (16, 16, 2, 2, 7),
    (16, 8, 5, 2, 11),  # a kernel that is no whole number of strides
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_a_causal_transposed_conv_as_phases_is_the_transposed_conv(path, dtype, monkeypatch):
    """causal_conv_transpose1d: the transposed conv's output less its last kernel - stride steps, whole and
    chunk by chunk (each chunk given the inputs before it)."""
    gen = torch.Generator().manual_seed(6)
    for cin, cout, k, stride, frames in CAUSAL_TRANSPOSED:
        conv = torch.nn.ConvTranspose1d(cin, cout, k, stride=stride)
        _random_(conv, gen)
        conv.__dict__["compute_dtype"] = dtype
        _take_path(conv, path, monkeypatch)
        x = torch.randn(1, cin, frames, generator=gen)

        def reference(x, w, b, stride=stride, k=k):
            return F.conv_transpose1d(x, w, b, stride=stride)[..., : x.shape[-1] * stride]

        with torch.inference_mode():
            whole = causal_conv_transpose1d(conv, x)
            context = phase_taps(conv) - 1
            padded = torch.cat([x.new_zeros(1, cin, context), x], dim=-1)
            chunks = [
                causal_conv_transpose1d(conv, padded[..., start : start + context + 4], with_history=True)
                for start in range(0, frames, 4)
            ]
        products = phase_taps(conv) * cin + 1
        _assert_is_the_conv(whole, x, conv, dtype, reference, products)
        _assert_is_the_conv(torch.cat(chunks, dim=-1), x, conv, dtype, reference, products)


def test_a_transposed_conv_with_groups_is_no_causal_phase_conv():
    with pytest.raises(ValueError, match="one group"):
        causal_conv_transpose1d(torch.nn.ConvTranspose1d(4, 4, 4, stride=2, groups=2), torch.zeros(1, 4, 3))
