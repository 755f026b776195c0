"""The S1 codec's Snake in one C++ pass (csrc/snake.cpp): torch's bits in every layout the codec uses."""

from __future__ import annotations

import pytest
import torch

from core.s1.codec import convs
from core.s1.codec.convs import Snake, fused_snake_available

fused = pytest.mark.skipif(not fused_snake_available(), reason="no C++ kernels (or no MKL sine) here")


def _snake(channels: int) -> Snake:
    snake = Snake(channels)
    alphas = torch.logspace(-3, 1.7, channels) if channels > 1 else torch.tensor([2.5])
    with torch.no_grad():
        snake.alpha.copy_(alphas.view(1, channels, 1))
    return snake


def _input(channels: int, steps: int, time_major: bool) -> torch.Tensor:
    x = torch.randn(2, channels, steps, generator=torch.Generator().manual_seed(channels)) * 30
    x[0, 0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e6, -0.0])  # (the sine's edges)
    return x.transpose(1, 2).contiguous().transpose(1, 2) if time_major else x


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other has NaN, the same dtype and shape."""
    return a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@fused
@pytest.mark.parametrize("channels", [1, 6, 16, 17, 96])
@pytest.mark.parametrize("time_major", [True, False])
def test_the_fused_snake_gives_torchs_bits(monkeypatch, channels, time_major):
    snake, x = _snake(channels), _input(channels, 37, time_major)
    with torch.inference_mode():
        results = [snake(x)]
        for dtype in (torch.float32, torch.bfloat16):  # into a stream's conv buffer, after 3 steps of history
            buffer = torch.zeros(2, 40, channels, dtype=dtype).transpose(1, 2)
            if not time_major:
                buffer = torch.zeros(2, channels, 40, dtype=dtype)
            snake(x, out=buffer[..., 3:])
            assert not buffer[..., :3].any()
            results.append(buffer[..., 3:])
        assert convs._fused_snake_fits(x, snake.alpha, results[-1])  # (the fused kernel computed these)
        monkeypatch.setattr(convs, "_fused_snake_fits", lambda *args: False)
        expected = snake(x)
    assert results[0].stride() == expected.stride()  # the same layout as torch's ops give
    assert _same(results[0], expected) and expected.isnan().any()  # (sin of ±inf is NaN)
    assert _same(results[1], expected) and _same(results[2], expected.to(torch.bfloat16))


@fused
def test_the_kernel_refuses_what_it_cannot_compute():
    x, a = torch.randn(1, 4, 8), torch.ones(4)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.fishtts.snake_(x.double(), a, a, torch.empty(1, 4, 8))
    with pytest.raises(RuntimeError, match="unit stride"):
        torch.ops.fishtts.snake_(x, a, a, torch.empty(1, 4, 16)[..., ::2])  # (every other step)
    with pytest.raises(RuntimeError, match=r"\[C\]"):
        torch.ops.fishtts.snake_(x, torch.ones(3), a, torch.empty(1, 4, 8))


def test_gradients_take_torchs_ops():
    snake, x = _snake(4), torch.randn(1, 4, 9, requires_grad=True)
    snake(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
