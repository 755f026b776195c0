// The sampler's two costly steps on CPU, with the original's results bit for bit (see sampling.py).
//
// top-p sorts every row (36k text logits: numpy's argsort ~1.7 ms, torch.sort ~2.6 ms) only to get the
// softmax of the sorted values and their running sum; the ids matter only for the few entries kept. A
// radix sort of the values alone takes a fraction of that, and the kept entries are the k largest.
//
// The exponential race draws one Exp(1) per entry (torch's exponential_, ~20 ns each: a 64-bit draw
// from the generator and a log1p) although every entry but the few kept has probability 0 and cannot
// win. Here the generator is advanced by the same draws, but the log1p is only taken where it matters.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/DistributionsHelper.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <vector>

namespace {

// Float bits mapped so that unsigned order is descending float order (-0.0 and +0.0 stay distinct
// keys; they are equal values, and the softmax cannot tell them apart).
inline uint32_t descending_key(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ascending;
}

inline float value_of(uint32_t key) {
  const uint32_t ascending = ~key;
  const uint32_t bits = (ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// LSD radix sort of keys, 11-bit digits; a digit every key shares is skipped.
void radix_sort(std::vector<uint32_t>& keys, std::vector<uint32_t>& scratch) {
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  const size_t n = keys.size();
  scratch.resize(n);
  uint32_t counts[3][kBuckets] = {};
  for (uint32_t key : keys)
    for (int pass = 0; pass < 3; ++pass) ++counts[pass][(key >> (pass * kBits)) & (kBuckets - 1)];
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass * kBits;
    if (counts[pass][(keys[0] >> shift) & (kBuckets - 1)] == n) continue;
    uint32_t offset = 0;
    for (int b = 0; b < kBuckets; ++b) {
      const uint32_t c = counts[pass][b];
      counts[pass][b] = offset;
      offset += c;
    }
    for (uint32_t key : keys) scratch[counts[pass][(key >> shift) & (kBuckets - 1)]++] = key;
    keys.swap(scratch);
  }
}

// Each row's values in descending order [N, V]; an empty tensor if a row holds NaN or +inf (the caller
// then takes the full sort, which handles them as the original does).
at::Tensor sort_values_descending(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "logits must be [N, V] float32");
  const at::Tensor x = logits.contiguous();
  const int64_t rows = x.size(0), width = x.size(1);
  at::Tensor out = at::empty_like(x);
  if (width == 0) return out;
  const float* in = x.data_ptr<float>();
  float* sorted = out.data_ptr<float>();
  std::vector<uint32_t> keys(width), scratch;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = in + r * width;
    for (int64_t i = 0; i < width; ++i) {
      if (std::isnan(row[i]) || row[i] == std::numeric_limits<float>::infinity()) return at::empty({0}, x.options());
      keys[i] = descending_key(row[i]);
    }
    radix_sort(keys, scratch);
    for (int64_t i = 0; i < width; ++i) sorted[r * width + i] = value_of(keys[i]);
  }
  return out;
}

// logits with every entry but each row's `kept[r]` largest set to -inf. `sorted` holds each row's values
// in descending order (sort_values_descending). Equal values at the cut are kept lowest id first.
at::Tensor keep_largest(const at::Tensor& logits, const at::Tensor& sorted, const at::Tensor& kept) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "logits must be [N, V] float32");
  TORCH_CHECK(sorted.sizes() == logits.sizes() && sorted.scalar_type() == at::kFloat, "sorted must match logits");
  TORCH_CHECK(kept.dim() == 1 && kept.size(0) == logits.size(0), "kept must be [N]");
  const at::Tensor x = logits.contiguous(), s = sorted.contiguous();
  const at::Tensor k = kept.to(at::kLong).contiguous();
  const int64_t rows = x.size(0), width = x.size(1);
  at::Tensor out = at::full_like(x, -std::numeric_limits<float>::infinity());
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t count = k.data_ptr<int64_t>()[r];
    TORCH_CHECK(count >= 1 && count <= width, "kept count out of range");
    const float* row = x.data_ptr<float>() + r * width;
    float* dst = out.data_ptr<float>() + r * width;
    const float cut = s.data_ptr<float>()[r * width + count - 1];
    int64_t above = 0;
    for (int64_t i = 0; i < width; ++i)
      if (row[i] > cut) {
        dst[i] = row[i];
        ++above;
      }
    for (int64_t i = 0, ties = count - above; i < width && ties > 0; ++i)
      if (row[i] == cut) {
        dst[i] = row[i];
        --ties;
      }
  }
  return out;
}

// argmax(probs / q) per row with q ~ Exp(1) drawn as `torch.empty_like(probs).exponential_(1, generator)`
// does on CPU: one random64 per entry in row-major order, q = -log1p(-u). An entry with probability 0 gives
// 0 / q = 0 and cannot win, so its draw is only checked for u == 0 (q = 0, 0 / 0 = NaN, which argmax
// prefers, as torch's does). Returns [N] int32, or an empty tensor if a row of probs holds NaN (checked
// before anything is drawn, like sampling.draw).
at::Tensor exponential_race(const at::Tensor& probs, std::optional<at::Generator> generator) {
  TORCH_CHECK(probs.dim() == 2 && probs.scalar_type() == at::kFloat, "probs must be [N, V] float32");
  const at::Tensor p = probs.contiguous();
  const int64_t rows = p.size(0), width = p.size(1);
  const float* data = p.data_ptr<float>();
  for (int64_t i = 0; i < rows * width; ++i)
    if (std::isnan(data[i])) return at::empty({0}, p.options().dtype(at::kInt));
  at::Tensor out = at::zeros({rows}, p.options().dtype(at::kInt));
  int32_t* chosen = out.data_ptr<int32_t>();
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  constexpr uint64_t kMantissa = (uint64_t{1} << std::numeric_limits<double>::digits) - 1;
  std::lock_guard<std::mutex> lock(gen->mutex_);
  at::exponential_distribution<double> exponential(1.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = data + r * width;
    float best = 0.0f;  // argmax's first index wins ties, and every row has 0 / q = 0 or better
    bool best_is_nan = false;
    for (int64_t i = 0; i < width; ++i) {
      float ratio;
      if (row[i] != 0.0f) {
        ratio = row[i] / static_cast<float>(exponential(gen));
      } else if ((gen->random64() & kMantissa) == 0) {
        ratio = std::numeric_limits<float>::quiet_NaN();
      } else {
        continue;
      }
      if (best_is_nan) continue;
      if (std::isnan(ratio) || ratio > best) {
        best = ratio;
        best_is_nan = std::isnan(ratio);
        chosen[r] = static_cast<int32_t>(i);
      }
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fishtts, m) {
  m.def("sort_values_descending(Tensor logits) -> Tensor");
  m.def("keep_largest(Tensor logits, Tensor sorted, Tensor kept) -> Tensor");
  m.def("exponential_race(Tensor probs, Generator? generator) -> Tensor");
}

TORCH_LIBRARY_IMPL(fishtts, CPU, m) {
  m.impl("sort_values_descending", &sort_values_descending);
  m.impl("keep_largest", &keep_largest);
  m.impl("exponential_race", &exponential_race);
}
