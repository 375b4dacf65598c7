// Vectorized in-kernel noise for the CPU kernels: the per-sample Philox4x32-10 draw of
// csrc/step_math.h, 16 (AVX-512) or 8 (AVX2) blocks at a time with explicit intrinsics, then the
// fast float32 Box-Muller of step_math.h in a loop the compiler vectorizes (it needs
// -fno-math-errno for sqrtf; setup.py). The exact mode stays the scalar double transform. The
// SIMD width is picked at run time; every path gives the same bits as philox_normal4.
#include "noise.h"

#include <algorithm>

#include "../step_math.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DIFFCORE_X86_SIMD 1
#endif

namespace diffcore {
namespace {

constexpr int64_t kSpan = 256;  // blocks per word buffer

// The transform loop is compiled for AVX-512, AVX2 and baseline x86-64, the widest the CPU runs
// picked at load time (as the step loop in ops.cpp): the baseline build ran it 4 lanes wide, and it
// is most of a fast draw. -ffp-contract=off holds for every clone, so each gives the same bits.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define DIFFCORE_NOISE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DIFFCORE_NOISE_CLONES
#endif

// Fast transform of blocks whose words are w[k][0 .. n) (struct of arrays) into 4n normals.
DIFFCORE_NOISE_CLONES void transform_fast(const uint32_t (*w)[kSpan], int64_t n, float* out) {
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) {
    float a, b, c, d;
    box_muller_fast(w[0][l], w[1][l], a, b);
    box_muller_fast(w[2][l], w[3][l], c, d);
    out[4 * l] = a;
    out[4 * l + 1] = b;
    out[4 * l + 2] = c;
    out[4 * l + 3] = d;
  }
}

void blocks_generic(uint64_t seed, uint64_t offset, uint32_t sample, uint32_t g0, int64_t n, float* out) {
  alignas(64) uint32_t w[4][kSpan];
  for (int64_t base = 0; base < n; base += kSpan) {
    const int64_t m = std::min(kSpan, n - base);
    for (int64_t l = 0; l < m; ++l)
      philox4x32_10(seed, g0 + static_cast<uint32_t>(base + l), sample, offset, w[0][l], w[1][l], w[2][l], w[3][l]);
    transform_fast(w, m, out + 4 * base);
  }
}

#ifdef DIFFCORE_X86_SIMD
// One Philox round on 16 blocks: the 32x32 -> 64-bit products of even and odd lanes, split into
// their high and low words.
__attribute__((target("avx512f"))) inline void mulhilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

__attribute__((target("avx512f"))) void blocks_avx512(uint64_t seed, uint64_t offset, uint32_t sample, uint32_t g0,
                                                      int64_t n, float* out) {
  alignas(64) uint32_t w[4][kSpan];
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int64_t base = 0; base < n; base += kSpan) {
    const int64_t m = std::min(kSpan, n - base);
    for (int64_t b = 0; b < m; b += 16) {
      __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(g0 + static_cast<uint32_t>(base + b))), lanes);
      __m512i c1 = _mm512_set1_epi32(static_cast<int>(sample));
      __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
      __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
      uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
      for (int r = 0; r < 10; ++r) {
        __m512i hi0, lo0, hi1, lo1;
        mulhilo16(c0, m0, hi0, lo0);
        mulhilo16(c2, m1, hi1, lo1);
        c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
        c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
        c1 = lo1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
      }
      _mm512_store_si512(&w[0][b], c0);
      _mm512_store_si512(&w[1][b], c1);
      _mm512_store_si512(&w[2][b], c2);
      _mm512_store_si512(&w[3][b], c3);
    }
    transform_fast(w, m, out + 4 * base);
  }
}

__attribute__((target("avx2"))) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

__attribute__((target("avx2"))) void blocks_avx2(uint64_t seed, uint64_t offset, uint32_t sample, uint32_t g0,
                                                 int64_t n, float* out) {
  alignas(64) uint32_t w[4][kSpan];
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int64_t base = 0; base < n; base += kSpan) {
    const int64_t m = std::min(kSpan, n - base);
    for (int64_t b = 0; b < m; b += 8) {
      __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(g0 + static_cast<uint32_t>(base + b))), lanes);
      __m256i c1 = _mm256_set1_epi32(static_cast<int>(sample));
      __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
      __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
      uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
      for (int r = 0; r < 10; ++r) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0, m0, hi0, lo0);
        mulhilo8(c2, m1, hi1, lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
        c1 = lo1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(&w[0][b]), c0);
      _mm256_store_si256(reinterpret_cast<__m256i*>(&w[1][b]), c1);
      _mm256_store_si256(reinterpret_cast<__m256i*>(&w[2][b]), c2);
      _mm256_store_si256(reinterpret_cast<__m256i*>(&w[3][b]), c3);
    }
    transform_fast(w, m, out + 4 * base);
  }
}

int simd_level() {
  static const int level = __builtin_cpu_supports("avx512f") ? 2 : (__builtin_cpu_supports("avx2") ? 1 : 0);
  return level;
}
#endif

}  // namespace

void philox_blocks(uint64_t seed, uint64_t offset, uint32_t sample, uint32_t g0, int64_t n, int mode, float* out) {
  if (mode != kNoiseFast) {
    for (int64_t g = 0; g < n; ++g)
      philox_normal4(seed, offset, sample, g0 + static_cast<uint32_t>(g), mode, out + 4 * g);
    return;
  }
#ifdef DIFFCORE_X86_SIMD
  const int level = simd_level();
  if (level == 2) return blocks_avx512(seed, offset, sample, g0, n, out);
  if (level == 1) return blocks_avx2(seed, offset, sample, g0, n, out);
#endif
  blocks_generic(seed, offset, sample, g0, n, out);
}

}  // namespace diffcore
