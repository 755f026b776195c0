// 16 floats (or int32s) as one value, for every source of the extension: the operators of GCC's vector
// types, loads and stores, conversions, a fixed-order sum, and e^x.
//
// With AVX-512 (and on other instruction sets) f32x16 is a 64-byte GCC vector. On an AVX2-only CPU (AMD
// Zen 2/3) it is a pair of 32-byte ones instead: GCC 12 has no register for a 64-byte vector there and
// keeps every such value in memory, so a kernel's accumulators went through the stack on each update
// (the int8 decode kernel streamed 8 GB/s, on halves 27: 3.2x, AMD EPYC in an AVX2 build). Each half does
// what the 64-byte operator does to its 8 lanes, so both forms compute the same bits.
//
// Internal to each file that includes it (an anonymous namespace): a file that asks for fused multiply-adds
// (prefill_attention.cpp's fp-contract) or forbids them (int8_rows.cpp) gets that here too, without
// changing another file's copy.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define FISHTTS_VECTOR_HALVES 1
#endif

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef int8_t i8x8 __attribute__((vector_size(8)));

#if defined(FISHTTS_VECTOR_HALVES)

// Lanes 0-7 in lo, 8-15 in hi; every operator applies to each half as the 64-byte vector's does.
template <typename H>
struct Halves {
  H lo, hi;
  auto operator[](int j) const { return j < 8 ? lo[j] : hi[j - 8]; }
};
typedef Halves<f32x8> f32x16;
typedef Halves<i32x8> i32x16;

#define FISHTTS_HALVES_OPERATOR(op)                                                                    \
  template <typename H>                                                                                \
  inline auto operator op(Halves<H> a, Halves<H> b) {                                                  \
    return Halves<decltype(a.lo op b.lo)>{a.lo op b.lo, a.hi op b.hi};                                 \
  }                                                                                                    \
  template <typename H, typename S>                                                                    \
  inline auto operator op(Halves<H> a, S b) { return Halves<decltype(a.lo op b)>{a.lo op b, a.hi op b}; } \
  template <typename H, typename S>                                                                    \
  inline auto operator op(S a, Halves<H> b) { return Halves<decltype(a op b.lo)>{a op b.lo, a op b.hi}; }
FISHTTS_HALVES_OPERATOR(+)
FISHTTS_HALVES_OPERATOR(-)
FISHTTS_HALVES_OPERATOR(*)
FISHTTS_HALVES_OPERATOR(/)
FISHTTS_HALVES_OPERATOR(&)
FISHTTS_HALVES_OPERATOR(<<)
FISHTTS_HALVES_OPERATOR(<)
FISHTTS_HALVES_OPERATOR(>)
FISHTTS_HALVES_OPERATOR(==)
#undef FISHTTS_HALVES_OPERATOR

template <typename H>
inline Halves<H> operator-(Halves<H> a) { return {-a.lo, -a.hi}; }
template <typename H, typename B>
inline Halves<H>& operator+=(Halves<H>& a, B b) { return a = a + b; }

// mask ? a : b, lane by lane (mask: a comparison's result)
inline f32x16 where(i32x16 mask, f32x16 a, f32x16 b) { return {mask.lo ? a.lo : b.lo, mask.hi ? a.hi : b.hi}; }
inline f32x16 to_float(i32x16 v) { return {__builtin_convertvector(v.lo, f32x8), __builtin_convertvector(v.hi, f32x8)}; }
inline i32x16 truncate_to_int(f32x16 v) { return {__builtin_convertvector(v.lo, i32x8), __builtin_convertvector(v.hi, i32x8)}; }
inline f32x16 bits_as_float(i32x16 v) { return {(f32x8)v.lo, (f32x8)v.hi}; }
inline i32x16 float_bits(f32x16 v) { return {(i32x8)v.lo, (i32x8)v.hi}; }

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v.lo, p, sizeof v.lo);
  std::memcpy(&v.hi, p + 8, sizeof v.hi);
  return v;
}
inline void store16(float* p, f32x16 v) {
  std::memcpy(p, &v.lo, sizeof v.lo);
  std::memcpy(p + 8, &v.hi, sizeof v.hi);
}
inline f32x16 splat(float s) { return f32x16{} + s; }  // (a broadcast)

inline f32x16 fma16(f32x16 a, f32x16 b, f32x16 c) {
  return {(f32x8)_mm256_fmadd_ps((__m256)a.lo, (__m256)b.lo, (__m256)c.lo),
          (f32x8)_mm256_fmadd_ps((__m256)a.hi, (__m256)b.hi, (__m256)c.hi)};
}

// 16 values -> 16 floats (exact).
inline f32x16 widen(const float* p) { return load16(p); }
inline f32x16 widen(const int8_t* p) {
  return {(f32x8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))),
          (f32x8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8))))};
}
inline f32x16 widen(const at::BFloat16* p) {  // bfloat16 is the top half of a float32
  return {(f32x8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16),
          (f32x8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + 8))), 16)};
}

// 16 integral floats in -128..127 to int8.
inline void store_int8(int8_t* p, f32x16 v) {
  const i32x16 n = truncate_to_int(v);
  const i8x8 lo = __builtin_convertvector(n.lo, i8x8), hi = __builtin_convertvector(n.hi, i8x8);
  std::memcpy(p, &lo, sizeof lo);
  std::memcpy(p + 8, &hi, sizeof hi);
}

// Lanes 0-7 plus lanes 8-15, then as the 64-byte form's tree does.
inline f32x8 fold_halves(f32x16 v) { return v.lo + v.hi; }

#else

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

inline f32x16 where(i32x16 mask, f32x16 a, f32x16 b) { return mask ? a : b; }
inline f32x16 to_float(i32x16 v) { return __builtin_convertvector(v, f32x16); }
inline i32x16 truncate_to_int(f32x16 v) { return __builtin_convertvector(v, i32x16); }
inline f32x16 bits_as_float(i32x16 v) { return (f32x16)v; }
inline i32x16 float_bits(f32x16 v) { return (i32x16)v; }

inline f32x16 load16(const float* p) { f32x16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof v); }
inline f32x16 splat(float s) { return f32x16{} + s; }  // (a broadcast)

inline f32x16 fma16(f32x16 a, f32x16 b, f32x16 c) {
#if defined(__AVX512F__)
  return (f32x16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
  f32x16 r;
  for (int j = 0; j < 16; ++j) r[j] = __builtin_fmaf(a[j], b[j], c[j]);
  return r;
#endif
}

template <typename T>
inline f32x16 widen_each(const T* p) {  // no vector ISA: the compiler does what it can
  f32x16 v;
  for (int j = 0; j < 16; ++j) v[j] = (float)p[j];
  return v;
}
inline f32x16 widen(const float* p) { return load16(p); }
inline f32x16 widen(const int8_t* p) {
#if defined(__AVX512F__)
  return (f32x16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
#else
  return widen_each(p);
#endif
}
inline f32x16 widen(const at::BFloat16* p) {  // bfloat16 is the top half of a float32
#if defined(__AVX512F__)
  const __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
  return (f32x16)_mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
#else
  return widen_each(p);
#endif
}

inline void store_int8(int8_t* p, f32x16 v) {
  const i8x16 q = __builtin_convertvector(truncate_to_int(v), i8x16);
  std::memcpy(p, &q, sizeof q);
}

inline f32x8 fold_halves(f32x16 v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}

#endif

inline f32x16 max16(f32x16 a, f32x16 b) { return where(a > b, a, b); }
inline f32x16 min16(f32x16 a, f32x16 b) { return where(a < b, a, b); }
inline f32x16 abs16(f32x16 v) { return bits_as_float(float_bits(v) & 0x7fffffff); }  // (as fabs)

// Sum of the 16 lanes as a fixed tree (4 dependent adds instead of 16).
inline float hsum(f32x16 v) {
  const f32x8 a = fold_halves(v);
  const f32x4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// The largest of `start` and the 16 lanes, as std::max taken lane by lane in order.
inline float hmax(f32x16 v, float start) {
  for (int j = 0; j < 16; ++j) start = std::max(start, v[j]);
  return start;
}

// e^x for x <= 0 (a value minus its row's largest), within ~2 ulp; below -87 it is flushed to e^-87
// (~1e-38, nothing beside the row's largest term, which is 1). Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2.
inline f32x16 exp16(f32x16 x) {
  x = where(x < -87.0f, splat(-87.0f), x);
  const f32x16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  f32x16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  f32x16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * bits_as_float((truncate_to_int(n) + 127) << 23);  // p * 2^n
}

}  // namespace
