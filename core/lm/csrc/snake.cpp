// The S1 codec's Snake activation (s1/codec/convs.py), x + sin(a x)^2 * inv with a and inv = 1 / (a + 1e-9)
// per channel, in one pass. torch takes five (a product, the sine, the square, a product, a sum), each a
// sweep over tensors of up to ~12 MB a streamed chunk: ~0.8 s of a 10 s stream's 6.3 s in float32 and of
// its 3.2 s in bfloat16 (Intel Xeon, 2 vCPUs).
//
// The same float32 operations in the same order, with torch's own sine (MKL's, which libtorch exports), so
// the same bits as the torch code; nothing may be contracted into a fused multiply-add. A bfloat16 output
// is rounded to nearest even, as torch's copy_ rounds it.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// (after the headers: only this file's functions)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

// MKL's vector sine, as torch's sin calls it on the CPU (ATen/cpu/vml.h: vmsSin in high accuracy, no
// flush to zero, errors ignored). Weak: a torch without MKL (aarch64) leaves it null, and then the Python
// code runs torch's ops (snake_available). The count is MKL_INT, 32 bits (torch's LP64 MKL) or 64; passed
// as 64 bits in its register, a count under 2^31 reads the same either way.
extern "C" void vmsSin(long long n, const float* a, float* r, long long mode) __attribute__((weak));

namespace {

constexpr long long kVmlHighAccuracy = 0x2, kVmlNoFlushToZero = 0x140000, kVmlErrorsIgnored = 0x100;
constexpr int64_t kGroupValues = 4096;  // values per sine call (16 KiB, in L1 with the rest of the pass)

// A group of runs (each `length` values at unit stride: one time step's channels, or one channel's steps)
// through the product, the sine, the square, the product and the sum. PerValue: a and inv per value (a
// time step's channels), else one each (a channel's steps).
template <bool PerValue, typename Out>
void snake_runs(const float* const* xs, Out* const* outs, int64_t runs, int64_t length, const float* const* as,
                const float* const* invs, float* __restrict buffer) {
  for (int64_t r = 0; r < runs; ++r) {
    const float* __restrict x = xs[r];
    const float* __restrict a = as[r];
    float* __restrict b = buffer + r * length;
    for (int64_t i = 0; i < length; ++i) b[i] = a[PerValue ? i : 0] * x[i];
  }
  vmsSin((long long)(runs * length), buffer, buffer, kVmlHighAccuracy | kVmlNoFlushToZero | kVmlErrorsIgnored);
  for (int64_t r = 0; r < runs; ++r) {
    const float* __restrict x = xs[r];
    const float* __restrict inv = invs[r];
    const float* __restrict b = buffer + r * length;
    Out* __restrict out = outs[r];
    for (int64_t i = 0; i < length; ++i) {
      float y = b[i] * b[i];
      y = y * inv[PerValue ? i : 0];
      out[i] = Out(y + x[i]);  // (a bfloat16 Out rounds to nearest even, as torch's copy_)
    }
  }
}

// time_major: channels at unit stride, a run is one time step's C channels (else one channel's T steps).
template <typename Out>
void snake_all(const at::Tensor& x, const at::Tensor& a, const at::Tensor& inv, at::Tensor& out, bool time_major) {
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2);
  const float *xp = x.data_ptr<float>(), *ap = a.data_ptr<float>(), *ip = inv.data_ptr<float>();
  Out* op = out.data_ptr<Out>();
  const int64_t per_batch = time_major ? T : C, runs = B * per_batch, length = time_major ? C : T;
  const int64_t xs = time_major ? x.stride(2) : x.stride(1), os = time_major ? out.stride(2) : out.stride(1);
  const int64_t per_group = std::max<int64_t>(1, kGroupValues / length), groups = (runs + per_group - 1) / per_group;
  at::parallel_for(0, groups, std::max<int64_t>(1, 32768 / (per_group * length)), [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(per_group * length);
    std::vector<const float*> xr(per_group), ar(per_group), ir(per_group);
    std::vector<Out*> orow(per_group);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t first = g * per_group, count = std::min(per_group, runs - first);
      for (int64_t j = 0; j < count; ++j) {
        const int64_t b = (first + j) / per_batch, k = (first + j) % per_batch;  // k: the time step, or the channel
        xr[j] = xp + b * x.stride(0) + k * xs;
        orow[j] = op + b * out.stride(0) + k * os;
        ar[j] = time_major ? ap : ap + k;
        ir[j] = time_major ? ip : ip + k;
      }
      if (time_major) snake_runs<true>(xr.data(), orow.data(), count, length, ar.data(), ir.data(), buffer.data());
      else snake_runs<false>(xr.data(), orow.data(), count, length, ar.data(), ir.data(), buffer.data());
    }
  });
}

bool snake_available() { return vmsSin != nullptr; }

// out = x + sin(a x)^2 * inv for x [B, C, T] float32, a and inv [C] float32, out [B, C, T] float32 or
// bfloat16, x and out both with channels (or both with time steps) at unit stride.
void snake_(const at::Tensor& x, const at::Tensor& a, const at::Tensor& inv, at::Tensor out) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && out.sizes() == x.sizes(),
              "snake_: x must be float32 [B, C, T] and out of its shape");
  TORCH_CHECK(a.scalar_type() == at::kFloat && inv.scalar_type() == at::kFloat && a.is_contiguous() &&
                  inv.is_contiguous() && a.numel() == x.size(1) && inv.numel() == x.size(1),
              "snake_: a and inv must be contiguous float32 [C]");
  const bool channels = x.stride(1) == 1 && out.stride(1) == 1, steps = x.stride(2) == 1 && out.stride(2) == 1;
  TORCH_CHECK(channels || steps, "snake_: x and out need the channels or the time steps at unit stride");
  TORCH_CHECK(snake_available(), "snake_: this torch has no MKL sine");
  if (x.numel() == 0) return;
  if (out.scalar_type() == at::kFloat) snake_all<float>(x, a, inv, out, channels);
  else if (out.scalar_type() == at::kBFloat16) snake_all<c10::BFloat16>(x, a, inv, out, channels);
  else TORCH_CHECK(false, "snake_: out must be float32 or bfloat16");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fishtts, m) {
  m.def("snake_(Tensor x, Tensor a, Tensor inv, Tensor(a!) out) -> ()");
  m.def("snake_available() -> bool");
}

TORCH_LIBRARY_IMPL(fishtts, CPU, m) { m.impl("snake_", &snake_); }

TORCH_LIBRARY_IMPL(fishtts, CompositeExplicitAutograd, m) { m.impl("snake_available", &snake_available); }
