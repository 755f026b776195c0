// CPU kernels for the LM's decode step, built on first use by core/lm/kernels.py (-O3 -march=native).
//
// linear_rows: y[n, o] = scale[o] * sum_i x[n, i] * w[o, i] for a few activation rows n and float32,
//   bfloat16 or int8 weights. A decode step is a chain of such matrix-vector products bound by memory
//   bandwidth; this one streams the weights and reads every weight row once for all activation rows.
// linear_rows_int4: the same for 4-bit weights with group-wise scales and offsets, in blocks of 16 rows
//   (quantize.py's layout), against int8-rounded activations.
// set_tuning: software prefetch (distance, hint) and thread count per weight format, for one activation
//   row and for several. What streams best differs between CPUs (a non-temporal prefetch 4 KiB ahead
//   helps on AMD Zen and halves the bandwidth on Intel Sapphire Rapids) and between one row and four
//   (on an AMD EPYC int8 decodes one row 1.3x faster without prefetch, four 1.1x faster with it), so
//   core/lm/autotune.py measures the settings at load and picks. A setting changes no result bit.
// decode_attention: one new position per sequence: RoPE, the KV-cache write and attention over that
//   sequence's filled prefix, for a batch of sequences that each have their own cache slot and position.
// linear_rows_int8_vnni: int8 weights against int16-rounded activations (AVX512-VNNI or AVX2 dot products).
// linear_rows_int8_bytes: the same against activations rounded to int16 a row, as two bytes (AVX512-VNNI).
// linear_rows_int8_amx: int8 weights on AMX tiles against activations rounded to 24 bits a row.
// rope_rows: RoPE of a prompt's queries or keys.
// rms_norm, decode_layer: a decode step's norms, and a whole transformer layer (norms, linears,
//   attention, SwiGLU, residuals) in one call from Python (core/lm/fused.py).
// int8_to_bfloat16, int4_to_bfloat16: weights widened for a prefill matmul on bfloat16 hardware.
//
// The kernels take activations of any shape [..., in] and return [..., out].
//
// Batch invariance: every output value is computed by the same sequence of float operations whatever
// the number of rows in the call, so a sequence gets bit-identical results alone or in a batch.
//
// Threads: a decode step makes ~150 short calls (10-150 us each). OpenMP wakes its workers fast only
// while they spin, and libgomp stops spinning once it manages more threads than there are CPUs, which
// happens as soon as two Python threads have used torch (the engine's scheduler runs on its own
// thread): each call then waits on a futex wake-up, ~1.5x slower in all. So these kernels use their
// own small pool, whose workers spin briefly between calls whatever else the process does, and whose
// pieces of work go to whichever thread is running (the caller never waits for a descheduled worker
// to start). A prompt's many rows through these kernels take OpenMP's threads instead (parallel()).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <type_traits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <cstdlib>
#if defined(_OPENMP)
#include <omp.h>
#endif

// A function computed with two roundings (a product, then a sum) where torch rounds twice. GCC fuses
// a * b + c into one multiply-add by default in C++, and a `#pragma GCC optimize` region between
// push_options and pop_options does not stop it (GCC 12 gives every function the file's last setting);
// the attribute does, and keeps the function out of line. (Clang fuses only within one expression.)
#if defined(__GNUC__) && !defined(__clang__)
#define UNFUSED __attribute__((optimize("fp-contract=off")))
#else
#define UNFUSED
#endif

#include "vector_math.h"  // (f32x16, widen, fma16, hsum, exp16)

namespace {

// -- the worker pool ----------------------------------------------------------------------------

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

class SpinPool {
 public:
  // Sized on first use: `threads` (the caller's torch.get_num_threads() at load) counts the caller.
  static SpinPool& get(int64_t threads = 0) {
    static SpinPool pool(std::max<int64_t>(1, threads > 0 ? threads : at::get_num_threads()) - 1);
    return pool;
  }

  // fn(begin, end) over contiguous pieces of [0, n) (at least `grain` each), on at most `max_parts`
  // threads (0: all), kPiecesPerThread pieces per thread. Each thread owns a run of adjacent pieces and
  // takes them front to back, so its weights stay one sequential stream: every piece started elsewhere
  // costs a prefetch ramp (Intel Xeon, 1 MB int8 matrices: 4 pieces a thread handed out in turn
  // streamed 19.5 GB/s, runs of 2 like one static half a thread 23 GB/s; runs of 4 or 8 ~21). A thread
  // done with its own run takes pieces from the back of the others': on a busy machine (a 2-vCPU VM
  // shared with other work) a worker that is not running when a call starts leaves its pieces to the
  // others, and the call never waits for it.
  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn, int64_t max_parts = 0) {
    const int64_t threads = max_parts > 0 ? std::min<int64_t>(max_parts, workers_.size() + 1) : workers_.size() + 1;
    const int64_t parts = std::min<int64_t>({threads * kPiecesPerThread, std::max<int64_t>(1, n / std::max<int64_t>(1, grain)),
                                             kPieceMask});
    if (threads <= 1 || parts <= 1) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> serial(run_mutex_);  // one call at a time (several Python threads may call)
    job_ = &fn;
    n_ = n;
    parts_.store(parts, std::memory_order_relaxed);
    runs_.store(threads, std::memory_order_relaxed);
    helpers_.store(threads - 1, std::memory_order_relaxed);
    pending_.store(parts, std::memory_order_relaxed);
    const uint64_t job = ++job_id_;
    for (int64_t r = 0; r < threads; ++r)
      runs_state_[r].store((job << 32) | (uint64_t)(parts * r / threads) << kPieceBits | (uint64_t)(parts * (r + 1) / threads),
                           std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      state_.store(job << 32, std::memory_order_release);
    }
    sleep_cv_.notify_all();
    work(job, 0);
    while (pending_.load(std::memory_order_acquire) != 0) cpu_relax();
  }

  size_t size() const { return workers_.size(); }

 private:
  explicit SpinPool(int workers) : runs_state_(new std::atomic<uint64_t>[workers + 1]()) {
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~SpinPool() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stop_ = true;
      state_.fetch_add(uint64_t(1) << 32, std::memory_order_release);
    }
    sleep_cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  // Run job `job`'s pieces: this thread's own run from the front, then the others' from the back. A run's
  // word holds (job id, next piece from the front, end of the pieces left), so a claim (one CAS) checks
  // all three at once: a thread still working on an earlier job sees another id and stops, and never
  // pairs an old job's counters with the next job's (pending would then never reach zero).
  void work(uint64_t job, int64_t own) {
    const int64_t runs = runs_.load(std::memory_order_relaxed), parts = parts_.load(std::memory_order_relaxed);
    for (int64_t k = 0; k < runs; ++k) {
      std::atomic<uint64_t>& run = runs_state_[(own + k) % runs];
      const bool front = k == 0;
      uint64_t s = run.load(std::memory_order_acquire);
      while ((s >> 32) == job) {
        const int64_t next = (int64_t)((s >> kPieceBits) & kPieceMask), end = (int64_t)(s & kPieceMask);
        if (next >= end) break;
        const uint64_t claimed = front ? s + ((uint64_t)1 << kPieceBits) : s - 1;
        if (!run.compare_exchange_weak(s, claimed, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
        // The claim succeeded while the piece was unclaimed, so this job is not done and job_, n_ and
        // parts (read after seeing this job's id) are its own.
        const int64_t part = front ? next : end - 1;
        (*job_)(n_ * part / parts, n_ * (part + 1) / parts);
        pending_.fetch_sub(1, std::memory_order_release);
        s = run.load(std::memory_order_acquire);
      }
    }
  }

  void loop(int worker) {
    uint64_t seen = 0;
    while (true) {
      // Spin ~1-2 ms for the next call (yielding, so that torch's own OpenMP workers can still have
      // this core), then sleep until one comes.
      int spins = 0;
      while ((state_.load(std::memory_order_acquire) >> 32) == seen && spins < kSpins) {
        std::this_thread::yield();
        ++spins;
      }
      if ((state_.load(std::memory_order_acquire) >> 32) == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleep_cv_.wait(lock, [&] { return (state_.load(std::memory_order_acquire) >> 32) != seen; });
      }
      seen = state_.load(std::memory_order_acquire) >> 32;
      if (stop_) return;
      if (worker < helpers_.load(std::memory_order_relaxed)) work(seen, worker + 1);  // a call limited to fewer threads leaves the rest idle
    }
  }

  static constexpr int kSpins = 2000;  // x ~0.5-1 us per yield
  static constexpr int64_t kPiecesPerThread = 2;
  static constexpr int kPieceBits = 16;  // a run's word: job id (32 bits) | next piece (16) | end (16)
  static constexpr int64_t kPieceMask = (int64_t(1) << kPieceBits) - 1;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_, sleep_mutex_;
  std::condition_variable sleep_cv_;
  std::atomic<uint64_t> state_{0};  // job id << 32: what the workers wait on
  std::unique_ptr<std::atomic<uint64_t>[]> runs_state_;  // per thread: its run of pieces (see work)
  std::atomic<int64_t> parts_{0}, runs_{0};
  std::atomic<int64_t> pending_{0};
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  uint64_t job_id_ = 0;
  int64_t n_ = 0;
  std::atomic<int64_t> helpers_{0};
  bool stop_ = false;
};

// A call with more activation rows than a decode step's (a prompt's prefill through a decode kernel)
// runs between torch's own ops, whose OpenMP workers keep spinning on the other vCPUs for a while
// after each op, so the pool's workers wait for a core and the caller does the work alone (int4's
// prefill of 100 positions: 0.27 s against 0.18 s with OpenMP not spinning, AMD EPYC, 2 vCPUs). Such
// calls take OpenMP's threads instead, whose wake-up is small against a call that long.
constexpr int64_t kDecodeRows = 8;  // kernels.py's MAX_ROWS

template <typename F>
void parallel(int64_t n, int64_t grain, F&& fn, int64_t max_parts = 0, int64_t rows = 1) {
  if (rows > kDecodeRows) at::parallel_for(0, n, grain, fn);
  else SpinPool::get().run(n, grain, fn, max_parts);
}

// -- tuning (set by autotune.py) -----------------------------------------------------------------

enum WeightKind { kFloat32 = 0, kBFloat16 = 1, kInt8 = 2, kInt4 = 3, kKinds = 4 };
// kPrefetchL2: into L2, not L1 (prefetcht1). The int4 kernel 4-8 KiB ahead into L2 decoded ~10% faster than
// 1 KiB ahead into L1 (Intel Xeon, 2 vCPUs), where the L1 hint 4-8 KiB ahead gained nothing.
enum PrefetchHint { kNoPrefetch = 0, kPrefetchNTA = 1, kPrefetchT0 = 2, kPrefetchL2 = 3 };

struct Tuning {
  int64_t prefetch_bytes = 4096;
  int64_t hint = kPrefetchNTA;
  int64_t threads = 0;  // 0: the whole pool
  int64_t rows = 1;     // weight rows streamed at once for a single activation row
};
Tuning g_tuning[2][kKinds];  // [several activation rows][kind]

inline const Tuning& tuning(WeightKind kind, int64_t activation_rows) { return g_tuning[activation_rows > 1][kind]; }

constexpr int kUnroll = 4;  // independent accumulators per row: 64 weights per iteration
constexpr int kGroup = 4;   // activation rows per pass over a weight row

// fn(hint) with the tuning's prefetch hint as a compile-time constant (none where `prefetch` is false or the
// distance 0): each kernel is instantiated per hint, so the choice is made once per call, not per load.
template <typename F>
inline void with_hint(const Tuning& t, bool prefetch, F&& fn) {
  const int hint = prefetch && t.prefetch_bytes > 0 ? (int)t.hint : (int)kNoPrefetch;
  if (hint == kPrefetchNTA) fn(std::integral_constant<int, kPrefetchNTA>{});
  else if (hint == kPrefetchT0) fn(std::integral_constant<int, kPrefetchT0>{});
  else if (hint == kPrefetchL2) fn(std::integral_constant<int, kPrefetchL2>{});
  else fn(std::integral_constant<int, kNoPrefetch>{});
}

// Prefetch the `lines` cache lines `distance` bytes ahead of p.
template <int Hint>
inline void prefetch_ahead(const void* p, int64_t distance, int lines) {
  const char* ahead = reinterpret_cast<const char*>(p) + distance;
  for (int line = 0; line < lines; ++line) {
    if (Hint == kPrefetchNTA) __builtin_prefetch(ahead + 64 * line, 0, 0);
    if (Hint == kPrefetchT0) __builtin_prefetch(ahead + 64 * line, 0, 3);
    if (Hint == kPrefetchL2) __builtin_prefetch(ahead + 64 * line, 0, 2);
  }
}

// out[r * B + b] = dot(x[b], w_row r) for R consecutive weight rows and B activation rows of length I.
// Every (r, b) pair is summed in the same order whatever R and B are (batch invariance); several weight
// rows at once give the memory system several streams to fetch ahead (what a single activation row needs
// to reach the bandwidth on Intel).
template <typename W, int B, int R, int Hint>
inline void dot_block(const float* x, int64_t I, const W* wr, int64_t distance, float* out) {
  f32x16 acc[kUnroll][R][B] = {};
  int64_t i = 0;
  for (; i + 16 * kUnroll <= I; i += 16 * kUnroll) {
    if (Hint != kNoPrefetch)
      for (int r = 0; r < R; ++r) prefetch_ahead<Hint>(wr + r * I + i, distance, sizeof(W));
    #pragma GCC unroll 4
    for (int u = 0; u < kUnroll; ++u) {
      #pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const f32x16 wv = widen(wr + r * I + i + 16 * u);
        #pragma GCC unroll 4
        for (int b = 0; b < B; ++b) acc[u][r][b] = fma16(load16(x + b * I + i + 16 * u), wv, acc[u][r][b]);
      }
    }
  }
  for (; i + 16 <= I; i += 16) {
    for (int r = 0; r < R; ++r) {
      const f32x16 wv = widen(wr + r * I + i);
      for (int b = 0; b < B; ++b) acc[0][r][b] = fma16(load16(x + b * I + i), wv, acc[0][r][b]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < B; ++b) {
      f32x16 t = acc[0][r][b];
      for (int u = 1; u < kUnroll; ++u) t += acc[u][r][b];
      float s = hsum(t);
      for (int64_t k = i; k < I; ++k) s += x[b * I + k] * (float)wr[r * I + k];
      out[r * B + b] = s;
    }
  }
}

template <typename W, int B, int R>
inline void dot_block_tuned(const float* x, int64_t I, const W* wr, const Tuning& t, bool prefetch, float* out) {
  // Later row groups find the weight rows in L1: only the first prefetches.
  with_hint(t, prefetch, [&](auto hint) {
    dot_block<W, B, R, decltype(hint)::value>(x, I, wr, t.prefetch_bytes, out);
  });
}

// y[o] = dot(x, w_row o) for one activation row, weight rows [begin, end): dot_block's sums.
template <typename W, int Hint>
void single_rows(const float* x, const W* w, const float* scales, float* y, int64_t I, int64_t distance,
                 int64_t begin, int64_t end) {
  for (int64_t o = begin; o < end; ++o) {
    float out;
    dot_block<W, 1, 1, Hint>(x, I, w + o * I, distance, &out);
    y[o] = scales ? out * scales[o] : out;
  }
}

// y[n, o] for weight rows [begin, end): one activation row takes kRows weight rows at a time.
template <typename W>
void linear_piece(const float* x, const W* w, const float* scales, float* y, int64_t N, int64_t I, int64_t O,
                  const Tuning& t, int64_t begin, int64_t end) {
  constexpr int kRows = 4;
  float out[kRows * kGroup];
  int64_t o = begin;
  // One activation row, one weight row at a time: a tight loop with the prefetch setting resolved once. Row by
  // row through the group switch below, a decode step's float32 linears read at 0.83-0.89 of the memory's
  // bandwidth, this way at 0.94-1.03 (AMD EPYC, AVX-512 build; a 1024-wide row is ~200 ns of memory).
  if (N == 1 && t.rows == 1) {
    with_hint(t, true, [&](auto hint) {
      single_rows<W, decltype(hint)::value>(x, w, scales, y, I, t.prefetch_bytes, o, end);
    });
    return;
  }
  if (N == 1 && t.rows > 1) {
    for (; o + kRows <= end; o += kRows) {
      dot_block_tuned<W, 1, kRows>(x, I, w + o * I, t, true, out);
      for (int r = 0; r < kRows; ++r) y[o + r] = scales ? out[r] * scales[o + r] : out[r];
    }
  }
  for (; o < end; ++o) {
    const W* wr = w + o * I;
    for (int64_t g = 0; g < N; g += kGroup) {
      const float* xg = x + g * I;
      switch (std::min<int64_t>(kGroup, N - g)) {
        case 1: dot_block_tuned<W, 1, 1>(xg, I, wr, t, g == 0, out); break;
        case 2: dot_block_tuned<W, 2, 1>(xg, I, wr, t, g == 0, out); break;
        case 3: dot_block_tuned<W, 3, 1>(xg, I, wr, t, g == 0, out); break;
        default: dot_block_tuned<W, 4, 1>(xg, I, wr, t, g == 0, out); break;
      }
      const float s = scales ? scales[o] : 1.f;
      for (int64_t b = 0; b < std::min<int64_t>(kGroup, N - g); ++b) y[(g + b) * O + o] = scales ? out[b] * s : out[b];
    }
  }
}

template <typename W>
void linear_impl(const float* x, const W* w, const float* scales, float* y, int64_t N, int64_t I, int64_t O,
                 const Tuning& t) {
  parallel(O, 16, [&](int64_t begin, int64_t end) { linear_piece(x, w, scales, y, N, I, O, t, begin, end); },
           t.threads, N);
}

// The kernels take x of any shape [..., in] (a decode step's [B, 1, in]) and return [..., out]: a
// view on the Python side costs more than the rest of a small call.
at::Tensor rows_of(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat, "x must be float32 [..., in]");
  return x.reshape({-1, x.size(-1)}).contiguous();
}

at::Tensor output_for(const at::Tensor& x, int64_t O) {
  auto shape = x.sizes().vec();
  shape.back() = O;
  return at::empty(shape, x.options());
}

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& scales) {
  auto xc = rows_of(x);
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == xc.size(1), "w must be contiguous [out, in]");
  const int64_t N = xc.size(0), I = w.size(1), O = w.size(0);
  auto y = output_for(x, O);
  const float* sp = nullptr;
  at::Tensor sc;
  if (scales.has_value()) {
    sc = scales->to(at::kFloat).contiguous();
    TORCH_CHECK(sc.numel() == O, "scales must have one entry per output row");
    sp = sc.data_ptr<float>();
  }
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  switch (w.scalar_type()) {
    case at::kFloat: linear_impl(xp, w.data_ptr<float>(), sp, yp, N, I, O, tuning(kFloat32, N)); break;
    case at::kBFloat16: linear_impl(xp, w.data_ptr<at::BFloat16>(), sp, yp, N, I, O, tuning(kBFloat16, N)); break;
    case at::kChar: linear_impl(xp, w.data_ptr<int8_t>(), sp, yp, N, I, O, tuning(kInt8, N)); break;
    default: TORCH_CHECK(false, "w must be float32, bfloat16 or int8");
  }
  return y;
}

// -- int4 ----------------------------------------------------------------------------------------
// Weights q in 0..15, w = q * scale + offset per row and group of G = kInt4Group inputs. Rows come in
// blocks of kInt4Rows (quantize.py pads the last block with zero rows): a block is I / 8 chunks of 64
// bytes, and in chunk c the 4 bytes of row r hold inputs 8c..8c+3 (low nibbles) and 8c+4..8c+7 (high
// nibbles). So one 64-byte load holds 8 inputs of 16 rows, and an instruction that sums 4 byte
// products a 32-bit lane, against 4 activations broadcast to every lane, gives each row its own lane:
// no horizontal sums, and a group's scales and offsets apply to 16 rows as one vector each
// ([blocks, groups, 16], bfloat16: 32 bytes each per 512 bytes of weights). Row-major packing, one
// row per vector, spent ~40% of its instructions on per-group bookkeeping and ran compute-bound at
// ~60% of the memory bandwidth (AMD EPYC, 2 vCPUs).
// The activations are rounded to int8 per row and group (x / (absmax / 127), to nearest even): their
// rounding (~0.5% of a dot) is small against int4's own error (~10%), and the dots are then integers,
// exact in any order, so every instruction set below computes the same bits.
// Per row: y = sum_g scale[g] * (xscale_g * dot(q_g, xq_g) + residual8_g) + offset[g] * sum(x_g), in
// that order (batch invariance: the same whatever the rows in the call).

constexpr int64_t kInt4Group = 64;
constexpr int64_t kInt4Rows = 16;
constexpr int64_t kInt4Chunk = 64;  // bytes: 8 inputs of a block's 16 rows

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define FISHTTS_VNNI 1
#endif

// Per activation row and group: the int8 values (in input order), their scale, the float sum, and
// 8 * what the int8 values miss of it (sum - scale * sum(int8)). The dot uses q in 0..15, whose mean
// 7.5 would multiply the rounding of x; adding 8 * scale * residual makes the rounding act on (q - 8)
// only, about half the error.
// A calling thread's buffer of n values, reused from call to call (a decode step makes ~120 calls), its
// start on a cache line: the kernels load rows of activations as 64-byte vectors, and a vector that
// straddles two lines costs two loads (where malloc put a buffer varied from process to process).
template <typename T>
T* line_aligned(std::vector<T>& buffer, int64_t n) {
  buffer.resize(n + 64 / sizeof(T));
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t(63));
}

struct Int4Activations {
  const int8_t* q;
  const float *scale, *sum, *residual8;
  Int4Activations(const float* x, int64_t N, int64_t I) {
    const int64_t groups = N * I / kInt4Group;
    thread_local std::vector<int8_t> q_buffer;
    thread_local std::vector<float> f_buffer;
    f_buffer.resize(3 * groups);
    int8_t* qp = line_aligned(q_buffer, N * I);
    float *sp = f_buffer.data(), *sums = sp + groups, *res = sums + groups;
    for (int64_t r = 0; r < groups; ++r) {
      const float* xg = x + r * kInt4Group;
      int8_t* dst = qp + r * kInt4Group;
      f32x16 v[4], total = {}, top = {};
      for (int k = 0; k < 4; ++k) {
        v[k] = load16(xg + 16 * k);
        total += v[k];
        top = max16(abs16(v[k]), top);  // (as std::max(top, |v|))
      }
      sums[r] = hsum(total);
      const float absmax = hmax(top, 0.f);
      sp[r] = absmax / 127.f;
      const float inv = absmax > 0.f ? 127.f / absmax : 0.f;
      int32_t qsum = 0;
#if defined(__AVX512F__)
      __m512i qs = _mm512_setzero_si512();
      for (int k = 0; k < 4; ++k) {  // rounds to nearest even, as nearbyint under the default rounding mode
        const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps((__m512)v[k], _mm512_set1_ps(inv)));
        _mm_storeu_si128((__m128i*)(dst + 16 * k), _mm512_cvtsepi32_epi8(qi));
        qs = _mm512_add_epi32(qs, qi);
      }
      qsum = _mm512_reduce_add_epi32(qs);
#else
      for (int64_t i = 0; i < kInt4Group; ++i) {
        dst[i] = (int8_t)std::nearbyint(xg[i] * inv);
        qsum += dst[i];
      }
#endif
      res[r] = 8.f * (sums[r] - sp[r] * (float)qsum);
    }
    q = qp;
    scale = sp;
    sum = sums;
    residual8 = res;
  }
};

inline int32_t four_bytes(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

// d[k][b]: the 16 rows' integer dots over group g for R blocks (block k at w + k * block_bytes) and B
// activation rows (row b's int8 values at xq + b * I).
template <int R, int B, int Hint>
inline void group_dots_int4(const uint8_t* w, int64_t block_bytes, const int8_t* xq, int64_t I, int64_t g,
                            int64_t distance, i32x16 d[R][B]) {
#if defined(FISHTTS_VNNI)
  // Two chains per (block, row): the low nibbles, and the high ones masked in place (16 q: the products
  // stay exact in int32 and the sum is shifted back once per group).
  const __m512i low_mask = _mm512_set1_epi8(0x0F), high_mask = _mm512_set1_epi8((char)0xF0);
  __m512i low[R][B], high[R][B];
  for (int k = 0; k < R; ++k)
    for (int b = 0; b < B; ++b) low[k][b] = high[k][b] = _mm512_setzero_si512();
  #pragma GCC unroll 8
  for (int64_t c = g * 8; c < g * 8 + 8; ++c) {
    for (int k = 0; k < R; ++k) {
      const uint8_t* p = w + k * block_bytes + c * kInt4Chunk;
      if (Hint != kNoPrefetch) prefetch_ahead<Hint>(p, distance, 1);
      const __m512i packed = _mm512_loadu_si512((const void*)p);
      const __m512i q_low = _mm512_and_si512(packed, low_mask), q_high = _mm512_and_si512(packed, high_mask);
      for (int b = 0; b < B; ++b) {
        const int8_t* x = xq + b * I + c * 8;
        low[k][b] = _mm512_dpbusd_epi32(low[k][b], q_low, _mm512_set1_epi32(four_bytes(x)));
        high[k][b] = _mm512_dpbusd_epi32(high[k][b], q_high, _mm512_set1_epi32(four_bytes(x + 4)));
      }
    }
  }
  for (int k = 0; k < R; ++k)
    for (int b = 0; b < B; ++b) d[k][b] = (i32x16)_mm512_add_epi32(low[k][b], _mm512_srai_epi32(high[k][b], 4));
#elif defined(FISHTTS_VECTOR_HALVES)
  // Per half block (8 rows): byte products summed in pairs into int16 (|sum| <= 2 * 15 * 127), four
  // chunks' worth of them (<= 30480) before widening to int32 pairs.
  const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  for (int k = 0; k < R; ++k)
    for (int b = 0; b < B; ++b) d[k][b] = i32x16{};
  for (int64_t c0 = g * 8; c0 < g * 8 + 8; c0 += 4) {
    for (int k = 0; k < R; ++k) {
      __m256i pairs[B][2];
      for (int b = 0; b < B; ++b) pairs[b][0] = pairs[b][1] = _mm256_setzero_si256();
      for (int64_t c = c0; c < c0 + 4; ++c) {
        const uint8_t* p = w + k * block_bytes + c * kInt4Chunk;
        if (Hint != kNoPrefetch) prefetch_ahead<Hint>(p, distance, 1);
        for (int h = 0; h < 2; ++h) {
          const __m256i packed = _mm256_loadu_si256((const __m256i*)(p + 32 * h));
          const __m256i q_low = _mm256_and_si256(packed, mask);
          const __m256i q_high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
          for (int b = 0; b < B; ++b) {
            const int8_t* x = xq + b * I + c * 8;
            const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(q_low, _mm256_set1_epi32(four_bytes(x))),
                                               _mm256_maddubs_epi16(q_high, _mm256_set1_epi32(four_bytes(x + 4))));
            pairs[b][h] = _mm256_add_epi16(pairs[b][h], s);
          }
        }
      }
      for (int b = 0; b < B; ++b) {
        __m256i half[2];
        for (int h = 0; h < 2; ++h) half[h] = _mm256_madd_epi16(pairs[b][h], ones);
        d[k][b] += i32x16{(i32x8)half[0], (i32x8)half[1]};
      }
    }
  }
#else
  for (int k = 0; k < R; ++k)
    for (int b = 0; b < B; ++b) {
      i32x16 sum = {};
      for (int64_t c = g * 8; c < g * 8 + 8; ++c) {
        const uint8_t* p = w + k * block_bytes + c * kInt4Chunk;
        const int8_t* x = xq + b * I + c * 8;
        for (int r = 0; r < 16; ++r)
          for (int j = 0; j < 4; ++j) sum[r] += (p[4 * r + j] & 15) * x[j] + (p[4 * r + j] >> 4) * x[4 + j];
      }
      d[k][b] = sum;
    }
#endif
}

// y[b * O + 16 k + r] for R blocks (k) of 16 rows (r) and B activation rows from row0.
template <int R, int B, int Hint>
inline void dot_blocks_int4(const Int4Activations& act, int64_t row0, int64_t I, const uint8_t* w,
                            const at::BFloat16* s, const at::BFloat16* z, int64_t distance, float* y, int64_t O) {
  const int64_t groups = I / kInt4Group, block_bytes = I * kInt4Rows / 2, block_scales = groups * kInt4Rows;
  const int8_t* xq = act.q + row0 * I;
  f32x16 acc[R][B] = {};
  for (int64_t g = 0; g < groups; ++g) {
    i32x16 d[R][B];
    group_dots_int4<R, B, Hint>(w, block_bytes, xq, I, g, distance, d);
    for (int k = 0; k < R; ++k) {
      const f32x16 scale = widen(s + k * block_scales + g * kInt4Rows);
      const f32x16 offset = widen(z + k * block_scales + g * kInt4Rows);
      for (int b = 0; b < B; ++b) {
        const int64_t a = (row0 + b) * groups + g;
        const f32x16 t = fma16(to_float(d[k][b]), splat(act.scale[a]), splat(act.residual8[a]));
        acc[k][b] = fma16(offset, splat(act.sum[a]), fma16(scale, t, acc[k][b]));
      }
    }
  }
  for (int k = 0; k < R; ++k)
    for (int b = 0; b < B; ++b) store16(y + b * O + k * kInt4Rows, acc[k][b]);
}

template <int R, int B>
inline void dot_blocks_int4_tuned(const Int4Activations& act, int64_t row0, int64_t I, const uint8_t* w,
                                  const at::BFloat16* s, const at::BFloat16* z, const Tuning& t, bool prefetch,
                                  float* y, int64_t O) {
  with_hint(t, prefetch, [&](auto hint) {
    dot_blocks_int4<R, B, decltype(hint)::value>(act, row0, I, w, s, z, t.prefetch_bytes, y, O);
  });
}

// x [..., I] float32; packed [blocks, I / 8, 16, 4] uint8; scales, offsets [blocks, I / 64, 16] bfloat16
// -> [..., blocks * 16] (the padding rows included).
at::Tensor linear_rows_int4(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                            const at::Tensor& offsets) {
  auto xc = rows_of(x);
  const int64_t N = xc.size(0), I = xc.size(1), blocks = packed.size(0), O = blocks * kInt4Rows;
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 4 && packed.is_contiguous() &&
                  packed.size(1) * 8 == I && packed.size(2) == kInt4Rows && packed.size(3) == 4,
              "packed must be contiguous uint8 [out / 16, in / 8, 16, 4]");
  TORCH_CHECK(I % kInt4Group == 0, "in must be a multiple of 64");
  const int64_t groups = I / kInt4Group;
  for (const auto* t : {&scales, &offsets})
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->dim() == 3 && t->size(0) == blocks
                && t->size(1) == groups && t->size(2) == kInt4Rows,
                "scales and offsets must be contiguous bfloat16 [out / 16, in / 64, 16]");
  const Int4Activations act(xc.data_ptr<float>(), N, I);
  auto y = output_for(x, O);
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  const at::BFloat16* sp = scales.data_ptr<at::BFloat16>();
  const at::BFloat16* zp = offsets.data_ptr<at::BFloat16>();
  float* yp = y.data_ptr<float>();
  const Tuning& t = tuning(kInt4, N);
  const int64_t block_bytes = I * kInt4Rows / 2, block_scales = groups * kInt4Rows;
  parallel(blocks, 1, [&](int64_t begin, int64_t end) {
    int64_t k = begin;
    if (N == 1 && t.rows > 1)  // one activation row: two blocks at once (two streams to fetch ahead)
      for (; k + 2 <= end; k += 2)
        dot_blocks_int4_tuned<2, 1>(act, 0, I, wp + k * block_bytes, sp + k * block_scales, zp + k * block_scales, t,
                                    true, yp + k * kInt4Rows, O);
    for (; k < end; ++k) {
      const uint8_t* w = wp + k * block_bytes;
      const at::BFloat16 *s = sp + k * block_scales, *z = zp + k * block_scales;
      for (int64_t n = 0; n < N; n += kGroup) {
        float* out = yp + n * O + k * kInt4Rows;
        switch (std::min<int64_t>(kGroup, N - n)) {
          case 1: dot_blocks_int4_tuned<1, 1>(act, n, I, w, s, z, t, n == 0, out, O); break;
          case 2: dot_blocks_int4_tuned<1, 2>(act, n, I, w, s, z, t, n == 0, out, O); break;
          case 3: dot_blocks_int4_tuned<1, 3>(act, n, I, w, s, z, t, n == 0, out, O); break;
          default: dot_blocks_int4_tuned<1, 4>(act, n, I, w, s, z, t, n == 0, out, O); break;
        }
      }
    }
  }, t.threads, N);
  return y;
}

// -- int8 weights with int16 activations (AVX512-VNNI, or AVX2) ----------------------------------------
// The float path widens 16 weights to floats per FMA and is compute-bound below the bandwidth on a core
// that two vCPUs share. Here the activations are rounded to int16 per group of 64 (scale absmax / 32767:
// a relative rounding of ~1e-5, far below int8's own weight error; int8 activations, ~0.5% of a dot,
// flipped greedy tokens of the parity model) and two vpdpwssd multiply 64 sign-extended weights into
// int32 (at most 4 products of 127 * 32767 a lane: no overflow). AVX2 sums the same products with four
// vpmaddwd into the same lanes: integer sums, exact in any order, so both compute the same bits.

#if defined(FISHTTS_VNNI) || defined(FISHTTS_VECTOR_HALVES)
#define FISHTTS_INT16_DOTS 1
#endif

#if defined(FISHTTS_INT16_DOTS)
struct Int16Activations {
  int16_t* q;    // [N, I]
  float* scale;  // [N, I / 64]
  Int16Activations(const float* x, int64_t N, int64_t I) {
    const int64_t groups = N * I / kInt4Group;
    thread_local std::vector<int16_t> q_buffer;
    thread_local std::vector<float> f_buffer;
    f_buffer.resize(groups);
    q = line_aligned(q_buffer, N * I);
    scale = f_buffer.data();
    for (int64_t r = 0; r < groups; ++r) {
      const float* xg = x + r * kInt4Group;
#if defined(FISHTTS_VNNI)
      __m512 top = _mm512_setzero_ps();
      for (int k = 0; k < 4; ++k) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(xg + 16 * k)));
      const float absmax = _mm512_reduce_max_ps(top);
      scale[r] = absmax / 32767.f;
      const __m512 inv = _mm512_set1_ps(absmax > 0.f ? 32767.f / absmax : 0.f);
      for (int k = 0; k < 4; ++k)
        _mm256_storeu_si256((__m256i*)(q + r * kInt4Group + 16 * k),
                            _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + 16 * k), inv))));
#else
      f32x16 top{};
      for (int k = 0; k < 4; ++k) top = max16(top, abs16(load16(xg + 16 * k)));
      const float absmax = hmax(top, 0.f);
      scale[r] = absmax / 32767.f;
      const float inv = absmax > 0.f ? 32767.f / absmax : 0.f;
      for (int k = 0; k < 4; ++k) {  // rounded to nearest even and saturated, as the AVX-512 form
        const f32x16 v = load16(xg + 16 * k) * inv;
        const __m256i packed = _mm256_packs_epi32(_mm256_cvtps_epi32((__m256)v.lo), _mm256_cvtps_epi32((__m256)v.hi));
        _mm256_storeu_si256((__m256i*)(q + r * kInt4Group + 16 * k), _mm256_permute4x64_epi64(packed, 0xD8));
      }
#endif
    }
  }
};

// out[b] = dot(x[row0 + b], w_row) for B activation rows. Two float accumulators per row (even and odd
// groups) give the core independent chains to overlap: one chain waits out an FMA's latency per group,
// which alone kept the kernel below the memory bandwidth. Each row's sum runs in the same order whatever
// B is (batch invariance).
template <int B, int Hint>
inline void dot_rows_int8_vnni(const Int16Activations& act, int64_t row0, int64_t I, const int8_t* wr,
                               int64_t distance, float* out) {
  const int64_t groups = I / kInt4Group;
  f32x16 acc[2][B] = {};
  auto step = [&](int64_t g, int u) __attribute__((always_inline)) {
    const int8_t* wg = wr + g * kInt4Group;
    if (Hint != kNoPrefetch) prefetch_ahead<Hint>(wg, distance, 1);
#if defined(FISHTTS_VNNI)
    const __m512i low = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)wg));
    const __m512i high = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(wg + 32)));
    for (int b = 0; b < B; ++b) {
      const int64_t k = (row0 + b) * groups + g;
      const int16_t* xq = act.q + k * kInt4Group;
      __m512i dots = _mm512_dpwssd_epi32(_mm512_setzero_si512(), low, _mm512_loadu_si512((const void*)xq));
      dots = _mm512_dpwssd_epi32(dots, high, _mm512_loadu_si512((const void*)(xq + 32)));
      acc[u][b] = fma16((f32x16)_mm512_cvtepi32_ps(dots), splat(act.scale[k]), acc[u][b]);
    }
#else
    // lane j of 0-7: inputs 2j, 2j + 1 and 32 + 2j, 33 + 2j; lane 8 + j: 16 + 2j, ... (as vpdpwssd's lanes)
    __m256i w16[4];
    for (int c = 0; c < 4; ++c) w16[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(wg + 16 * c)));
    for (int b = 0; b < B; ++b) {
      const int64_t k = (row0 + b) * groups + g;
      const __m256i* xq = (const __m256i*)(act.q + k * kInt4Group);
      const __m256i lo = _mm256_add_epi32(_mm256_madd_epi16(w16[0], _mm256_loadu_si256(xq)),
                                          _mm256_madd_epi16(w16[2], _mm256_loadu_si256(xq + 2)));
      const __m256i hi = _mm256_add_epi32(_mm256_madd_epi16(w16[1], _mm256_loadu_si256(xq + 1)),
                                          _mm256_madd_epi16(w16[3], _mm256_loadu_si256(xq + 3)));
      acc[u][b] = fma16(to_float(i32x16{(i32x8)lo, (i32x8)hi}), splat(act.scale[k]), acc[u][b]);
    }
#endif
  };
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2) {
    step(g, 0);
    step(g + 1, 1);
  }
  if (g < groups) step(g, 0);
  for (int b = 0; b < B; ++b) out[b] = hsum(acc[0][b] + acc[1][b]);
}

#endif

// The int8 kernels' frame around their dot products: x [..., I] float32 against w [O, I] int8 with scales
// [O] float32, x @ (w * scales).T. `Act` rounds the activation rows once a call; dot(rows, hint, act, row0, I,
// wr, distance, out) sums `rows` of them from row0 on against weight row wr, rows (1-4) and the prefetch hint
// as compile-time constants (std::integral_constant).
template <typename Act, typename Dot>
at::Tensor int8_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, Dot&& dot) {
  auto xc = rows_of(x);
  const int64_t N = xc.size(0), I = xc.size(1), O = w.size(0);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2 && w.is_contiguous() && w.size(1) == I,
              "w must be contiguous int8 [out, in]");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == O,
              "scales must be float32 [out]");
  const Act act(xc.data_ptr<float>(), N, I);
  auto y = output_for(x, O);
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const Tuning& t = tuning(kInt8, N);
  parallel(O, 16, [&](int64_t begin, int64_t end) {
    float out[kGroup];
    for (int64_t o = begin; o < end; ++o) {
      const int8_t* wr = wp + o * I;
      for (int64_t g = 0; g < N; g += kGroup) {
        const int64_t rows = std::min<int64_t>(kGroup, N - g);
        with_hint(t, g == 0, [&](auto hint) {  // (later row groups find the weight row in L1)
          const int64_t d = t.prefetch_bytes;
          switch (rows) {
            case 1: dot(std::integral_constant<int, 1>{}, hint, act, g, I, wr, d, out); break;
            case 2: dot(std::integral_constant<int, 2>{}, hint, act, g, I, wr, d, out); break;
            case 3: dot(std::integral_constant<int, 3>{}, hint, act, g, I, wr, d, out); break;
            default: dot(std::integral_constant<int, 4>{}, hint, act, g, I, wr, d, out); break;
          }
        });
        for (int64_t b = 0; b < rows; ++b) yp[(g + b) * O + o] = out[b] * sp[o];
      }
    }
  }, t.threads, N);
  return y;
}

// x [..., I] float32; w [O, I] int8; scales [O] float32: x @ (w * scales).T.
at::Tensor linear_rows_int8_vnni(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales) {
#if defined(FISHTTS_INT16_DOTS)
  if (x.size(-1) % kInt4Group) return linear_rows(x, w, scales);  // (the float-activation kernel)
  return int8_rows<Int16Activations>(x, w, scales, [](auto rows, auto hint, auto&&... args) {
    dot_rows_int8_vnni<decltype(rows)::value, decltype(hint)::value>(args...);
  });
#else
  TORCH_CHECK(false, "linear_rows_int8_vnni needs AVX512-VNNI or AVX2");
  return x;
#endif
}

// -- int8 weights against int16 activations in two bytes (AVX512-VNNI) --------------------------------
// The int16 kernel above spends six vector operations on 64 weights (two sign extensions, two vpdpwssd,
// its group's float conversion and FMA). Here each activation row is rounded to int16 with one scale
// (absmax / 32767) and split into unsigned bytes, q = 256 (h - 128) + l, so that vpdpbusd (unsigned times
// signed bytes) multiplies 64 weights by a digit in one instruction; a third one sums the weights, whose
// 128 * sum comes off the h digit's sum. Three instructions, all int32 and combined once a row: exact, so
// a row's result does not depend on the order of the work or on the other rows. From cache a Zen 4 core
// multiplies 15-20% more weights a second; decode gains less (memory holds it), most for batches.

#if defined(__AVX512F__)
// Rounding a row of I floats (a multiple of 16) to integers up to `limit`: its scale (absmax / limit) into
// `scale`, and the multiplier that takes a value to its integer (0 for a zero row). The bytes and AMX kernels'.
inline __m512 row_rounding(const float* x, int64_t I, float limit, float& scale) {
  __m512 top = _mm512_setzero_ps();
  for (int64_t i = 0; i < I; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  const float absmax = _mm512_reduce_max_ps(top);
  scale = absmax / limit;
  return _mm512_set1_ps(absmax > 0.f ? limit / absmax : 0.f);
}
#endif

#if defined(FISHTTS_VNNI)
struct ByteActivations {
  uint8_t* high;  // [N, I]: h = (q >> 8) + 128
  uint8_t* low;   // [N, I]: l = q & 255
  float* scale;   // [N]
  ByteActivations(const float* x, int64_t N, int64_t I) {
    thread_local std::vector<uint8_t> byte_buffer;
    thread_local std::vector<float> scale_buffer;
    scale_buffer.resize(N);
    high = line_aligned(byte_buffer, 2 * N * I);
    low = high + N * I;
    scale = scale_buffer.data();
    const __m512i offset = _mm512_set1_epi16(128), mask = _mm512_set1_epi16(255);
    for (int64_t b = 0; b < N; ++b) {
      const float* xb = x + b * I;
      const __m512 inv = row_rounding(xb, I, 32767.f, scale[b]);
      for (int64_t i = 0; i < I; i += 32) {  // rounded to nearest even, saturated to int16
        const __m512i q = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + i), inv)))),
            _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + i + 16), inv))), 1);
        _mm256_storeu_si256((__m256i*)(high + b * I + i), _mm512_cvtepi16_epi8(_mm512_add_epi16(_mm512_srai_epi16(q, 8), offset)));
        _mm256_storeu_si256((__m256i*)(low + b * I + i), _mm512_cvtepi16_epi8(_mm512_and_si512(q, mask)));
      }
    }
  }
};

// acc += u8 . s8 in groups of four bytes. (GCC's intrinsic loaded the weights from memory once per use and
// copied each accumulator before and after every vpdpbusd: 2.5x the instructions the sums need.)
inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %[s8], %[u8], %[acc]" : [acc] "+v"(acc) : [u8] "v"(u8), [s8] "v"(s8));
  return acc;
}

// out[b] = dot(q[row0 + b], w_row) * scale[row0 + b] for B activation rows. Two sets of accumulators
// (even and odd 64-groups) keep more dot chains in flight than one vpdpbusd's latency.
template <int B, int Hint>
inline void dot_rows_int8_bytes(const ByteActivations& act, int64_t row0, int64_t I, const int8_t* wr,
                                int64_t distance, float* out) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i weights[2] = {}, high[2][B] = {}, low[2][B] = {};
  auto step = [&](int64_t i, int u) __attribute__((always_inline)) {
    if (Hint != kNoPrefetch) prefetch_ahead<Hint>(wr + i, distance, 1);
    __m512i w;  // (loaded once: GCC loaded it again for each use)
    asm("vmovdqu64 %[p], %[w]" : [w] "=v"(w) : [p] "m"(*(const __m512i*)(wr + i)));
    weights[u] = dpbusd(weights[u], ones, w);
    for (int b = 0; b < B; ++b) {
      const int64_t at = (row0 + b) * I + i;
      high[u][b] = dpbusd(high[u][b], _mm512_loadu_si512((const void*)(act.high + at)), w);
      low[u][b] = dpbusd(low[u][b], _mm512_loadu_si512((const void*)(act.low + at)), w);
    }
  };
  int64_t i = 0;
  for (; i + 2 * kInt4Group <= I; i += 2 * kInt4Group) {
    step(i, 0);
    step(i + kInt4Group, 1);
  }
  if (i < I) step(i, 0);
  const int64_t sum_w = _mm512_reduce_add_epi32(_mm512_add_epi32(weights[0], weights[1]));
  for (int b = 0; b < B; ++b) {
    const int64_t h = _mm512_reduce_add_epi32(_mm512_add_epi32(high[0][b], high[1][b]));
    const int64_t l = _mm512_reduce_add_epi32(_mm512_add_epi32(low[0][b], low[1][b]));
    out[b] = (float)((double)(256 * (h - 128 * sum_w) + l) * act.scale[row0 + b]);  // (one rounding, as AMX's)
  }
}
#endif

// x [..., I] float32; w [O, I] int8; scales [O] float32: x @ (w * scales).T.
at::Tensor linear_rows_int8_bytes(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales) {
#if defined(FISHTTS_VNNI)
  // (widths that are not whole 64-groups take the float-activation kernel; below 2^16 inputs a digit's sum of
  // products, <= 255 * 128 each, is exact in int32)
  if (x.size(-1) % kInt4Group || x.size(-1) >= (1 << 16)) return linear_rows(x, w, scales);
  return int8_rows<ByteActivations>(x, w, scales, [](auto rows, auto hint, auto&&... args) {
    dot_rows_int8_bytes<decltype(rows)::value, decltype(hint)::value>(args...);
  });
#else
  TORCH_CHECK(false, "linear_rows_int8_bytes needs AVX512-VNNI");
  return x;
#endif
}

// -- int8 weights on AMX tiles -------------------------------------------------------------------
// The AVX-512 kernels spend about as long multiplying as the memory takes to deliver the weights, and
// the two overlap only in part. An AMX tile multiply takes 1 KiB of weights (16 rows x 64 inputs) in
// one instruction, so the multiplying nearly vanishes. Tiles multiply int8 by int8, so each activation
// row is rounded to a 24-bit integer (one scale a row: absmax / kAmxLimit) and split into three signed
// bytes, x = 65536 h + 256 m + l: three columns of the activation tile. The int32 sums are exact, so a
// row's result does not depend on the order of the work or the other rows (batch invariance), and the
// rounding (~1e-7 of the row's largest value) is far below int8's own.

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__linux__)
#define FISHTTS_INT8_AMX 1
#endif

#if defined(FISHTTS_INT8_AMX)
constexpr int32_t kAmxLimit = 127 * 65536 + 127 * 256 + 127;  // the largest x with h, m, l in int8
constexpr int kAmxDigits = 3;
constexpr int kAmxChunkRows = 5;  // activation rows a tile holds: 5 x 3 columns of 4 bytes <= 64 bytes

// Linux hands out AMX state only on request, once per process.
bool amx_permitted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// The activation rows as digit tiles: chunks of at most kAmxChunkRows rows; per chunk and 64-group,
// 16 tile rows of `columns` int32 words, word (k, 3 j + d) = digit d of inputs 4k..4k+3 of the chunk's
// row j (h, m, l). Also every row's digits in input order, for weight rows outside whole 16-row blocks.
struct AmxActivations {
  int64_t N, I, chunks;
  int64_t chunk_rows[2], columns[2];
  int8_t* digits;  // [N, 3, I]
  int32_t* tiles;  // [chunks][I / 64][16][columns]
  float* scale;    // [N]
  AmxActivations(const float* x, int64_t N_, int64_t I_) : N(N_), I(I_) {
    chunks = N <= kAmxChunkRows ? 1 : 2;
    chunk_rows[0] = chunks == 1 ? N : (N + 1) / 2;
    chunk_rows[1] = N - chunk_rows[0];
    for (int c = 0; c < 2; ++c) columns[c] = kAmxDigits * chunk_rows[c];
    thread_local std::vector<int8_t> digit_buffer;
    thread_local std::vector<int32_t> tile_buffer;
    thread_local std::vector<float> scale_buffer;
    digit_buffer.resize(N * kAmxDigits * I);
    tile_buffer.resize(I / 4 * kAmxDigits * N);
    scale_buffer.resize(N);
    digits = digit_buffer.data();
    tiles = tile_buffer.data();
    scale = scale_buffer.data();
    for (int64_t b = 0; b < N; ++b) {
      const float* xb = x + b * I;
      const __m512 inv = row_rounding(xb, I, (float)kAmxLimit, scale[b]);
      const __m512i limit = _mm512_set1_epi32(kAmxLimit);
      int8_t* h = digits + b * kAmxDigits * I;
      for (int64_t i = 0; i < I; i += 16) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + i), inv));
        q = _mm512_max_epi32(_mm512_min_epi32(q, limit), _mm512_sub_epi32(_mm512_setzero_si512(), limit));
        const __m512i l = _mm512_srai_epi32(_mm512_slli_epi32(q, 24), 24);  // the low byte, signed
        const __m512i t = _mm512_srai_epi32(_mm512_sub_epi32(q, l), 8);
        const __m512i m = _mm512_srai_epi32(_mm512_slli_epi32(t, 24), 24);
        const __m512i hh = _mm512_srai_epi32(_mm512_sub_epi32(t, m), 8);
        _mm_storeu_si128((__m128i*)(h + i), _mm512_cvtepi32_epi8(hh));
        _mm_storeu_si128((__m128i*)(h + I + i), _mm512_cvtepi32_epi8(m));
        _mm_storeu_si128((__m128i*)(h + 2 * I + i), _mm512_cvtepi32_epi8(l));
      }
    }
    const int64_t words = I / 4;
    int32_t* out = tiles;
    for (int64_t c = 0, row0 = 0; c < chunks; row0 += chunk_rows[c], ++c)
      for (int64_t k = 0; k < words; ++k)  // tile row k of group k / 16
        for (int64_t j = 0; j < chunk_rows[c]; ++j)
          for (int d = 0; d < kAmxDigits; ++d) {
            std::memcpy(out++, digits + ((row0 + j) * kAmxDigits + d) * I + 4 * k, 4);
          }
  }
  const int32_t* chunk(int c) const { return tiles + (c == 0 ? 0 : I / 4 * columns[0]); }
};

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles: sums 0-1 (16 weight rows x a chunk's columns), weights 4 (16 rows x 64 inputs), activation
// chunks 6-7.
void configure_tiles(const AmxActivations& act) {
  TileConfig config;
  for (int c = 0; c < act.chunks; ++c) {
    config.rows[c] = 16, config.colsb[c] = 4 * act.columns[c];
    config.rows[6 + c] = 16, config.colsb[6 + c] = 4 * act.columns[c];
  }
  config.rows[4] = 16, config.colsb[4] = 64;
  _tile_loadconfig(&config);
}

// The sums of one 16-row block of `w` (row stride I) against each chunk: sums [chunk][16][columns].
// One block at a time: its 16 rows are 16 sequential streams, which the hardware prefetchers follow
// (four blocks at once, 64 streams, streamed ~15% slower from memory). The block is also 16 I
// contiguous bytes, so with the T0 hint (set_tuning; the distance is always a block) each tile step
// asks for the next 1 KiB of the next block: one sequential stream a block ahead, ~3-6% faster on the
// Intel Xeon (per-row prefetches 512 B / 2 KiB ahead and the non-temporal hint were slower).
template <int Chunks, int Hint>
inline void amx_block(const int8_t* w, int64_t I, int64_t stride, const int8_t* ahead, const AmxActivations& act,
                      int32_t* sums) {
  _tile_zero(0);
  if (Chunks == 2) _tile_zero(1);
  const int32_t *c0 = act.chunk(0), *c1 = act.chunk(1);
  const int64_t stride0 = 4 * act.columns[0], stride1 = 4 * act.columns[1];
  for (int64_t g = 0; g < I / kInt4Group; ++g) {
    if (Hint != kNoPrefetch) prefetch_ahead<Hint>(ahead + 16 * kInt4Group * g, 0, 16);
    _tile_loadd(4, w + g * kInt4Group, stride);
    _tile_loadd(6, c0 + g * 16 * act.columns[0], stride0);
    _tile_dpbssd(0, 4, 6);
    if (Chunks == 2) {
      _tile_loadd(7, c1 + g * 16 * act.columns[1], stride1);
      _tile_dpbssd(1, 4, 7);
    }
  }
  _tile_stored(0, sums, stride0);
  if (Chunks == 2) _tile_stored(1, sums + 16 * act.columns[0], stride1);
}

template <int Hint>
inline void amx_block_rows(const int8_t* w, int64_t I, int64_t stride, const int8_t* ahead, const AmxActivations& act,
                           int32_t* sums) {
  if (act.chunks == 1) amx_block<1, Hint>(w, I, stride, ahead, act, sums);
  else amx_block<2, Hint>(w, I, stride, ahead, act, sums);
}

// y[b, o] from the three digit sums of (row o, activation row b).
inline float amx_output(const int32_t* digit_sums, float x_scale, float w_scale) {
  const double v = 65536.0 * digit_sums[0] + 256.0 * digit_sums[1] + (double)digit_sums[2];
  return (float)(v * (double)x_scale) * w_scale;
}

// The 16 weight rows' digit sums (h, m, l) for activation row j of a chunk (sums [16][columns]).
inline void amx_digits(const int32_t* s, int64_t columns, int64_t j, __m512i& h, __m512i& m, __m512i& l) {
  if (columns == kAmxDigits) {  // one row a chunk (a single sequence's decode): 48 consecutive words
    const __m512i a = _mm512_loadu_si512(s), b = _mm512_loadu_si512(s + 16), c = _mm512_loadu_si512(s + 32);
    // Words 3r + d of a and b (r < 11, 10 for l), then the rest from c.
    const __m512i hab = _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0, 0, 0, 0, 0);
    const __m512i mab = _mm512_setr_epi32(1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 0, 0, 0, 0, 0);
    const __m512i lab = _mm512_setr_epi32(2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0, 0, 0, 0, 0, 0);
    const __m512i hc = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 20, 23, 26, 29);
    const __m512i mc = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 18, 21, 24, 27, 30);
    const __m512i lc = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 19, 22, 25, 28, 31);
    h = _mm512_permutex2var_epi32(_mm512_permutex2var_epi32(a, hab, b), hc, c);
    m = _mm512_permutex2var_epi32(_mm512_permutex2var_epi32(a, mab, b), mc, c);
    l = _mm512_permutex2var_epi32(_mm512_permutex2var_epi32(a, lab, b), lc, c);
    return;
  }
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32((int)columns));
  const int32_t* d = s + kAmxDigits * j;
  h = _mm512_i32gather_epi32(rows, d, 4);
  m = _mm512_i32gather_epi32(rows, d + 1, 4);
  l = _mm512_i32gather_epi32(rows, d + 2, 4);
}

// Weight rows [o0, o0 + 16) from sums laid out [chunk][16][columns]: amx_output for 16 rows at once
// (the same double operations, so the same bits). Scalar, this took ~20% of a decode step's int8
// linears on the Intel Xeon (the weights' stream waited on it), vectorized ~2%.
void amx_store(const AmxActivations& act, const int32_t* sums, int64_t o0, int64_t step, const float* sp, float* y,
               int64_t O) {
  const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)step));
  const __m512 w_scale = step == 1 ? _mm512_loadu_ps(sp + o0) : _mm512_i32gather_ps(lanes, sp + o0, 4);
  const int32_t* s = sums;
  for (int64_t c = 0, row0 = 0; c < act.chunks; row0 += act.chunk_rows[c], s += 16 * act.columns[c], ++c)
    for (int64_t j = 0; j < act.chunk_rows[c]; ++j) {
      __m512i h, m, l;
      amx_digits(s, act.columns[c], j, h, m, l);
      const __m512d x_scale = _mm512_set1_pd((double)act.scale[row0 + j]);
      __m256 half[2];
      for (int k = 0; k < 2; ++k) {
        const auto wide = [k](__m512i v) {
          return _mm512_cvtepi32_pd(k == 0 ? _mm512_castsi512_si256(v) : _mm512_extracti32x8_epi32(v, 1));
        };
        const __m512d v = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(_mm512_set1_pd(65536.0), wide(h)),
                                                      _mm512_mul_pd(_mm512_set1_pd(256.0), wide(m))),
                                        wide(l));
        half[k] = _mm512_cvtpd_ps(_mm512_mul_pd(v, x_scale));
      }
      const __m512 out = _mm512_insertf32x8(_mm512_castps256_ps512(half[0]), half[1], 1);
      float* yo = y + (row0 + j) * O + o0;
      if (step == 1) _mm512_storeu_ps(yo, _mm512_mul_ps(out, w_scale));
      else _mm512_i32scatter_ps(yo, lanes, _mm512_mul_ps(out, w_scale), 4);
    }
}

// A weight row outside whole 16-row blocks: the same exact integer sums, without tiles.
void amx_row_without_tiles(const AmxActivations& act, const int8_t* wr, int64_t o, const float* sp, float* y,
                           int64_t O) {
  for (int64_t b = 0; b < act.N; ++b) {
    int32_t sums[kAmxDigits];
    for (int d = 0; d < kAmxDigits; ++d) {
      const int8_t* xd = act.digits + (b * kAmxDigits + d) * act.I;
      int32_t s = 0;
      for (int64_t i = 0; i < act.I; ++i) s += (int32_t)wr[i] * (int32_t)xd[i];
      sums[d] = s;
    }
    y[b * O + o] = amx_output(sums, act.scale[b], sp[o]);
  }
}
#endif

bool int8_amx_available() {
#if defined(FISHTTS_INT8_AMX)
  return amx_permitted();
#else
  return false;
#endif
}

// x [..., I] float32 (at most 2 * kAmxChunkRows rows); w [O, I] int8; scales [O] float32.
at::Tensor linear_rows_int8_amx(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales) {
#if defined(FISHTTS_INT8_AMX)
  auto xc = rows_of(x);
  const int64_t N = xc.size(0), I = xc.size(1), O = w.size(0);
  if (I % kInt4Group || N > 2 * kAmxChunkRows || !amx_permitted()) return linear_rows(x, w, scales);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2 && w.is_contiguous() && w.size(1) == I,
              "w must be contiguous int8 [out, in]");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == O,
              "scales must be float32 [out]");
  const AmxActivations act(xc.data_ptr<float>(), N, I);
  auto y = output_for(x, O);
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const Tuning& t = tuning(kInt8, N);
  const int hint = t.prefetch_bytes > 0 ? (int)t.hint : (int)kNoPrefetch;
  // Rows of I < 4 KiB share a 4 KiB page, and a 16-row block read a tile column at a time visits each page
  // at 4096 / I places at once, which the hardware prefetchers (a stream per page) follow poorly. So a
  // group of P = 4096 / I blocks takes its rows P apart (tile stride P I): block p of the group rows p,
  // p + P, ..., and each page is read front to back across the group's blocks, one stream. With I = 1024
  // (v0.2's and S1-mini's linears but w2) one thread group after another streamed 32.7 GB/s instead of 29.1
  // (Intel Xeon, 2 vCPUs, 320 MB). The sums are the same integers: the same bits. The T0 hint's stream a
  // block ahead streamed best in plain order (30.7 GB/s; 27.8 interleaved), so it keeps that.
  const int64_t P = hint == kNoPrefetch && I >= 256 && I < 4096 && 4096 % I == 0 ? 4096 / I : 1;
  const int64_t groups = O / (16 * P), units = groups + (O - groups * 16 * P) / 16;
  parallel(units, 1, [&](int64_t begin, int64_t end) {
    // Each piece loads its own configuration: torch's oneDNN matmuls on this thread set theirs.
    configure_tiles(act);
    int32_t sums[16 * kAmxDigits * 2 * kAmxChunkRows];
    for (int64_t u = begin; u < end; ++u) {
      const int64_t step = u < groups ? P : 1;  // a unit's blocks, and the rows between a block's rows
      const int64_t first = u < groups ? 16 * P * u : 16 * (groups * P + u - groups);
      // The T0 hint fetches the next unit's 16 step I bytes in order, a tile step at a time.
      const int8_t* ahead = wp + (first + 16 * step) * I;
      for (int64_t p = 0; p < step; ++p) {
        const int8_t* block = wp + (first + p) * I;
        if (hint == kPrefetchT0) amx_block_rows<kPrefetchT0>(block, I, step * I, ahead + 16 * p * I, act, sums);
        else amx_block_rows<kNoPrefetch>(block, I, step * I, nullptr, act, sums);
        amx_store(act, sums, first + p, step, sp, yp, O);
      }
    }
    _tile_release();
  }, t.threads, N);
  for (int64_t o = 16 * (O / 16); o < O; ++o) amx_row_without_tiles(act, wp + o * I, o, sp, yp, O);
  return y;
#else
  TORCH_CHECK(false, "linear_rows_int8_amx needs AMX-INT8");
  return x;
#endif
}

// Whether this build has the AVX512-VNNI instructions (int4's dots and int16 ones in one instruction).
bool vnni_available() {
#if defined(FISHTTS_VNNI)
  return true;
#else
  return false;
#endif
}

// Whether this build has linear_rows_int8_vnni (int16 activations: AVX512-VNNI, or AVX2).
bool int16_dots_available() {
#if defined(FISHTTS_INT16_DOTS)
  return true;
#else
  return false;
#endif
}

// Weight kind 0 float32, 1 bfloat16, 2 int8, 3 int4, for one activation row (`several` 0) or more (1):
// prefetch `prefetch_bytes` ahead with hint 0 none, 1 non-temporal, 2 all cache levels; at most
// `threads` threads (0: all); `rows` > 1: stream several weight rows at once for a single activation
// row (float32, bfloat16, int8, int4; no meaning for several).
int64_t set_tuning(int64_t kind, int64_t prefetch_bytes, int64_t hint, int64_t threads, int64_t rows, int64_t several) {
  TORCH_CHECK(kind >= 0 && kind < kKinds && hint >= 0 && hint <= kPrefetchL2 && prefetch_bytes >= 0 && threads >= 0
              && rows >= 1 && (several == 0 || several == 1), "bad tuning");
  g_tuning[several][kind] = Tuning{prefetch_bytes, hint, threads, rows};
  return kind;
}

// Interleaved RoPE of one head, in float32 like the original (cos/sin read from its bfloat16 table):
// out[2j] = x[2j] c - x[2j+1] s, out[2j+1] = x[2j+1] c + x[2j] s, each product rounded, then the sum,
// as torch computes it. In vectors: GCC's vectorizer turns the scalar form into its complex-multiply
// pattern, a fused multiply-add per output even under -ffp-contract=off. D: a multiple of 16.
constexpr int64_t kMaxHeadDim = 256;
UNFUSED void rope_pairs(const float* x, const float* freqs, int64_t D, float* out) {
  // (8 lanes: one register with or without AVX-512, and pairs never straddle two)
  const f32x8 sign = {-1.f, 1.f, -1.f, 1.f, -1.f, 1.f, -1.f, 1.f};
  for (int64_t j = 0; j < D; j += 8) {
    f32x8 v, cs;
    std::memcpy(&v, x + j, sizeof v);
    std::memcpy(&cs, freqs + j, sizeof cs);
    const f32x8 c = __builtin_shufflevector(cs, cs, 0, 0, 2, 2, 4, 4, 6, 6);
    const f32x8 s = __builtin_shufflevector(cs, cs, 1, 1, 3, 3, 5, 5, 7, 7);
    const f32x8 swapped = __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
    const f32x8 rotated = v * c + sign * (swapped * s);  // (sign * is exact: it only sets the sign)
    std::memcpy(out + j, &rotated, sizeof rotated);
  }
}

template <typename F>
void rope_head(const float* x, const F* freqs, int64_t D, float* out) {
  float table[kMaxHeadDim];
  for (int64_t j = 0; j < D; ++j) table[j] = (float)freqs[j];
  rope_pairs(x, table, D, out);
}

// Eight keys' dot products at once: lane j = hsum(acc[j]), the same tree of adds per key (lanes i and
// i + 8, then i + 4, i + 2, i + 1), so the same bits as hsum, with a fraction of its shuffles.
inline f32x8 hsum8(const f32x16* acc) {
  f32x8 f[8];
  for (int j = 0; j < 8; ++j) f[j] = fold_halves(acc[j]);
  f32x8 g[4], h[2];
  for (int j = 0; j < 4; ++j)
    g[j] = __builtin_shufflevector(f[2 * j], f[2 * j + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(f[2 * j], f[2 * j + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int j = 0; j < 2; ++j)
    h[j] = __builtin_shufflevector(g[2 * j], g[2 * j + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(g[2 * j], g[2 * j + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(h[0], h[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(h[0], h[1], 1, 3, 5, 7, 9, 11, 13, 15);
}

// One query head against keys/values [len, D] (row stride D, float32 or bfloat16): softmax(q.k * scale) @ v.
// Chunks = D / 16 where it is a compile-time constant (v0.2's heads of 64, S1-mini's of 128), so that q and
// the output's accumulators stay in registers (indexed at run time, they lived on the stack), and the
// keys' dot products are summed eight at a time (hsum8). With the prefetches below, an int8 decode step
// at positions 400-464 took 14.0-14.5 ms instead of 15.0-15.8 (Intel Xeon; the prefetches alone
// 14.8-15.5). Chunks = 0: D at run time (other head sizes).
template <int Chunks, typename C>
void attend(const float* q, const C* keys, const C* values, int64_t len, int64_t D, float scale, float* scores,
            float* out) {
  constexpr int kMaxChunks = Chunks > 0 ? Chunks : kMaxHeadDim / 16;
  const int chunks = Chunks > 0 ? Chunks : (int)(D / 16);
  f32x16 qv[kMaxChunks];
  for (int c = 0; c < chunks; ++c) qv[c] = load16(q + 16 * c);
  auto dot = [&](int64_t j) {
    const C* k = keys + j * D;
    f32x16 acc = qv[0] * widen(k);
    for (int c = 1; c < chunks; ++c) acc = fma16(qv[c], widen(k + 16 * c), acc);
    return acc;
  };
  // A decode step's keys and values were last read a step ago, 300+ MB of weights back: from memory, in
  // short runs (one head's rows) the hardware prefetchers barely ramp up on. So the keys are asked for a
  // block ahead, and each block's values while its keys are multiplied, ready for the weighted sum.
  constexpr int64_t kAhead = 16;
  auto prefetch_row = [&](const C* row) {
    for (int64_t b = 0; b < D * (int64_t)sizeof(C); b += 64) __builtin_prefetch(reinterpret_cast<const char*>(row) + b, 0, 3);
  };
  for (int64_t r = 0; r < std::min(kAhead, len); ++r) prefetch_row(keys + r * D);
  float best = -INFINITY;
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    for (int64_t r = j + kAhead; r < std::min(j + kAhead + 8, len); ++r) prefetch_row(keys + r * D);
    for (int64_t r = j; r < j + 8; ++r) prefetch_row(values + r * D);
    f32x16 acc[8];
    for (int r = 0; r < 8; ++r) acc[r] = dot(j + r);
    const f32x8 s = hsum8(acc) * scale;
    std::memcpy(scores + j, &s, sizeof s);
    for (int r = 0; r < 8; ++r) best = std::max(best, s[r]);
  }
  for (; j < len; ++j) {
    scores[j] = hsum(dot(j)) * scale;
    best = std::max(best, scores[j]);
  }
  j = 0;
  f32x16 total = {};
  for (; j + 16 <= len; j += 16) {
    const f32x16 e = exp16(load16(scores + j) - splat(best));
    store16(scores + j, e);
    total += e;
  }
  float sum = hsum(total);
  for (; j < len; ++j) {
    scores[j] = std::exp(scores[j] - best);
    sum += scores[j];
  }
  f32x16 acc[kMaxChunks] = {};
  for (int64_t t = 0; t < len; ++t) {
    const f32x16 p = splat(scores[t]);
    const C* v = values + t * D;
    for (int c = 0; c < chunks; ++c) acc[c] = fma16(p, widen(v + 16 * c), acc[c]);
  }
  const f32x16 inv = splat(1.f / sum);
  for (int c = 0; c < chunks; ++c) store16(out + 16 * c, acc[c] * inv);
}

template <typename C>
void attend_head(const float* q, const C* keys, const C* values, int64_t len, int64_t D, float scale, float* scores,
                 float* out) {
  if (D == 64) attend<4>(q, keys, values, len, D, scale, scores, out);
  else if (D == 128) attend<8>(q, keys, values, len, D, scale, scores, out);
  else attend<0>(q, keys, values, len, D, scale, scores, out);
}

inline void store_row(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
inline void store_row(at::BFloat16* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = at::BFloat16(src[i]);  // round to nearest even, as torch's cast
}

// RMSNorm of one head's D values (S1's q/k norms, before RoPE): x * rsqrt(mean(x^2) + eps) * weight in
// float32 like torch's; null weight: x unchanged.
inline const float* head_norm(const float* x, const float* weight, float eps, int64_t D, float* out) {
  if (weight == nullptr) return x;
  f32x16 acc = {};
  for (int64_t i = 0; i < D; i += 16) acc = fma16(load16(x + i), load16(x + i), acc);
  const float r = 1.f / std::sqrt(hsum(acc) / (float)D + eps);
  for (int64_t i = 0; i < D; ++i) out[i] = (x[i] * r) * weight[i];
  return out;
}

// Per head of q and of k: optional RMSNorm weights [D] (null: none) and their eps.
struct HeadNorms {
  const float* q = nullptr;
  const float* k = nullptr;
  float eps = 0.f;
};

template <typename C, typename F>
void decode_attention_impl(const float* in, int64_t width, C* kc, C* vc, const int64_t* slot, const int64_t* pos,
                           const F* freqs, int64_t B, int64_t n_head, int64_t n_kv_head, int64_t T, int64_t D,
                           const HeadNorms& norms, float* out) {
  auto cache_row = [&](int64_t b, int64_t h) { return ((slot[b] * n_kv_head + h) * T + pos[b]) * D; };
  // New keys (normed, rotated) and values into each sequence's cache at its position.
  parallel(B * n_kv_head, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> k(D), normed(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_kv_head, h = task % n_kv_head;
      const float* row = in + b * width;
      rope_head(head_norm(row + (n_head + h) * D, norms.k, norms.eps, D, normed.data()), freqs + pos[b] * D, D, k.data());
      store_row(kc + cache_row(b, h), k.data(), D);
      store_row(vc + cache_row(b, h), row + (n_head + n_kv_head + h) * D, D);
    }
  });
  const float scale = 1.f / std::sqrt((float)D);
  const int64_t group = n_head / n_kv_head;
  parallel(B * n_head, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(T), q(D), normed(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_head, h = task % n_head, hk = h / group;
      rope_head(head_norm(in + b * width + h * D, norms.q, norms.eps, D, normed.data()), freqs + pos[b] * D, D, q.data());
      const int64_t base = (slot[b] * n_kv_head + hk) * T * D;
      attend_head(q.data(), kc + base, vc + base, pos[b] + 1, D, scale, scores.data(), out + b * n_head * D + h * D);
    }
  });
}

const float* float32_head_weight(const c10::optional<at::Tensor>& w, int64_t D) {
  if (!w.has_value()) return nullptr;
  TORCH_CHECK(w->scalar_type() == at::kFloat && w->is_contiguous() && w->numel() == D, "q/k norm weights must be float32 [D]");
  return w->data_ptr<float>();
}

// qkv [B, (H + 2 Hkv) D]; caches [slots, Hkv, T, D] float32 or bfloat16; slots, positions [B] int64;
// freqs [T', D/2, 2] bfloat16 or float32; q_norm, k_norm: RMSNorm weights [D] for every head, or none.
at::Tensor decode_attention(const at::Tensor& qkv, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots,
                            const at::Tensor& positions, const at::Tensor& freqs, int64_t n_head, int64_t n_kv_head,
                            const c10::optional<at::Tensor>& q_norm, const c10::optional<at::Tensor>& k_norm,
                            double norm_eps) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.scalar_type() == at::kFloat, "qkv must be float32 [B, (H + 2 Hkv) D]");
  const auto cache_type = k_cache.scalar_type();
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.sizes() == v_cache.sizes()
              && (cache_type == at::kFloat || cache_type == at::kBFloat16) && v_cache.scalar_type() == cache_type,
              "caches must be contiguous float32 or bfloat16 [slots, Hkv, T, D]");
  TORCH_CHECK((freqs.scalar_type() == at::kBFloat16 || freqs.scalar_type() == at::kFloat) && freqs.is_contiguous(),
              "freqs must be contiguous bfloat16 or float32");
  const int64_t B = qkv.size(0), D = k_cache.size(3), T = k_cache.size(2);
  TORCH_CHECK(D % 16 == 0 && D <= kMaxHeadDim && k_cache.size(1) == n_kv_head && n_head % n_kv_head == 0, "unsupported head layout");
  TORCH_CHECK(qkv.size(1) == (n_head + 2 * n_kv_head) * D, "qkv width does not match the heads");
  TORCH_CHECK(freqs.size(1) * 2 == D, "freqs must be [T, D/2, 2]");
  auto qkv_c = qkv.contiguous();
  auto slot_c = slots.to(at::kLong).contiguous(), pos_c = positions.to(at::kLong).contiguous();
  TORCH_CHECK(slot_c.numel() == B && pos_c.numel() == B, "one slot and one position per row");
  const int64_t* slot = slot_c.data_ptr<int64_t>();
  const int64_t* pos = pos_c.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(slot[b] >= 0 && slot[b] < k_cache.size(0), "slot out of range");
    TORCH_CHECK(pos[b] >= 0 && pos[b] < T && pos[b] < freqs.size(0), "position out of range");
  }
  auto out = at::empty({B, n_head * D}, qkv.options());
  const float* in = qkv_c.data_ptr<float>();
  const int64_t width = qkv.size(1);
  float* op = out.data_ptr<float>();
  const HeadNorms norms{float32_head_weight(q_norm, D), float32_head_weight(k_norm, D), (float)norm_eps};
  auto run = [&](auto* kc, auto* vc) {
    if (freqs.scalar_type() == at::kBFloat16)
      decode_attention_impl(in, width, kc, vc, slot, pos, freqs.data_ptr<at::BFloat16>(), B, n_head, n_kv_head, T, D, norms, op);
    else
      decode_attention_impl(in, width, kc, vc, slot, pos, freqs.data_ptr<float>(), B, n_head, n_kv_head, T, D, norms, op);
  };
  if (cache_type == at::kFloat) run(k_cache.data_ptr<float>(), v_cache.data_ptr<float>());
  else run(k_cache.data_ptr<at::BFloat16>(), v_cache.data_ptr<at::BFloat16>());
  return out;
}

// RoPE of a prompt's q or k (rope.py's apply_rope, the same products and sums, so the same bits): x
// [B, S, H, D] float32 with unit stride in D, freqs [S, D/2, 2] or per row [B, S, D/2, 2], bfloat16 or
// float32 -> [B, S, H, D]. torch spends ~15 ops on it (~30 ms of a 330-position prefill, 2 vCPUs).
at::Tensor rope_rows(const at::Tensor& x, const at::Tensor& freqs) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "x must be float32 [B, S, H, D]");
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2), D = x.size(3);
  const bool per_row = freqs.dim() == 4;
  TORCH_CHECK((freqs.scalar_type() == at::kBFloat16 || freqs.scalar_type() == at::kFloat) && D % 16 == 0 && D <= kMaxHeadDim
              && (freqs.dim() == 3 || (per_row && freqs.size(0) == B)) && freqs.size(-3) == S
              && freqs.size(-2) * 2 == D && freqs.size(-1) == 2,
              "freqs must be bfloat16 or float32 [S, D/2, 2] or [B, S, D/2, 2] for x [B, S, H, D]");
  auto xs = x.stride(3) == 1 ? x : x.contiguous();
  auto table = freqs.contiguous();
  auto y = at::empty({B, S, H, D}, x.options());
  const float* xp = xs.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  auto run = [&](const auto* f) {
    parallel(B * S, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / S, s = r % S;
        const float* row = xp + b * xs.stride(0) + s * xs.stride(1);
        const auto* position = f + (per_row ? r : s) * D;
        float cos_sin[kMaxHeadDim];  // (widened once for all of the row's heads)
        for (int64_t j = 0; j < D; ++j) cos_sin[j] = (float)position[j];
        for (int64_t h = 0; h < H; ++h) rope_pairs(row + h * xs.stride(2), cos_sin, D, yp + (r * H + h) * D);
      }
    }, 0, B * S);
  };
  if (table.scalar_type() == at::kBFloat16) run(table.data_ptr<at::BFloat16>());
  else run(table.data_ptr<float>());
  return y;
}

// RMSNorm of a decode step's few rows: x * rsqrt(mean(x^2) + eps) * weight, rounded as the module's
// formula (the normed row, then the weight); one call instead of torch's six small ops, whose dispatch
// cost more than the arithmetic (~40 us a norm, ~50 norms a step).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto xc = rows_of(x);
  const int64_t N = xc.size(0), D = xc.size(1);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == D,
              "weight must be float32 [dim]");
  auto y = output_for(x, D);
  const float* xp = xc.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    const float* row = xp + n * D;
    f32x16 acc = {};
    int64_t i = 0;
    for (; i + 16 <= D; i += 16) acc = fma16(load16(row + i), load16(row + i), acc);
    float sum = hsum(acc);
    for (; i < D; ++i) sum += row[i] * row[i];
    const float r = 1.f / std::sqrt(sum / (float)D + (float)eps);
    for (int64_t k = 0; k < D; ++k) yp[n * D + k] = (row[k] * r) * wp[k];
  }
  return y;
}

// -- a whole transformer layer of a decode step -----------------------------------------------------
// The ops above, called from here instead of from Python: a decode step's ~12 small calls a layer
// cost ~40 us of Python and dispatch each layer, more than its attention. The same ops in the same
// order as model.py's modules, so the result is the same bits.

enum LinearKind {
  kLinearFloat32 = 0, kLinearInt8 = 1, kLinearInt8Vnni = 2, kLinearInt4 = 3, kLinearInt8Amx = 4, kLinearInt8Bytes = 5
};

int64_t tensors_per_linear(int64_t kind) { return kind == kLinearFloat32 ? 1 : kind == kLinearInt4 ? 3 : 2; }

at::Tensor linear_of_kind(const at::Tensor& x, const at::Tensor* w, int64_t kind) {
  switch (kind) {
    case kLinearFloat32: return linear_rows(x, w[0], c10::nullopt);
    case kLinearInt8: return linear_rows(x, w[0], w[1]);
    case kLinearInt8Vnni: return linear_rows_int8_vnni(x, w[0], w[1]);
    case kLinearInt8Amx: return linear_rows_int8_amx(x, w[0], w[1]);
    case kLinearInt8Bytes: return linear_rows_int8_bytes(x, w[0], w[1]);
    default: return linear_rows_int4(x, w[0], w[1], w[2]);
  }
}

// x [B, 1, dim]; linears: wqkv, wo, w1, w3, w2, each as its tensors (weight; weight, scales; or packed,
// scales, offsets for kind 0, 1-2, 3); q_norm, k_norm: the attention's per-head norms (S1), or none.
at::Tensor decode_layer(const at::Tensor& x, at::TensorList linears, int64_t kind, const at::Tensor& attention_norm,
                        const at::Tensor& ffn_norm, double eps, at::Tensor& k_cache, at::Tensor& v_cache,
                        const at::Tensor& slots, const at::Tensor& positions, const at::Tensor& freqs, int64_t n_head,
                        int64_t n_kv_head, const c10::optional<at::Tensor>& q_norm,
                        const c10::optional<at::Tensor>& k_norm) {
  TORCH_CHECK(kind >= kLinearFloat32 && kind <= kLinearInt8Bytes, "unknown linear kind");
  const int64_t per = tensors_per_linear(kind);
  TORCH_CHECK((int64_t)linears.size() == 5 * per, "five linears: wqkv, wo, w1, w3, w2");
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1, "x must be [B, 1, dim]");
  const at::Tensor* w = linears.data();
  const int64_t B = x.size(0), dim = x.size(2);
  auto qkv = linear_of_kind(rms_norm(x, attention_norm, eps).view({B, dim}), w, kind);
  auto y = decode_attention(qkv, k_cache, v_cache, slots, positions, freqs, n_head, n_kv_head, q_norm, k_norm, eps);
  // The residual adds and SwiGLU in place on the linears' fresh outputs: the same ops and bits as
  // x + o, silu(a) * b, h + o (addition and multiplication commute exactly), four allocations fewer.
  auto h = linear_of_kind(y.view({B, 1, y.size(1)}), w + per, kind).add_(x);  // (S1: heads * D may exceed dim)
  auto normed = rms_norm(h, ffn_norm, eps);
  auto gate = linear_of_kind(normed, w + 2 * per, kind);
  at::silu_(gate).mul_(linear_of_kind(normed, w + 3 * per, kind));
  return linear_of_kind(gate, w + 4 * per, kind).add_(h);
}

// A decode step's whole stack of layers, each layer's tensors bound once (core/lm/fused.py builds it):
// one call from Python a step instead of one a layer, whose ~20 arguments took ~16 us each to pass
// (0.4 ms of a ~9 ms int4 step, AMD EPYC). The layers run decode_layer, so the result is its bits.
struct LayerStack : torch::CustomClassHolder {
  struct Layer {
    std::vector<at::Tensor> linears;
    int64_t kind;
    at::Tensor attention_norm, ffn_norm;
    double eps;
    at::Tensor k_cache, v_cache;
    int64_t n_head, n_kv_head;
    c10::optional<at::Tensor> q_norm, k_norm;
  };
  std::vector<Layer> layers;

  // decode_layer's arguments but the step's own (x, slots, positions, freqs), for the next layer.
  void add(std::vector<at::Tensor> linears, int64_t kind, at::Tensor attention_norm, at::Tensor ffn_norm, double eps,
           at::Tensor k_cache, at::Tensor v_cache, int64_t n_head, int64_t n_kv_head, c10::optional<at::Tensor> q_norm,
           c10::optional<at::Tensor> k_norm) {
    layers.push_back(Layer{std::move(linears), kind, std::move(attention_norm), std::move(ffn_norm), eps,
                           std::move(k_cache), std::move(v_cache), n_head, n_kv_head, std::move(q_norm),
                           std::move(k_norm)});
  }

  at::Tensor run(at::Tensor x, const at::Tensor& slots, const at::Tensor& positions, const at::Tensor& freqs) {
    for (auto& l : layers)
      x = decode_layer(x, l.linears, l.kind, l.attention_norm, l.ffn_norm, l.eps, l.k_cache, l.v_cache, slots,
                       positions, freqs, l.n_head, l.n_kv_head, l.q_norm, l.k_norm);
    return x;
  }
};

// Start the pool with `threads` in all (the caller included); later calls change nothing.
int64_t start_pool(int64_t threads) { return (int64_t)SpinPool::get(threads).size() + 1; }

// The calling thread's OpenMP thread count (torch's own ops); returns the previous one. A decode step
// runs its small torch ops on one thread: splitting 36k-element ops over OpenMP costs more than it saves.
int64_t set_openmp_threads(int64_t threads) {
#if defined(_OPENMP)
  const int previous = omp_get_max_threads();
  omp_set_num_threads((int)threads);
  return previous;
#else
  return 1;
#endif
}

// `bytes` bytes (uint8, untouched) that the kernel may back with 2 MiB pages (Linux transparent huge
// pages in "madvise" mode): streaming ~1.6 GB of weights through 4 KiB pages costs a page walk every
// 4 KiB. The memory is a fresh mapping, advised before its first touch: memory from malloc may be
// recycled heap that already has its small pages (after a model load's large temporaries were freed,
// 16 of 300 MB of int8 weights got huge pages, and they streamed 25% slower). Under 2 MiB: plain memory.
at::Tensor huge_page_empty(int64_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  TORCH_CHECK(bytes >= 0, "bytes must be >= 0");
  const auto options = at::TensorOptions().dtype(at::kByte);
  if ((size_t)bytes < kHuge) return at::empty({bytes}, options);
  const size_t rounded = ((size_t)bytes + kHuge - 1) / kHuge * kHuge;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  char* mapped = (char*)mmap(nullptr, rounded + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(mapped != MAP_FAILED, "out of memory");
  char* p = (char*)(((uintptr_t)mapped + kHuge - 1) & ~(uintptr_t)(kHuge - 1));  // 2 MiB aligned
  if (p > mapped) munmap(mapped, p - mapped);
  if (mapped + kHuge > p) munmap(p + rounded, mapped + kHuge - p);
  madvise(p, rounded, MADV_HUGEPAGE);
  return at::from_blob(p, {bytes}, [rounded](void* q) { munmap(q, rounded); }, options);
#else
  void* p = std::aligned_alloc(kHuge, rounded);
  TORCH_CHECK(p != nullptr, "out of memory");
  return at::from_blob(p, {bytes}, [](void* q) { std::free(q); }, options);
#endif
}

// A copy of `t` in huge_page_empty's memory.
at::Tensor huge_page_copy(const at::Tensor& t) {
  const int64_t bytes = t.numel() * t.element_size();
  if (bytes < (int64_t(2) << 20)) return t.contiguous().clone();
  auto out = huge_page_empty(bytes).view(t.scalar_type()).view(t.sizes());
  out.copy_(t);
  return out;
}

// int8 -> bfloat16 (exact: every int8 value is a bfloat16) for prefill matmuls on bfloat16 hardware.
at::Tensor int8_to_bfloat16(const at::Tensor& w) {
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous(), "w must be contiguous int8");
  auto out = at::empty(w.sizes(), w.options().dtype(at::kBFloat16));
  const int8_t* src = w.data_ptr<int8_t>();
  uint16_t* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, w.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float f = (float)src[i];
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      dst[i] = (uint16_t)(bits >> 16);  // the low half of a small integer's float is zero
    }
  });
  return out;
}

// One weight of int4_to_bfloat16 without vector units, with its two roundings.
UNFUSED at::BFloat16 dequantized_bfloat16(int q, float scale, float offset) {
  const float product = (float)q * scale;
  return at::BFloat16(product + offset);
}

// int4 -> bfloat16 for prefill matmuls on bfloat16 hardware: q * scale + offset in float32 (a product,
// then a sum: two roundings, as quantize.dequantize_int4 computes it), then rounded to nearest even.
at::Tensor int4_to_bfloat16(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& offsets) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 4 && packed.is_contiguous() &&
                  packed.size(2) == kInt4Rows && packed.size(3) == 4,
              "packed must be contiguous uint8 [out / 16, in / 8, 16, 4]");
  const int64_t blocks = packed.size(0), I = packed.size(1) * 8, groups = I / kInt4Group;
  TORCH_CHECK(I % kInt4Group == 0, "in must be a multiple of 64");
  for (const auto* t : {&scales, &offsets})
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->numel() == blocks * groups * kInt4Rows,
                "scales and offsets must be contiguous bfloat16 [out / 16, in / 64, 16]");
  auto out = at::empty({blocks * kInt4Rows, I}, packed.options().dtype(at::kBFloat16));
  const uint8_t* src = packed.data_ptr<uint8_t>();
  const at::BFloat16* sp = scales.data_ptr<at::BFloat16>();
  const at::BFloat16* zp = offsets.data_ptr<at::BFloat16>();
  at::BFloat16* dst = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, blocks * groups, 16, [&](int64_t begin, int64_t end) {
    for (int64_t kg = begin; kg < end; ++kg) {  // block k, group g: 16 rows of 64 values
      const int64_t k = kg / groups, g = kg % groups;
      const uint8_t* p = src + k * I * kInt4Rows / 2 + g * 8 * kInt4Chunk;
      for (int64_t r = 0; r < kInt4Rows; ++r) {
        const float scale = (float)sp[kg * kInt4Rows + r], offset = (float)zp[kg * kInt4Rows + r];
        at::BFloat16* d = dst + (k * kInt4Rows + r) * I + g * kInt4Group;
        uint8_t bytes[32];  // the row's 4 bytes of each of the group's 8 chunks
        for (int c = 0; c < 8; ++c) std::memcpy(bytes + 4 * c, p + c * kInt4Chunk + 4 * r, 4);
#if defined(__AVX512BF16__)
        // 4 chunks at a time: low nibbles are inputs 8c..8c+3, high nibbles 8c+4..8c+7.
        const __m512i first = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
        const __m512i second = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
        for (int h = 0; h < 2; ++h) {
          const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(bytes + 16 * h)));
          const __m512 low = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
          const __m512 high = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
          const __m512 values[2] = {_mm512_permutex2var_ps(low, first, high), _mm512_permutex2var_ps(low, second, high)};
          for (int j = 0; j < 2; ++j) {  // (the _round_ forms are never fused into one FMA)
            const __m512 w = _mm512_add_round_ps(
                _mm512_mul_round_ps(values[j], _mm512_set1_ps(scale), _MM_FROUND_CUR_DIRECTION),
                _mm512_set1_ps(offset), _MM_FROUND_CUR_DIRECTION);
            _mm256_storeu_si256((__m256i*)(d + 32 * h + 16 * j), (__m256i)_mm512_cvtneps_pbh(w));
          }
        }
#else
        for (int c = 0; c < 8; ++c)
          for (int j = 0; j < 4; ++j) {
            d[8 * c + j] = dequantized_bfloat16(bytes[4 * c + j] & 15, scale, offset);
            d[8 * c + 4 + j] = dequantized_bfloat16(bytes[4 * c + j] >> 4, scale, offset);
          }
#endif
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(fishtts, m) {
  m.def("linear_rows(Tensor x, Tensor w, Tensor? scales) -> Tensor");
  m.def("decode_attention(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor positions, "
        "Tensor freqs, int n_head, int n_kv_head, Tensor? q_norm=None, Tensor? k_norm=None, float norm_eps=0.) -> Tensor");
  m.def("linear_rows_int4(Tensor x, Tensor packed, Tensor scales, Tensor offsets) -> Tensor");
  m.def("vnni_available() -> bool");
  m.def("int16_dots_available() -> bool");
  m.def("linear_rows_int8_vnni(Tensor x, Tensor w, Tensor scales) -> Tensor");
  m.def("linear_rows_int8_bytes(Tensor x, Tensor w, Tensor scales) -> Tensor");
  m.def("linear_rows_int8_amx(Tensor x, Tensor w, Tensor scales) -> Tensor");
  m.def("int8_amx_available() -> bool");
  m.def("int8_to_bfloat16(Tensor w) -> Tensor");
  m.def("int4_to_bfloat16(Tensor packed, Tensor scales, Tensor offsets) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rope_rows(Tensor x, Tensor freqs) -> Tensor");
  m.def("decode_layer(Tensor x, Tensor[] linears, int kind, Tensor attention_norm, Tensor ffn_norm, float eps, "
        "Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor positions, Tensor freqs, int n_head, "
        "int n_kv_head, Tensor? q_norm=None, Tensor? k_norm=None) -> Tensor");
  m.def("huge_page_copy(Tensor t) -> Tensor");
  m.def("huge_page_empty(int bytes) -> Tensor");
  m.def("set_tuning(int kind, int prefetch_bytes, int hint, int threads, int rows, int several) -> int");
  m.def("start_pool(int threads) -> int");
  m.def("set_openmp_threads(int threads) -> int");
  m.class_<LayerStack>("LayerStack")
      .def(torch::init<>())
      .def("add", &LayerStack::add)
      .def("run", &LayerStack::run);
}

TORCH_LIBRARY_IMPL(fishtts, CPU, m) {
  m.impl("linear_rows", &linear_rows);
  m.impl("decode_attention", &decode_attention);
  m.impl("linear_rows_int4", &linear_rows_int4);
  m.impl("linear_rows_int8_vnni", &linear_rows_int8_vnni);
  m.impl("linear_rows_int8_bytes", &linear_rows_int8_bytes);
  m.impl("linear_rows_int8_amx", &linear_rows_int8_amx);
  m.impl("int8_to_bfloat16", &int8_to_bfloat16);
  m.impl("int4_to_bfloat16", &int4_to_bfloat16);
  m.impl("rms_norm", &rms_norm);
  m.impl("rope_rows", &rope_rows);
  m.impl("decode_layer", &decode_layer);
  m.impl("huge_page_copy", &huge_page_copy);
}

// Ops without tensor arguments have no dispatch key: registered for every backend.
TORCH_LIBRARY_IMPL(fishtts, CompositeExplicitAutograd, m) {
  m.impl("start_pool", &start_pool);
  m.impl("set_openmp_threads", &set_openmp_threads);
  m.impl("set_tuning", &set_tuning);
  m.impl("vnni_available", &vnni_available);
  m.impl("int16_dots_available", &int16_dots_available);
  m.impl("int8_amx_available", &int8_amx_available);
  m.impl("huge_page_empty", &huge_page_empty);
}
