// Causal self-attention of a prompt's positions (model.py's prefill) on the CPU, float32: the queries are
// the last of the key positions, each seeing the keys up to its own.
//
// torch's flash attention for the CPU runs at ~50 GFLOP/s on a 330-position prompt of 16 heads of 64 on
// two AMD EPYC vCPUs (15% of an int8 prefill) while its matmuls reach ~150: short rows, and its blocks
// cover the masked half too. Here each head's queries go 8 at a time: their scores against 32 keys at a
// time (the keys transposed once per head), only up to the block's last row; an exact softmax per row
// over its own keys; then the probabilities times the values. Heads are split over torch's threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// (after the headers: only this file's functions) a * b + c on the vector types below becomes one fused
// multiply-add where the CPU has one: GCC's default for C++, stated so that it holds whatever the flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif

#include "vector_math.h"  // (after the pragma: its e^x fuses here as before)

namespace {

constexpr int kQueryRows = 8;  // queries whose scores are computed together (8 accumulators of 16 keys)

struct HeadView {
  const float* q;  // query i at q + i * q_stride (D floats)
  const float* k;
  const float* v;
  float* out;
  int64_t q_stride, k_stride, v_stride, out_stride;
};

// Scores of queries i0 .. i0 + rows - 1 against keys 0 .. keys - 1 (32 at a time, from the transposed keys
// kt [D][width], width a multiple of 32), times `scale`, into scores [kQueryRows][width]. Rows past the
// prompt repeat its last query.
template <int D>
void block_scores(const HeadView& h, const float* kt, int64_t width, int64_t i0, int64_t rows, int64_t keys,
                  float scale, float* scores) {
  const float* query[kQueryRows];
  for (int r = 0; r < kQueryRows; ++r) query[r] = h.q + (i0 + std::min<int64_t>(r, rows - 1)) * h.q_stride;
  for (int64_t j = 0; j < keys; j += 32) {
    f32x16 lo[kQueryRows] = {}, hi[kQueryRows] = {};
    for (int d = 0; d < D; ++d) {
      const f32x16 key_lo = load16(kt + d * width + j), key_hi = load16(kt + d * width + j + 16);
      for (int r = 0; r < kQueryRows; ++r) {
        const f32x16 x = splat(query[r][d]);
        lo[r] = x * key_lo + lo[r];
        hi[r] = x * key_hi + hi[r];
      }
    }
    for (int r = 0; r < kQueryRows; ++r) {
      store16(scores + r * width + j, lo[r] * scale);
      store16(scores + r * width + j + 16, hi[r] * scale);
    }
  }
}

// The first n of a row of scores -> exp(score - their largest), zeros after them up to `to` (a multiple
// of 16); returns their sum.
inline float softmax_numerators(float* row, int64_t n, int64_t to) {
  const int64_t whole = n / 16 * 16;
  f32x16 top = splat(-INFINITY);
  for (int64_t j = 0; j < whole; j += 16) {
    const f32x16 x = load16(row + j);
    top = max16(x, top);
  }
  float largest = hmax(top, -INFINITY);
  for (int64_t j = whole; j < n; ++j) largest = std::max(largest, row[j]);
  const f32x16 shift = splat(largest);
  f32x16 total{};
  for (int64_t j = 0; j < whole; j += 16) {
    const f32x16 e = exp16(load16(row + j) - shift);
    store16(row + j, e);
    total += e;
  }
  if (whole < n) {  // the last partial vector: the lanes from n on are zeroed
    static const float kOnesThenZeros[32] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const f32x16 keep = load16(kOnesThenZeros + 16 - (n - whole));
    const f32x16 e = exp16(load16(row + whole) - shift) * keep;
    store16(row + whole, e);
    total += e;
  }
  std::fill(row + (n + 15) / 16 * 16, row + to, 0.0f);
  float sum = 0.0f;
  for (int l = 0; l < 16; ++l) sum += total[l];
  return sum;
}

// out[i] = sum_j p[i][j] v[j] / sums[i] for `rows` queries from i0, over keys 0 .. keys - 1.
template <int D>
void block_values(const HeadView& h, const float* scores, int64_t width, int64_t i0, int64_t rows, int64_t keys,
                  const float* sums) {
  constexpr int V = D / 16;                   // vectors per value row
  constexpr int R = V <= 4 ? 4 : V <= 8 ? 2 : 1;  // query rows at once: at most 16 accumulators
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    const int live = static_cast<int>(std::min<int64_t>(R, rows - r0));
    f32x16 acc[R][V] = {};
    for (int64_t j = 0; j < keys; ++j) {
      const float* value = h.v + j * h.v_stride;
      f32x16 vj[V];
      for (int c = 0; c < V; ++c) vj[c] = load16(value + 16 * c);
      for (int r = 0; r < R; ++r) {
        const f32x16 p = splat(scores[std::min(r0 + r, rows - 1) * width + j]);
        for (int c = 0; c < V; ++c) acc[r][c] = p * vj[c] + acc[r][c];
      }
    }
    for (int r = 0; r < live; ++r) {
      float* out = h.out + (i0 + r0 + r) * h.out_stride;
      const f32x16 inverse = splat(1.0f / sums[r0 + r]);
      for (int c = 0; c < V; ++c) store16(out + 16 * c, acc[r][c] * inverse);
    }
  }
}

// Queries 0 .. S - 1 at positions past - S .. past - 1 (query i sees keys 0 .. past - S + i).
template <int D>
void attend_head(const HeadView& h, int64_t S, int64_t past, float scale, std::vector<float>& buffer) {
  const int64_t width = (past + 31) / 32 * 32, before = past - S;
  buffer.resize(D * width + kQueryRows * width);
  float* kt = buffer.data();
  float* scores = kt + D * width;
  for (int64_t j = 0; j < width; ++j)
    for (int d = 0; d < D; ++d) kt[d * width + j] = j < past ? h.k[j * h.k_stride + d] : 0.0f;
  float sums[kQueryRows];
  for (int64_t i0 = 0; i0 < S; i0 += kQueryRows) {
    const int64_t rows = std::min<int64_t>(kQueryRows, S - i0), keys = before + i0 + rows;
    const int64_t padded = (keys + 15) / 16 * 16;  // zeros past each row's keys, as far as block_values reads
    block_scores<D>(h, kt, width, i0, rows, keys, scale, scores);
    for (int64_t r = 0; r < rows; ++r) {
      sums[r] = softmax_numerators(scores + r * width, before + i0 + r + 1, padded);
    }
    block_values<D>(h, scores, width, i0, rows, keys, sums);
  }
}

using HeadFn = void (*)(const HeadView&, int64_t, int64_t, float, std::vector<float>&);

HeadFn head_fn(int64_t D) {
  switch (D) {
    case 16: return &attend_head<16>;
    case 32: return &attend_head<32>;
    case 64: return &attend_head<64>;
    case 128: return &attend_head<128>;
    default: return nullptr;
  }
}

}  // namespace

bool prefill_attention_supports(int64_t head_dim) { return head_fn(head_dim) != nullptr; }

// q [B, H, S, D], k and v [B, Hkv, P, D] (P >= S; any strides but a contiguous D; H a multiple of Hkv) -> the
// causal attention of the last S of P positions, [B, H, S, D] as a view of a [B, S, H, D] tensor (the layout
// the output linear reads).
at::Tensor prefill_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "prefill_attention: q, k, v must be [B, H, S, D]");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                  q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "prefill_attention: float32 CPU tensors only");
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3), Hkv = k.size(1), P = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == B && P >= S && k.size(3) == D && Hkv > 0 && H % Hkv == 0,
              "prefill_attention: k and v must be [B, Hkv, P, D] with P >= S and H a multiple of Hkv");
  const HeadFn fn = head_fn(D);
  TORCH_CHECK(fn != nullptr, "prefill_attention: head size ", D, " is not supported");
  const at::Tensor qc = q.stride(3) == 1 ? q : q.contiguous();
  const at::Tensor kc = k.stride(3) == 1 ? k : k.contiguous();
  const at::Tensor vc = v.stride(3) == 1 ? v : v.contiguous();
  at::Tensor out = at::empty({B, S, H, D}, q.options());
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float *qp = qc.data_ptr<float>(), *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, g = h / group;
      const HeadView view{qp + b * qc.stride(0) + h * qc.stride(1), kp + b * kc.stride(0) + g * kc.stride(1),
                          vp + b * vc.stride(0) + g * vc.stride(1), op + (b * S * H + h) * D,
                          qc.stride(2),                            kc.stride(2),
                          vc.stride(2),                            H * D};
      fn(view, S, P, scale, buffer);
    }
  });
  return out.permute({0, 2, 1, 3});
}

TORCH_LIBRARY_FRAGMENT(fishtts, m) {
  m.def("prefill_attention(Tensor q, Tensor k, Tensor v) -> Tensor");
  m.def("prefill_attention_supports(int head_dim) -> bool");
}

TORCH_LIBRARY_IMPL(fishtts, CPU, m) {
  m.impl("prefill_attention", &prefill_attention);
}

TORCH_LIBRARY_IMPL(fishtts, CompositeExplicitAutograd, m) {
  m.impl("prefill_attention_supports", &prefill_attention_supports);
}
