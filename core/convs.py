"""1-D convolutions run as channels-last 2-D ones (`conv1d` says why), optionally in bfloat16 or on weights
packed once for oneDNN where that measures faster (`choose_packing`): the VQGAN's convs and the S1 codec's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tuning import best_times, measured_choice

log = logging.getLogger(__name__)

T = TypeVar("T")

PACKING_MIN_SPEEDUP = 1.05  # packing must beat torch's own path by this much (a tie keeps torch's)
PACKING_RUNS = 2  # timed streams per setting (the best counts), taken in turns after a warm-up of each
PACKING_METHOD = 1  # how the timings are taken: a choice cached by another method is measured again
PACKING_CACHE = "conv_packing.json"


def compute_dtype(conv: nn.Module) -> torch.dtype:
    """What `conv1d` / `conv_transpose1d` run this conv in (`set_compute_dtype`; float32 by default)."""
    return conv.__dict__.get("compute_dtype", torch.float32)


def set_compute_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """Run module's convs in `dtype` (VQGAN.decode_dtype, the S1 codec's)."""
    for conv in _convs(module):
        conv.__dict__["compute_dtype"] = dtype


def _convs(module: nn.Module):
    return (m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)))


def _kept(conv: nn.Module, name: str, source: Tensor, key: tuple, build: Callable[[], T]) -> T:
    """build(), made from `source` (a weight), kept in conv's __dict__ under `name` until `source` is another
    tensor or `key` changes (a weight's version counts for a weight changed in place)."""
    cached = conv.__dict__.get(name)
    if cached is None or cached[0] is not source or cached[1] != key:
        cached = conv.__dict__[name] = (source, key, build())
    return cached[2]


def _kept_value(conv: nn.Module, name: str):
    """What `_kept` keeps under `name` in conv (None if nothing)."""
    cached = conv.__dict__.get(name)
    return None if cached is None else cached[2]


def _as_2d_weight(conv: nn.Module) -> tuple[Tensor, Tensor | None]:
    """conv's weight as a channels-last [.., .., 1, K] weight and its bias, in its compute dtype."""
    dtype = compute_dtype(conv)
    as_2d = conv.weight.detach().unsqueeze(2).to(dtype).contiguous(memory_format=torch.channels_last)
    return as_2d, None if conv.bias is None else conv.bias.detach().to(dtype)


def _weight_2d(conv: nn.Module) -> tuple[Tensor, Tensor | None]:
    """`_as_2d_weight`, kept until the weight or the dtype changes."""
    w = conv.weight
    return _kept(conv, "_weight_2d", w, (w._version, compute_dtype(conv)), lambda: _as_2d_weight(conv))


def _as_2d_input(conv: nn.Module, x: Tensor) -> Tensor:
    return x.unsqueeze(2).to(compute_dtype(conv)).contiguous(memory_format=torch.channels_last)


def set_packed_weights(module: nn.Module, packed: bool) -> None:
    """Run module's convs on weights packed once for oneDNN (`conv1d` says why), or through torch's ops."""
    for conv in _convs(module):
        conv.__dict__["packed_weights"] = packed


def drop_unused_copies(module: nn.Module) -> None:
    """Drop each conv's weight copy that its setting does not run on (both exist once the two were timed:
    a packed copy of S1's codec decoder is ~250 MB in float32)."""
    for conv in _convs(module):
        packed = conv.__dict__.get("packed_weights", False)
        phases = _kept_value(conv, "_phase_conv")
        for c in (conv,) if phases is None else (conv, phases):
            c.__dict__.pop("_weight_2d" if packed else "_packed_weight", None)


def choose_packing(model: nn.Module, device: torch.device, key: list[str], speedup: Callable[[], float]) -> bool:
    """Set `model.packed_convs` (a codec's decode on packed conv weights, or torch's ops) to what is faster on
    this machine: packing where speedup() (torch's time over packing's, `packed_speedup`) is at least
    PACKING_MIN_SPEEDUP, measured once per machine and `key` (the model's kind, shape and precision) and
    kept in ~/.cache/fishtts/conv_packing.json. Where oneDNN picks a weight's layout by the input's length
    (float32 under AVX2) a packed weight is reordered again and streamed chunks ran no faster (the VQGAN's,
    some 10% slower), hence the measurement. The results are the same either way, to float rounding."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        chosen = False
    else:

        def measure() -> bool:
            measured = speedup()
            log.info(
                "%s: convs on packed weights %s (measured %.2fx torch's own path here)",
                key[0],
                measured >= PACKING_MIN_SPEEDUP,
                measured,
            )
            return measured >= PACKING_MIN_SPEEDUP

        chosen = measured_choice(PACKING_CACHE, [f"method={PACKING_METHOD}", *key], (False, True), measure)
    model.packed_convs = chosen
    drop_unused_copies(model)
    return chosen


def packed_speedup(model: nn.Module, stream: Callable[[], object]) -> float:
    """torch's path's time over packed weights' for stream() (the model's decode as a request streams it),
    each the best of PACKING_RUNS; model's setting is left as it was."""
    chosen = model.packed_convs

    def pack(packed: bool) -> None:
        model.packed_convs = packed

    try:
        best = best_times((False, True), pack, stream, PACKING_RUNS)
    finally:
        model.packed_convs = chosen
    return best[False] / best[True]


def _onednn(x2: Tensor) -> bool:
    """Whether oneDNN can run this conv (a user may turn it off: torch.backends.mkldnn.enabled)."""
    return (
        x2.device.type == "cpu"
        and x2.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def _packs(conv: nn.Module, x2: Tensor) -> bool:
    return conv.__dict__.get("packed_weights", False) and _onednn(x2)


def _packed_weight(conv: nn.Module, x2: Tensor, padding: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    """conv's weight reordered once into the layout oneDNN takes for inputs like x2, and its bias, kept
    until the weight, the dtype or the padding changes (an input oneDNN wants another layout for
    reorders it again). The channels-last weight it is made from is not kept."""
    w = conv.weight

    def build() -> tuple[Tensor, Tensor | None]:
        weight, bias = _as_2d_weight(conv)
        stride, dilation, size = (1, conv.stride[0]), (1, conv.dilation[0]), list(x2.shape)
        if isinstance(conv, nn.ConvTranspose1d):
            packed = torch.ops.mkldnn._reorder_convolution_transpose_weight(
                weight, padding, (0, 0), stride, dilation, conv.groups, size
            )
        else:
            packed = torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, dilation, conv.groups, size)
        return packed, bias

    return _kept(conv, "_packed_weight", w, (w._version, compute_dtype(conv), padding), build)


def conv1d(conv: nn.Conv1d, x: Tensor, out_dtype: torch.dtype | None = None, padding: int | None = None) -> Tensor:
    """conv(x) as a channels-last 2-D conv: x86's oneDNN computes in that layout, and a contiguous 1-D
    conv spent as long again copying into and out of it (Intel Xeon, HiFi-GAN's convs: float32 ~2x,
    bfloat16 ~6x slower). The result [B, C, T] is time-major in memory (channels innermost), as the
    next conv takes it; pointwise ops keep that. A conv set to bfloat16 rounds its input and weight
    and returns x's dtype, or `out_dtype` (a resblock's first conv hands bfloat16 to the second, which
    would round it anyway): the residual sums stay float32 (the audio's SNR against float32: 42 dB on
    the official-size random VQGAN, 38 dB with everything in bfloat16).

    A conv set to packed weights (`set_packed_weights`) calls oneDNN with a weight it reordered once:
    through F.conv2d oneDNN reorders the weight on every call, which costs a streamed chunk's small
    convs up to 1.5-3x their arithmetic in bfloat16 on AMX (Intel Xeon: 256 channels, kernel 11, 306
    steps 373 against 239 us; a 512 -> 256 upsampling of 42 frames 797 against 245 us). Where oneDNN's
    weight layout depends on the input's length (AVX2 float32), a packed weight is reordered again at
    other lengths, and streamed chunks ran no faster: so it is measured per machine (`choose_packing`).
    The same products either way, so the same results within float rounding (bit for bit where F.conv2d
    takes oneDNN too). `padding`: zeros on both ends instead of the conv's own."""
    stride, dilation = (1, conv.stride[0]), (1, conv.dilation[0])
    padding = (0, conv.padding[0] if padding is None else padding)
    x2 = _as_2d_input(conv, x)
    if _packs(conv, x2):
        packed, bias = _packed_weight(conv, x2, padding)
        y = torch.ops.mkldnn._convolution_pointwise(
            x2, packed, bias, padding, stride, dilation, conv.groups, "none", [], ""
        )
    elif dilation[1] > 1 and x2.dtype == torch.float32 and _onednn(x2):
        # ATen gives a float32 dilated conv of under 20480 input values (a streamed chunk's) to its native
        # loop, not oneDNN: the WN's 256 -> 512 channels over 64 frames took 620 us there, 240 in oneDNN.
        y = torch.ops.aten.mkldnn_convolution(x2, *_weight_2d(conv), padding, stride, dilation, conv.groups)
    else:
        y = F.conv2d(x2, *_weight_2d(conv), stride, padding, dilation, conv.groups)
    return y.squeeze(2).to(out_dtype or x.dtype)


def conv_transpose1d(conv: nn.ConvTranspose1d, x: Tensor, padding: int | None = None) -> Tensor:
    """conv(x) for a transposed conv (with `padding` instead of its own, if given), as `conv1d` does."""
    pad = (0, conv.padding[0] if padding is None else padding)
    stride, dilation = (1, conv.stride[0]), (1, conv.dilation[0])
    x2 = _as_2d_input(conv, x)
    if _packs(conv, x2):
        packed, bias = _packed_weight(conv, x2, pad)
        y = torch.ops.mkldnn._convolution_transpose_pointwise(
            x2, packed, bias, pad, (0, 0), stride, dilation, conv.groups, "none", [], ""
        )
    else:
        weight, bias = _weight_2d(conv)
        y = F.conv_transpose2d(x2, weight, bias, stride, pad, (0, 0), conv.groups, dilation)
    return y.squeeze(2).to(x.dtype)


def causal_conv_transpose1d(
    conv: nn.ConvTranspose1d, x: Tensor, with_history: bool = False, out_dtype: torch.dtype | None = None
) -> Tensor:
    """conv(x) without its last (kernel - stride) outputs, stride outputs per input, computed as a stride-1
    conv of `phase_taps` taps with stride x the output channels, one set per phase: oneDNN ran S1's
    transposed convs at 27-130 GMAC/s (1536 -> 768 channels, kernel 16, stride 8 over 65 frames: 45 ms in
    bfloat16 on AMX), and the same products as a conv ~1 TMAC/s (its weight, reordered, is a second copy of
    the transposed conv's: 114 MB for S1's codec in float32). The phases, time-major as conv1d lays
    them out, are the transposed conv's output by a view. `with_history`: x starts with the phase_taps - 1
    inputs before those whose outputs are wanted (a stream's), else those are zeros. `out_dtype`: as conv1d's."""
    phases = _phase_conv(conv)
    if with_history:
        z = conv1d(phases, x, out_dtype, padding=0)
    else:  # (zeros on both ends, the right end's outputs dropped: no padded copy of x)
        z = conv1d(phases, x, out_dtype, padding=phases.kernel_size[0] - 1)[..., : x.shape[-1]]
    batch, channels, steps = z.shape
    stride = conv.stride[0]
    return z.transpose(1, 2).reshape(batch, steps * stride, channels // stride).transpose(1, 2)


def phase_taps(conv: nn.ConvTranspose1d) -> int:
    """Inputs each output of a causal transposed conv depends on: the last of them its own."""
    return -(-conv.kernel_size[0] // conv.stride[0])


def _phase_conv(conv: nn.ConvTranspose1d) -> nn.Conv1d:
    """The stride-1 conv of `causal_conv_transpose1d`, made once per weight; it runs as `conv` is set to
    (compute dtype, packed weights). Output channel r * out + o is output o's phase r: output q * stride + r
    of the transposed conv, the sum over taps j of w[.., .., r + j * stride] x[q - j]."""
    if conv.groups != 1 or conv.dilation != (1,) or conv.padding != (0,) or conv.output_padding != (0,):
        raise ValueError("a causal transposed conv has one group, no dilation and no padding")
    w = conv.weight

    def build() -> nn.Conv1d:
        (c_in, c_out, kernel), stride, taps = w.shape, conv.stride[0], phase_taps(conv)
        with torch.inference_mode(False), torch.no_grad():  # (weights: tensors with a version, as the conv's)
            taps_weight = F.pad(w.detach(), (0, taps * stride - kernel)).view(c_in, c_out, taps, stride)
            # [stride, out, in, taps], the taps oldest input first (a conv's order)
            weight = taps_weight.permute(3, 1, 0, 2).flip(-1).reshape(stride * c_out, c_in, taps).contiguous()
            with torch.device("meta"):
                phases = nn.Conv1d(c_in, stride * c_out, taps, bias=conv.bias is not None)
            phases.weight = nn.Parameter(weight, requires_grad=False)
            if conv.bias is not None:
                phases.bias = nn.Parameter(conv.bias.detach().repeat(stride), requires_grad=False)
        return phases

    phases = _kept(conv, "_phase_conv", w, w._version, build)
    phases.__dict__["compute_dtype"] = compute_dtype(conv)
    phases.__dict__["packed_weights"] = conv.__dict__.get("packed_weights", False)
    return phases


def join_time(*parts: Tensor) -> Tensor:
    """The parts one after another along time [.., C, T], time-major in memory as `conv1d`'s outputs are:
    torch.cat (and F.pad) would lay it out channel-major, and the next conv would copy it back."""
    return torch.cat([p.transpose(-1, -2) for p in parts], dim=-2).transpose(-1, -2)


def pad_time(x: Tensor, left: int, right: int) -> Tensor:
    """x [.., C, T] with `left` and `right` zero steps around it, laid out as `join_time` lays it."""
    return join_time(x.new_zeros(*x.shape[:-1], left), x, x.new_zeros(*x.shape[:-1], right))
