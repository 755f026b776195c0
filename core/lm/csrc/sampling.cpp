// The sampler's two costly steps on CPU, with the original's results bit for bit (see sampling.py).
//
// top-p sorts every row (36k text logits: numpy's argsort ~1.7 ms, torch.sort ~2.6 ms) only to get the
// softmax of the sorted values and their running sum; the ids matter only for the few entries kept. A
// radix sort of the values alone takes a fraction of that, and the kept entries are the k largest.
//
// The exponential race draws one Exp(1) per entry (torch's exponential_, ~20 ns each: a 64-bit draw
// from the generator and a log1p) although every entry but the few kept has probability 0 and cannot
// win. Here the generator is advanced by the same draws, but the log1p is only taken where it matters.
//
// sample_frames: a quantized model's whole frame (its fast sampling) in one call, below; sample_rows: a quantized
// S1-mini's draws, one call each.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <vector>

#include "vector_math.h"

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

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

// Whether a key is a NaN's (of either sign) or +inf's: the keys up to +inf's (0x007fffff) and after -inf's
// (0xff800000), at the two ends of the order.
inline uint32_t unsortable(uint32_t key) { return (key <= 0x007fffffu) | (key >= 0xff800001u); }

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
    // NaN and +inf found on the keys, in one branch-free pass: tested per value (std::isnan, == inf) this
    // loop was ~20x slower, and the sort of S1-mini's 155,776 token logits took 1.3 ms against 0.7 (Intel Xeon).
    uint32_t bad = 0;
    for (int64_t i = 0; i < width; ++i) {
      keys[i] = descending_key(row[i]);
      bad |= unsortable(keys[i]);
    }
    if (bad) return at::empty({0}, x.options());
    radix_sort(keys, scratch);
    for (int64_t i = 0; i < width; ++i) sorted[r * width + i] = value_of(keys[i]);
  }
  return out;
}

// A row with all but its `count` largest set to -inf, `cut` being the count-th largest value: equal
// values at the cut are kept lowest id first.
void keep_row_largest(float* row, int64_t width, float cut, int64_t count) {
  // Branch-free passes (a flat row keeps its entries in no order the branch predictor could follow), and a
  // third for the ties only where more values equal the cut than are kept.
  int64_t above = 0, equal = 0;
  for (int64_t i = 0; i < width; ++i) {
    above += row[i] > cut;
    equal += row[i] == cut;
  }
  for (int64_t i = 0; i < width; ++i) row[i] = row[i] >= cut ? row[i] : kNegInf;
  int64_t ties = count - above;  // the entries equal to the cut that stay
  if (equal <= ties) return;
  for (int64_t i = 0; i < width; ++i) {
    if (row[i] != cut) continue;
    if (ties > 0) {
      --ties;
    } else {
      row[i] = kNegInf;
    }
  }
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
  at::Tensor out = x.clone();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t count = k.data_ptr<int64_t>()[r];
    TORCH_CHECK(count >= 1 && count <= width, "kept count out of range");
    keep_row_largest(out.data_ptr<float>() + r * width, width, s.data_ptr<float>()[r * width + count - 1], count);
  }
  return out;
}

// A CPU generator's draws, from a copy of its engine handed back at the end of the scope (the caller holds the
// generator's lock). random64 is two of the engine's numbers, the first the high half, as CPUGeneratorImpl's; a
// call into the library per draw took ~20% of a flat row's race.
class Draws {
 public:
  explicit Draws(at::CPUGeneratorImpl* gen) : gen_(gen), engine_(gen->engine()) {}
  ~Draws() { gen_->set_engine(engine_); }
  Draws(const Draws&) = delete;
  Draws& operator=(const Draws&) = delete;
  uint64_t random64() {
    const uint64_t high = engine_();
    return (high << 32) | engine_();
  }

 private:
  at::CPUGeneratorImpl* gen_;
  at::mt19937 engine_;
};

// One row of exponential_race's draw (probabilities without NaN).
// q is torch's at::exponential_distribution<double>(1) of the entry's draw, written out: u = the draw's low 53
// bits / 2^53, q = -log1p(-u). Since q >= u, an entry with u * best >= p (a margin over the roundings) cannot
// beat `best`, and its log1p is skipped: in a flat distribution, where most entries have a probability, nearly
// all of them are (155,776 log1p took 2-3 ms of an S1-mini token draw).
int32_t race_row(const float* row, int64_t width, Draws& draws) {
  constexpr int kDigits = std::numeric_limits<double>::digits;
  constexpr uint64_t kMantissa = (uint64_t{1} << kDigits) - 1;
  constexpr double kUnit = 1.0 / static_cast<double>(uint64_t{1} << kDigits);
  constexpr double kMargin = 1.0 + 1e-6;  // q and the ratio round to float: ~1e-7 each
  int32_t chosen = 0;
  float best = 0.0f;  // argmax's first index wins ties, and every row has 0 / q = 0 or better
  bool best_is_nan = false;
  for (int64_t i = 0; i < width; ++i) {
    float ratio;
    if (row[i] != 0.0f) {
      const double u = static_cast<double>(draws.random64() & kMantissa) * kUnit;
      if (best_is_nan || u * static_cast<double>(best) >= static_cast<double>(row[i]) * kMargin) continue;
      ratio = row[i] / static_cast<float>(-1.0 * std::log1p(-u));
    } else if ((draws.random64() & kMantissa) == 0) {
      ratio = std::numeric_limits<float>::quiet_NaN();
    } else {
      continue;
    }
    if (best_is_nan) continue;
    if (std::isnan(ratio) || ratio > best) {
      best = ratio;
      best_is_nan = std::isnan(ratio);
      chosen = static_cast<int32_t>(i);
    }
  }
  return chosen;
}

at::CPUGeneratorImpl* cpu_generator(std::optional<at::Generator>& generator) {
  return at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
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
  auto* gen = cpu_generator(generator);
  std::lock_guard<std::mutex> lock(gen->mutex_);
  Draws draws(gen);
  for (int64_t r = 0; r < rows; ++r) chosen[r] = race_row(data + r * width, width, draws);
  return out;
}

// -- a quantized model's frames in one call ------------------------------------------------------------
// sampling.py's frame for a quantized model is ~25 small torch ops, which right after a decode step (whose
// weights have just streamed through every cache) take ~0.9 ms against ~0.4 ms warm: ~7% of an int8 step
// and ~11% of an int4 one (AMD EPYC, 2 vCPUs). Here the same rules in one call: the text token by
// sample_fast's (the nucleus found among the largest logits, at most `candidates` of them) and each
// codebook by the original's (masks, penalty, top-p over the sorted values, temperature, top-k). The
// probabilities come from this file's e^x (within ~2 ulp of torch's), so a kept set or a draw can differ
// from the torch ops' only where two values lie within that rounding; the generator advances by the same
// draws (one per entry of each distribution, token rows first, then every codebook row in order).

// out[i] = e^(in[i] - shift) (0 for -inf), i < n; returns their sum.
float shifted_exp(const float* in, int64_t n, float shift, float* out) {
  f32x16 total{};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const f32x16 x = load16(in + i);
    const f32x16 e = exp16(x - shift);
    const f32x16 kept = where(x == kNegInf, splat(0.0f), e);
    store16(out + i, kept);
    total += kept;
  }
  float sum = 0.0f;
  for (int l = 0; l < 16; ++l) sum += total[l];
  for (; i < n; ++i) {
    out[i] = in[i] == kNegInf ? 0.0f : std::exp(in[i] - shift);
    sum += out[i];
  }
  return sum;
}

// Softmax in place (-inf: probability 0); false if every entry is -inf.
bool softmax_in_place(float* v, int64_t n) {
  const float top = *std::max_element(v, v + n);
  if (!(top > kNegInf)) return false;
  const float sum = shifted_exp(v, n, top, v);
  for (int64_t i = 0; i < n; ++i) v[i] /= sum;
  return true;
}

// How many of `sorted` (descending, their softmax `probs` in that order) top-p keeps: those whose running
// sum (in double, like torch's CPU cumsum, rounded to float) is at most top_p, and at least one.
int64_t kept_by_top_p(const float* probs, int64_t n, float top_p) {
  double running = 0.0;
  int64_t kept = 0;
  for (; kept < n; ++kept) {
    running += probs[kept];
    if (!(static_cast<float>(running) <= top_p)) break;
  }
  return std::max<int64_t>(kept, 1);
}

// apply_top_k on values v[n]: entries below the k-th largest become -inf.
void top_k_in_place(float* v, int64_t n, int64_t top_k, std::vector<float>& scratch) {
  if (top_k <= 0) return;
  scratch.assign(v, v + n);
  const int64_t k = std::min<int64_t>(top_k, n);
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<float>());
  const float pivot = scratch[k - 1];
  for (int64_t i = 0; i < n; ++i)
    if (v[i] < pivot) v[i] = kNegInf;
}

struct FrameRules {
  float temperature, top_p;  // top_p >= 1: no nucleus
  int64_t top_k;             // 0: none
  float penalty;             // 1: none
  int64_t masked, limit_from;  // codebook entries below `masked` and from `limit_from` on are -inf
  int64_t candidates;
};

// How far below the largest logit the nucleus's candidates reach, widened until they hold more than top_p of
// the mass (the last takes every entry: e^-88 is below float's range). A top-k of 256 did this job for the
// torch ops; a threshold is one pass over the row.
constexpr float kNucleusReach[] = {4.0f, 8.0f, 16.0f, 32.0f, 88.0f};

// The text token's nucleus from a row of logits (finite), sample_fast's way: its entries (ids and
// probabilities, descending) if the largest `candidates` logits hold it, else false.
bool token_nucleus(const float* row, int64_t width, const FrameRules& rules, std::vector<float>& scratch,
                   std::vector<std::pair<float, int32_t>>& found, std::vector<float>& probs) {
  const float top = *std::max_element(row, row + width);
  scratch.resize(width);
  const float log_sum = top + std::log(shifted_exp(row, width, top, scratch.data()));
  bool holds = false;
  for (const float reach : kNucleusReach) {
    found.clear();
    double mass = 0.0;
    for (int64_t i = 0; i < width; ++i) {
      if (row[i] < top - reach) continue;
      if (static_cast<int64_t>(found.size()) == rules.candidates) return false;
      found.emplace_back(row[i], static_cast<int32_t>(i));
      mass += std::exp(row[i] - log_sum);
    }
    holds = static_cast<float>(mass) > rules.top_p;
    if (holds) break;
  }
  if (!holds) return false;
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  probs.resize(found.size());
  for (size_t i = 0; i < found.size(); ++i) probs[i] = std::exp(found[i].first - log_sum);
  const int64_t kept = kept_by_top_p(probs.data(), static_cast<int64_t>(found.size()), rules.top_p);
  found.resize(kept);
  probs.resize(kept);
  for (int64_t i = 0; i < kept; ++i) probs[i] = found[i].first / rules.temperature;
  top_k_in_place(probs.data(), kept, rules.top_k, scratch);
  return softmax_in_place(probs.data(), kept);
}

// The repetition penalty on v[size] in place: each id of the window (or none: null) once, from the values
// before any was penalized (torch's gather, then scatter).
void penalize_row(float* v, const int32_t* window, int64_t window_size, float penalty, std::vector<float>& scratch) {
  if (window == nullptr || penalty == 1.0f) return;
  scratch.resize(window_size);
  for (int64_t w = 0; w < window_size; ++w) scratch[w] = v[window[w]];
  for (int64_t w = 0; w < window_size; ++w) v[window[w]] = scratch[w] < 0 ? scratch[w] * penalty : scratch[w] / penalty;
}

// One codebook's distribution from its logits (finite) and penalty window (ids, or null), in place of v.
bool codebook_distribution(float* v, int64_t size, const int32_t* window, int64_t window_size, const FrameRules& rules,
                           std::vector<float>& scratch, std::vector<float>& probs) {
  for (int64_t i = 0; i < size; ++i)
    if (i < rules.masked || i >= rules.limit_from) v[i] = kNegInf;
  penalize_row(v, window, window_size, rules.penalty, scratch);  // (from the masked logits)
  if (rules.top_p < 1.0f) {
    scratch.assign(v, v + size);
    std::sort(scratch.begin(), scratch.end(), std::greater<float>());
    const float largest = scratch[0];
    if (!(largest > kNegInf)) return false;
    probs.resize(size);
    const float sum = shifted_exp(scratch.data(), size, largest, probs.data());
    for (int64_t i = 0; i < size; ++i) probs[i] /= sum;
    const int64_t kept = kept_by_top_p(probs.data(), size, rules.top_p);
    keep_row_largest(v, size, scratch[kept - 1], kept);
  }
  for (int64_t i = 0; i < size; ++i) v[i] /= rules.temperature;
  top_k_in_place(v, size, rules.top_k, scratch);
  return softmax_in_place(v, size);
}

// Whether every id of a (contiguous int32) window lies in [0, size).
bool ids_below(const at::Tensor& ids, int64_t size) {
  const int32_t* w = ids.data_ptr<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    if (w[i] < 0 || w[i] >= size) return false;
  return true;
}

bool all_finite(const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) return false;
  return true;
}

// token_logits [N, V], code_logits [N, C, K] float32, window [N, C, W] int32 (codebook ids recently drawn)
// or none -> frames [N, 1 + C] int32 (token, then codebook values), or an empty tensor where the caller
// must sample as before (a logit not finite, a nucleus beyond `candidates`, a codebook with nothing left,
// a window id out of range): nothing is drawn then.
at::Tensor sample_frames(const at::Tensor& token_logits, const at::Tensor& code_logits,
                         const c10::optional<at::Tensor>& window, double temperature, double top_p, int64_t top_k,
                         double penalty, int64_t masked, int64_t limit_from, int64_t candidates,
                         std::optional<at::Generator> generator) {
  TORCH_CHECK(token_logits.dim() == 2 && token_logits.scalar_type() == at::kFloat, "token_logits must be [N, V] float32");
  TORCH_CHECK(code_logits.dim() == 3 && code_logits.scalar_type() == at::kFloat && code_logits.size(0) == token_logits.size(0),
              "code_logits must be [N, C, K] float32");
  const at::Tensor tokens = token_logits.contiguous(), codes = code_logits.contiguous();
  const int64_t N = tokens.size(0), V = tokens.size(1), C = codes.size(1), K = codes.size(2);
  const at::Tensor none = at::empty({0}, tokens.options().dtype(at::kInt));
  at::Tensor ids;
  int64_t W = 0;
  if (window.has_value()) {
    TORCH_CHECK(window->dim() == 3 && window->scalar_type() == at::kInt && window->size(0) == N && window->size(1) == C,
                "window must be [N, C, W] int32");
    ids = window->contiguous();
    W = ids.size(2);
    if (!ids_below(ids, K)) return none;
  }
  const float* tp = tokens.data_ptr<float>();
  const float* cp = codes.data_ptr<float>();
  if (!all_finite(tp, N * V) || !all_finite(cp, N * C * K)) return none;
  const FrameRules rules{static_cast<float>(temperature), static_cast<float>(top_p), top_k, static_cast<float>(penalty),
                         masked, limit_from, candidates};
  // Every distribution first (nothing drawn if one cannot be served), then the draws in order.
  std::vector<std::vector<std::pair<float, int32_t>>> nuclei(N);
  std::vector<std::vector<float>> token_probs(N);
  std::vector<float> code_probs(cp, cp + N * C * K), scratch, sorted_probs;
  for (int64_t r = 0; r < N; ++r)
    if (!token_nucleus(tp + r * V, V, rules, scratch, nuclei[r], token_probs[r])) return none;
  for (int64_t row = 0; row < N * C; ++row) {
    const int32_t* w = window.has_value() ? ids.data_ptr<int32_t>() + row * W : nullptr;
    if (!codebook_distribution(code_probs.data() + row * K, K, w, W, rules, scratch, sorted_probs)) return none;
  }
  at::Tensor out = at::empty({N, 1 + C}, tokens.options().dtype(at::kInt));
  int32_t* frames = out.data_ptr<int32_t>();
  auto* gen = cpu_generator(generator);
  std::lock_guard<std::mutex> lock(gen->mutex_);
  Draws draws(gen);
  for (int64_t r = 0; r < N; ++r) {
    const auto& kept = nuclei[r];
    frames[r * (1 + C)] = kept[race_row(token_probs[r].data(), static_cast<int64_t>(kept.size()), draws)].second;
  }
  for (int64_t row = 0; row < N * C; ++row)
    frames[(row / C) * (1 + C) + 1 + row % C] = race_row(code_probs.data() + row * K, K, draws);
  return out;
}

// -- S1-mini's draws, one distribution a row ------------------------------------------------------------
// core/s1/sampling.py's draw (the penalty, top-p over the sorted values, temperature, softmax, the race) is
// ~20 small torch ops; a frame makes 10 such draws (the token over 155,776 ids, then 9 codes over 1,024), each
// right after a step whose weights have just streamed through every cache: 0.2 ms a code and 5 ms the token in
// a frame, against 0.06 and 2.4-2.8 ms warm (int4, random weights, Intel Xeon). Here the same rule in one call,
// the draw as torch's exponential_ (one generator draw per entry). top-p's cut is found without sorting the
// whole row where the nucleus lies among the largest values, else from a radix sort of them: both give the same
// count from the same numbers (every e^x below from exp16, divided by the row's sum taken in id order).

constexpr int64_t kNucleusCap = 8192;  // candidates beyond this: the whole row is sorted instead

// e^(in[i] - shift) into out[i] (in finite), all by exp16, so that a value's term is the same wherever it
// stands; returns their sum, taken in index order by 16 lanes.
float exp_terms(const float* in, int64_t n, float shift, float* out) {
  f32x16 total{};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const f32x16 e = exp16(load16(in + i) - shift);
    store16(out + i, e);
    total += e;
  }
  if (i < n) {
    float tail[16];
    for (int l = 0; l < 16; ++l) tail[l] = i + l < n ? in[i + l] : kNegInf;
    const f32x16 x = load16(tail);
    const f32x16 e = where(x == kNegInf, splat(0.0f), exp16(x - shift));
    store16(tail, e);
    for (int64_t l = 0; i + l < n; ++l) out[i + l] = tail[l];
    total += e;
  }
  float sum = 0.0f;
  for (int l = 0; l < 16; ++l) sum += total[l];
  return sum;
}

// How many of v[n]'s largest values (finite) top-p keeps, as apply_top_p counts them (the running sum of the
// sorted softmax, in double, rounded to float, at most top_p; at least one), and the cut: the count-th largest.
std::pair<int64_t, float> top_p_cut(const float* v, int64_t n, float top_p, std::vector<float>& terms,
                                    std::vector<float>& sorted, std::vector<uint32_t>& keys,
                                    std::vector<uint32_t>& scratch) {
  const float top = *std::max_element(v, v + n);
  terms.resize(n);
  const float sum = exp_terms(v, n, top, terms.data());
  sorted.clear();  // the candidates: the values within `reach` of the largest, while they are few
  for (const float reach : kNucleusReach) {
    double mass = 0.0;
    for (int64_t i = 0; i < n && static_cast<int64_t>(sorted.size()) <= kNucleusCap; ++i) {
      if (v[i] < top - reach) continue;
      sorted.push_back(v[i]);
      mass += terms[i] / sum;
    }
    const bool few = static_cast<int64_t>(sorted.size()) <= kNucleusCap;
    if (few && static_cast<float>(mass) > top_p) {  // they hold the nucleus, so the cut
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      break;
    }
    sorted.clear();
    if (!few) break;
  }
  for (bool whole = sorted.empty();; whole = true) {
    if (whole) {  // a flat row: every value, radix-sorted
      keys.resize(n);
      for (int64_t i = 0; i < n; ++i) keys[i] = descending_key(v[i]);
      radix_sort(keys, scratch);
      sorted.resize(n);
      for (int64_t i = 0; i < n; ++i) sorted[i] = value_of(keys[i]);
    }
    const int64_t m = static_cast<int64_t>(sorted.size());
    terms.resize(m);
    exp_terms(sorted.data(), m, top, terms.data());
    for (int64_t i = 0; i < m; ++i) terms[i] /= sum;  // the sorted softmax
    const int64_t kept = kept_by_top_p(terms.data(), m, top_p);
    // (every candidate kept: their mass, summed in another order, was within rounding of top_p; sort them all.
    // One candidate is never kept by the sum, only as the one kept at least: its mass is its own term.)
    if (kept == m && m > 1 && m < n && !whole) continue;
    return {kept, sorted[kept - 1]};
  }
}

// logits [R, V] float32, window [R, W] int32 (ids penalized) or none -> [R] int32 ids, each row drawn from
// its distribution with the one generator in row order; an empty tensor, nothing drawn, where a logit is not
// finite or a window id lies outside the row (the caller then samples with the ops).
at::Tensor sample_rows(const at::Tensor& logits, const c10::optional<at::Tensor>& window, double temperature,
                       double top_p, double penalty, std::optional<at::Generator> generator) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "logits must be [R, V] float32");
  TORCH_CHECK(temperature > 0 && top_p > 0 && top_p <= 1 && penalty > 0, "bad sampling settings");
  const at::Tensor x = logits.contiguous();
  const int64_t R = x.size(0), V = x.size(1);
  const at::Tensor none = at::empty({0}, x.options().dtype(at::kInt));
  if (V == 0) return none;
  at::Tensor ids;
  int64_t W = 0;
  if (window.has_value()) {
    TORCH_CHECK(window->dim() == 2 && window->scalar_type() == at::kInt && window->size(0) == R,
                "window must be [R, W] int32");
    ids = window->contiguous();
    W = ids.size(1);
    if (!ids_below(ids, V)) return none;
  }
  const float* in = x.data_ptr<float>();
  if (!all_finite(in, R * V)) return none;
  // (kept from call to call: fresh vectors of a token row's size were fresh pages, ~6% of a draw in page faults)
  thread_local std::vector<float> probs, scratch, terms, sorted;
  thread_local std::vector<uint32_t> keys, key_scratch;
  probs.assign(in, in + R * V);
  for (int64_t r = 0; r < R; ++r) {
    float* v = probs.data() + r * V;
    penalize_row(v, window.has_value() ? ids.data_ptr<int32_t>() + r * W : nullptr, W, static_cast<float>(penalty),
                 scratch);
    const auto [count, cut] = top_p_cut(v, V, static_cast<float>(top_p), terms, sorted, keys, key_scratch);
    keep_row_largest(v, V, cut, count);
    for (int64_t i = 0; i < V; ++i) v[i] /= static_cast<float>(temperature);
    softmax_in_place(v, V);  // (a kept entry is finite: never all -inf)
  }
  at::Tensor out = at::empty({R}, x.options().dtype(at::kInt));
  int32_t* chosen = out.data_ptr<int32_t>();
  auto* gen = cpu_generator(generator);
  std::lock_guard<std::mutex> lock(gen->mutex_);
  Draws draws(gen);
  for (int64_t r = 0; r < R; ++r) chosen[r] = race_row(probs.data() + r * V, V, draws);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fishtts, m) {
  m.def("sort_values_descending(Tensor logits) -> Tensor");
  m.def("keep_largest(Tensor logits, Tensor sorted, Tensor kept) -> Tensor");
  m.def("exponential_race(Tensor probs, Generator? generator) -> Tensor");
  m.def("sample_frames(Tensor token_logits, Tensor code_logits, Tensor? window, float temperature, float top_p, "
        "int top_k, float penalty, int masked, int limit_from, int candidates, Generator? generator) -> Tensor");
  m.def("sample_rows(Tensor logits, Tensor? window, float temperature, float top_p, float penalty, "
        "Generator? generator) -> Tensor");
}

TORCH_LIBRARY_IMPL(fishtts, CPU, m) {
  m.impl("sort_values_descending", &sort_values_descending);
  m.impl("keep_largest", &keep_largest);
  m.impl("exponential_race", &exponential_race);
  m.impl("sample_frames", &sample_frames);
  m.impl("sample_rows", &sample_rows);
}
