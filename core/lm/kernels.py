"""A small C++ CPU kernel for int8 weight-only linears at decode batch sizes (built on first use).

Why: at batch 1-8 a decode step is a chain of matrix-vector products bound by memory bandwidth;
reading int8 weights moves 4x fewer bytes than float32, but torch's own int8 paths run at
~1 GB/s on CPU here. The kernel converts each weight vector once and feeds up to 8 rows of
activations, so a batch of N samples reads the weights once. It is compiled with -march=native
(AVX-512 or AVX2, whatever the machine has) into torch's extension cache, keyed by the CPU.
"""

from __future__ import annotations

import logging
import os
import platform

import torch

log = logging.getLogger(__name__)

MAX_ROWS = 8  # activation rows per call; more rows go through dequantize + matmul

_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// GCC vector types: one source that becomes AVX-512 or AVX2 code under -march=native.
typedef float f32x16 __attribute__((vector_size(64)));

static inline f32x16 load16(const float* p) { f32x16 v; __builtin_memcpy(&v, p, sizeof v); return v; }

// 16 int8 weights -> 16 floats (GCC's generic conversion of int8 vectors is scalar, so say it).
static inline f32x16 widen16(const int8_t* p) {
#if defined(__AVX512F__)
  return (f32x16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
#elif defined(__AVX2__)
  __m256 halves[2] = {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))),
                      _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8))))};
  f32x16 v; __builtin_memcpy(&v, halves, sizeof v); return v;
#else
  f32x16 v; for (int j = 0; j < 16; ++j) v[j] = (float)p[j]; return v;
#endif
}

// y[b, o] = s[o] * sum_i x[b, i] * w[o, i] for B activation rows and R weight rows at a time:
// every weight vector is widened once for all B rows, every x vector loaded once for all R rows,
// and R * B independent accumulators (and R weight streams) keep the core busy.
template <int B, int R>
static void block(const float* x, const int8_t* w, const float* s, float* y, int64_t I, int64_t O, int64_t o) {
  f32x16 acc[R][B] = {};
  int64_t i = 0;
  for (; i + 16 <= I; i += 16) {
    f32x16 wf[R];
    #pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wf[r] = widen16(w + (o + r) * I + i);
    #pragma GCC unroll 8
    for (int b = 0; b < B; ++b) {
      const f32x16 xv = load16(x + b * I + i);
      #pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][b] += xv * wf[r];
    }
  }
  for (int r = 0; r < R; ++r) {
    const int8_t* wo = w + (o + r) * I;
    for (int b = 0; b < B; ++b) {
      float sum = 0.f;
      for (int j = 0; j < 16; ++j) sum += acc[r][b][j];
      for (int64_t k = i; k < I; ++k) sum += x[b * I + k] * (float)wo[k];
      y[b * O + o + r] = sum * s[o + r];
    }
  }
}

template <int B>
static void rows(const float* x, const int8_t* w, const float* s, float* y, int64_t I, int64_t O,
                 int64_t begin, int64_t end) {
  constexpr int R = B <= 2 ? 4 : (B <= 4 ? 2 : 1);
  int64_t o = begin;
  for (; o + R <= end; o += R) block<B, R>(x, w, s, y, I, O, o);
  for (; o < end; ++o) block<B, 1>(x, w, s, y, I, O, o);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.size(0) <= 8, "x: float32 [B<=8, in]");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous() && w.size(1) == x.size(1), "w: int8 [out, in]");
  TORCH_CHECK(s.scalar_type() == at::kFloat && s.numel() == w.size(0), "s: float32 [out]");
  auto xc = x.contiguous();
  auto sc = s.contiguous();
  const int64_t B = x.size(0), I = w.size(1), O = w.size(0);
  auto y = at::empty({B, O}, x.options());
  const float* xp = xc.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = sc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, O, 64, [&](int64_t begin, int64_t end) {
    switch (B) {
      case 1: rows<1>(xp, wp, sp, yp, I, O, begin, end); break;
      case 2: rows<2>(xp, wp, sp, yp, I, O, begin, end); break;
      case 3: rows<3>(xp, wp, sp, yp, I, O, begin, end); break;
      case 4: rows<4>(xp, wp, sp, yp, I, O, begin, end); break;
      case 5: rows<5>(xp, wp, sp, yp, I, O, begin, end); break;
      case 6: rows<6>(xp, wp, sp, yp, I, O, begin, end); break;
      case 7: rows<7>(xp, wp, sp, yp, I, O, begin, end); break;
      default: rows<8>(xp, wp, sp, yp, I, O, begin, end); break;
    }
  });
  return y;
}

TORCH_LIBRARY(fishtts, m) { m.def("int8_linear(Tensor x, Tensor w, Tensor s) -> Tensor"); }
TORCH_LIBRARY_IMPL(fishtts, CPU, m) { m.impl("int8_linear", &int8_linear); }
"""

_state: dict[str, bool] = {}


def int8_kernel_available() -> bool:
    """Build (or load from cache) the kernel once per process; False if no compiler works."""
    if "ok" not in _state:
        _state["ok"] = _build()
    return _state["ok"]


def _build() -> bool:
    if os.environ.get("FISHTTS_NO_KERNELS") or platform.machine() not in ("x86_64", "AMD64", "aarch64"):
        return False
    try:
        from torch.utils.cpp_extension import load_inline

        # The binary is built for this CPU (-march=native): key the cache by its capability.
        name = f"fishtts_int8_{torch.backends.cpu.get_cpu_capability().lower()}"
        load_inline(name, cpp_sources=_SOURCE, is_python_module=False, verbose=False,
                    extra_cflags=["-O3", "-march=native", "-fopenmp"])
        # Its output shape, so torch.compile can call it as an opaque op.
        torch.library.register_fake("fishtts::int8_linear")(lambda x, w, s: x.new_empty(x.size(0), w.size(0)))
        return True
    except Exception as exc:  # no compiler, no headers, ...: the pure-torch path still works
        log.warning("int8 CPU kernel unavailable (%s); using the slower torch path", exc)
        return False
