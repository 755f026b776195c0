// The int8 prefill's two elementwise steps around torch's int8 matmul (paths.py `_int8_matmul`): rounding
// each row of activations to int8 (plus a second digit for rows with outliers) and scaling the int32 sums
// back. In torch they are ~12 ops, each a pass over the rows: ~20% of a 330-position prefill. Here each is
// one pass, a row at a time while it sits in cache.
//
// Same arithmetic as the torch code, operation for operation in float32, so both give the same bits:
// nothing may be contracted into a fused multiply-add (a*b + c rounds once there, twice here).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

// (after the headers: only this file's functions)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

// (after the pragma: its helpers round as this file's code does) GCC's vector types: the reductions and
// the rounding below are not vectorized from scalar loops without fast-math, which would change the bits.
#include "vector_math.h"

namespace {

constexpr int64_t kRowsPerTask = 4;

// Round half to even, as nearbyint in the default rounding mode, for |v| < 2^22: adding 1.5 * 2^23 leaves
// no fraction bits, so the addition rounds v to an integer, and the subtraction is exact.
constexpr float kRound = 12582912.0f;
inline f32x16 round16(f32x16 v) { return (v + kRound) - kRound; }
inline float round1(float v) { return (v + kRound) - kRound; }

// max |row| and the sum of squares (16 float lanes, added up in double).
inline void row_stats(const float* row, int64_t K, float& largest, double& squares) {
  f32x16 top{}, sum{};
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const f32x16 v = load16(row + k);
    top = max16(top, abs16(v));
    sum += v * v;
  }
  largest = hmax(top, 0.0f);
  squares = 0.0;
  for (int i = 0; i < 16; ++i) squares += sum[i];
  for (; k < K; ++k) {
    largest = std::max(largest, std::fabs(row[k]));
    squares += static_cast<double>(row[k]) * row[k];
  }
}

// out = round(row / s) (|row / s| <= 127.5 for a finite row whose largest magnitude is 127 s).
inline void round_row(const float* row, int64_t K, float s, int8_t* out) {
  const f32x16 step = splat(s);
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) store_int8(out + k, round16(load16(row + k) / step));
  for (; k < K; ++k) out[k] = static_cast<int8_t>(round1(row[k] / s));
}

// out = round((row - q * s) / f), within -127..127: the remainder's digit.
inline void remainder_row(const float* row, const int8_t* q, int64_t K, float s, float f, int8_t* out) {
  const f32x16 step = splat(s), fine = splat(f), lo = splat(-127.0f), hi = splat(127.0f);
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const f32x16 rest = load16(row + k) - widen(q + k) * step;
    store_int8(out + k, min16(max16(round16(rest / fine), lo), hi));
  }
  for (; k < K; ++k) {
    const float rest = row[k] - static_cast<float>(q[k]) * s;
    out[k] = static_cast<int8_t>(std::min(std::max(round1(rest / f), -127.0f), 127.0f));
  }
}

}  // namespace

// x [R, K] float32 -> (q int8 [R, K], step float32 [R, 1], wide int64 [W], digits int8 [W, K], fine float32 [W, 1]).
// step = max|row| / 127 (at least FLT_MIN / 127); q = round(row / step). A row is wide when its largest
// magnitude is over `spread` / sqrt(K) times its norm; its digits are round((row - q * step) / fine),
// fine = step / 254, within -127..127. A row holding NaN or inf gets a NaN step (its products come out NaN).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_rows_int8(
    const at::Tensor& x, double spread) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "quantize_rows_int8: x must be a 2-D float32 CPU tensor");
  const at::Tensor rows = x.contiguous();
  const int64_t R = rows.size(0), K = rows.size(1);
  at::Tensor q = at::empty({R, K}, rows.options().dtype(at::kChar));
  at::Tensor step = at::empty({R, 1}, rows.options());
  std::vector<uint8_t> wide(R, 0);
  const float factor = static_cast<float>(spread / std::sqrt(static_cast<double>(K)));
  const float* xp = rows.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = step.data_ptr<float>();
  at::parallel_for(0, R, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * K;
      int8_t* out = qp + r * K;
      float largest;
      double squares;
      row_stats(row, K, largest, squares);
      if (std::isnan(squares) || std::isinf(largest)) {  // NaN or inf in the row
        sp[r] = NAN;
        std::fill(out, out + K, int8_t(0));
        continue;
      }
      const float s = std::max(largest, FLT_MIN) / 127.0f;
      sp[r] = s;
      round_row(row, K, s, out);
      wide[r] = largest > factor * static_cast<float>(std::sqrt(squares));
    }
  });
  std::vector<int64_t> picked;
  for (int64_t r = 0; r < R; ++r)
    if (wide[r]) picked.push_back(r);
  const int64_t W = static_cast<int64_t>(picked.size());
  at::Tensor index = at::empty({W}, rows.options().dtype(at::kLong));
  at::Tensor digits = at::empty({W, K}, rows.options().dtype(at::kChar));
  at::Tensor fine = at::empty({W, 1}, rows.options());
  std::copy(picked.begin(), picked.end(), index.data_ptr<int64_t>());
  int8_t* dp = digits.data_ptr<int8_t>();
  float* fp = fine.data_ptr<float>();
  at::parallel_for(0, W, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t r = picked[w];
      const float* row = xp + r * K;
      const int8_t* qr = qp + r * K;
      const float s = sp[r], f = s / 254.0f;
      fp[w] = f;
      remainder_row(row, qr, K, s, f, dp + w * K);
    }
  });
  return {q, step, index, digits, fine};
}

// sums int32 [R, N] (q's products), step [R, 1], scales [N]; digit_sums int32 [W, N] with wide [W] and
// fine [W, 1] (W may be 0) -> float32 [R, N]: sums * step (+ digit_sums * fine on the wide rows) * scales.
at::Tensor scale_int8_sums(const at::Tensor& sums, const at::Tensor& step, const at::Tensor& scales,
                           const at::Tensor& wide, const at::Tensor& digit_sums, const at::Tensor& fine) {
  TORCH_CHECK(sums.dim() == 2 && sums.scalar_type() == at::kInt, "scale_int8_sums: sums must be 2-D int32");
  const int64_t R = sums.size(0), N = sums.size(1), W = wide.numel();
  TORCH_CHECK(step.numel() == R && scales.numel() == N && fine.numel() == W, "scale_int8_sums: sizes differ");
  TORCH_CHECK(W == 0 || (digit_sums.dim() == 2 && digit_sums.size(0) == W && digit_sums.size(1) == N &&
                         digit_sums.scalar_type() == at::kInt),
              "scale_int8_sums: digit_sums must be int32 [W, N]");
  const at::Tensor s = sums.contiguous(), st = step.contiguous().to(at::kFloat);
  const at::Tensor sc = scales.contiguous().to(at::kFloat), f = fine.contiguous().to(at::kFloat);
  const at::Tensor d = W ? digit_sums.contiguous() : digit_sums;
  const at::Tensor idx = wide.contiguous().to(at::kLong);
  std::vector<int64_t> digit_row(R, -1);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t w = 0; w < W; ++w) {
    TORCH_CHECK(ip[w] >= 0 && ip[w] < R, "scale_int8_sums: wide row out of range");
    digit_row[ip[w]] = w;
  }
  at::Tensor y = at::empty({R, N}, s.options().dtype(at::kFloat));
  const int32_t* sp = s.data_ptr<int32_t>();
  const int32_t* dp = W ? d.data_ptr<int32_t>() : nullptr;
  const float *stp = st.data_ptr<float>(), *scp = sc.data_ptr<float>(), *fp = f.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, R, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int32_t* in = sp + r * N;
      float* out = yp + r * N;
      const float row_step = stp[r];
      const int64_t w = digit_row[r];
      if (w < 0) {
        for (int64_t n = 0; n < N; ++n) out[n] = (static_cast<float>(in[n]) * row_step) * scp[n];
      } else {
        const int32_t* extra = dp + w * N;
        const float row_fine = fp[w];
        for (int64_t n = 0; n < N; ++n) {
          const float coarse = static_cast<float>(in[n]) * row_step;
          const float detail = static_cast<float>(extra[n]) * row_fine;
          out[n] = (coarse + detail) * scp[n];
        }
      }
    }
  });
  return y;
}

TORCH_LIBRARY_FRAGMENT(fishtts, m) {
  m.def("quantize_rows_int8(Tensor x, float spread) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("scale_int8_sums(Tensor sums, Tensor step, Tensor scales, Tensor wide, Tensor digit_sums, Tensor fine) -> Tensor");
}

TORCH_LIBRARY_IMPL(fishtts, CPU, m) {
  m.impl("quantize_rows_int8", &quantize_rows_int8);
  m.impl("scale_int8_sums", &scale_int8_sums);
}
