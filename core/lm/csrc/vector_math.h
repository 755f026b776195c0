// Vector helpers of the extension's sources that are not decode kernels (prefill_attention.cpp,
// sampling.cpp): 16 floats as a GCC vector (AVX-512, 2 x AVX2 or 4 x NEON under -march) and e^x on them.
// Internal to each file that includes it (an anonymous namespace): a file that asks for fused multiply-adds
// (prefill_attention.cpp's fp-contract) gets them here too, without changing another file's copy.
#pragma once

#include <cstdint>
#include <cstring>

namespace {

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

inline f32x16 load16(const float* p) { f32x16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof v); }
inline f32x16 splat(float s) { return f32x16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }  // (a broadcast)

// e^x for x <= 0 (a value minus its row's largest), within ~2 ulp; below -87 it is flushed to e^-87
// (~1e-38, nothing beside the row's largest term, which is 1). Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2.
inline f32x16 exp16(f32x16 x) {
  const f32x16 lowest = splat(-87.0f);
  x = x < lowest ? lowest : x;
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
  const i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;  // 2^n
  f32x16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace
