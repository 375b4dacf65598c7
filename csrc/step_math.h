// Per-element math of the fused ops, shared by the CPU (g++) and CUDA (nvcc) kernels.
//
// The canonical definition is diffcore/ops/reference.py. Coefficient vector of one sample:
//   co = [a, b, row_0, ..., row_W],  row = [c_x, c_x0, c_h0 .. c_h{K-1}, c_z]
//   x0 = limit(a*x + b*m);  out_r = c_x*x + c_x0*x0 + sum_j c_hj*h_j + c_z*z
// Row 0 is the new x, row r >= 1 the new value of history slot writes[r-1].
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DC_HD __host__ __device__ __forceinline__
#else
#define DC_HD inline
#endif

namespace diffcore {

constexpr int kMaxSlots = 4;   // history slots a kernel is instantiated for
constexpr int kMaxWrites = 2;  // history writes per step

// The x0 limit of diffcore/x0_limit.py: x0 clamped to [-lo, lo], then divided by div (clip_sample:
// lo = range, div = 1; dynamic thresholding: lo = div = s of the sample). NaN stays NaN.
template <typename acc_t>
DC_HD acc_t limit_x0(acc_t x0, acc_t lo, acc_t div) {
  const acc_t c = x0 > lo ? lo : (x0 < -lo ? -lo : x0);
  return c / div;
}

// One element of a step; returns the unlimited x0 (its finiteness is what a step checks).
template <int K, int W, bool LIMIT, typename acc_t>
DC_HD acc_t step_point(acc_t xv, acc_t m, const acc_t* co, acc_t lo, acc_t div, const acc_t* hv, acc_t zv, acc_t* out) {
  const acc_t raw = co[0] * xv + co[1] * m;
  const acc_t x0 = LIMIT ? limit_x0(raw, lo, div) : raw;
  constexpr int width = 3 + K;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 1 + W; ++r) {
    const acc_t* c = co + 2 + r * width;
    acc_t acc = c[0] * xv + c[1] * x0;
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int j = 0; j < K; ++j) acc += c[2 + j] * hv[j];
    acc += c[2 + K] * zv;
    out[r] = acc;
  }
  return raw;
}

// ---- Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
// Flawed", eq. 15-16): factor = phi * std(cond) / std(cfg) + (1 - phi) per sample, where
// cfg = u + w * (c - u) and std is the unbiased standard deviation over the sample's n elements.
// Both backends sum in double: sums = [sum c, sum c^2, sum cfg, sum cfg^2].

DC_HD void rescale_accumulate(double* sums, double u, double c, double w) {
  const double g = u + w * (c - u);
  sums[0] += c;
  sums[1] += c * c;
  sums[2] += g;
  sums[3] += g * g;
}

DC_HD double rescale_finish(const double* sums, int64_t n, double phi) {
  const double var_c = fmax(0.0, (sums[1] - sums[0] * sums[0] / n) / (n - 1));
  const double var_g = fmax(0.0, (sums[3] - sums[2] * sums[2] / n) / (n - 1));
  // A guided output with zero spread (e.g. a model that outputs a constant) cannot be rescaled to
  // the conditional spread: leave it as is rather than divide 0 by 0.
  return var_g > 0.0 ? phi * sqrt(var_c) / sqrt(var_g) + (1.0 - phi) : 1.0;
}

// ---- Noise: Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3") ----
// Element j of sample s of the draw (seed, offset) comes from the Philox block with key seed and
// counter (j / 4, s, offset): a sample's noise depends on (seed, offset, s, j) only, never on the
// batch it is drawn in. Each sample's elements start a new block (the last block of a sample whose
// size is not a multiple of 4 is cut short). Two transforms turn a block's four 32-bit words into
// four standard normals (diffcore/ops/philox.py is the same generator in Torch):
//   exact (mode 0): uniforms (u + 0.5) / 2^32 rounded to float32, Box-Muller in double;
//   fast (mode 1):  24-bit uniforms and a float32 Box-Muller whose log and sin/cos are the
//                   polynomials below, every operation one IEEE-rounded float op (no FMA: the
//                   f* helpers), so the fast stream is bit-identical on every backend too.
constexpr int kNoiseExact = 0;
constexpr int kNoiseFast = 1;

// The four words of block `group` of sample `sample` of the draw (seed, offset). Scalars, no
// arrays (here and in the transforms), so a loop over blocks vectorizes (one block per SIMD lane).
DC_HD void philox4x32_10(uint64_t seed, uint32_t group, uint32_t sample, uint64_t offset, uint32_t& w0, uint32_t& w1,
                         uint32_t& w2, uint32_t& w3) {
  uint32_t c0 = group, c1 = sample, c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;  // the bumped key of the next round (unused after the last)
    k1 += 0xBB67AE85u;
  }
  w0 = c0;
  w1 = c1;
  w2 = c2;
  w3 = c3;
}

// Exact transform of one pair of words.
DC_HD void box_muller_exact(uint32_t w1, uint32_t w2, float& out0, float& out1) {
  const float u1 = static_cast<float>((static_cast<double>(w1) + 0.5) * 2.3283064365386963e-10);
  const float u2 = static_cast<float>((static_cast<double>(w2) + 0.5) * 2.3283064365386963e-10);
  const double r = sqrt(-2.0 * log(static_cast<double>(u1)));
  const double theta = 6.283185307179586 * static_cast<double>(u2);
  out0 = static_cast<float>(r * cos(theta));
  out1 = static_cast<float>(r * sin(theta));
}

// Rounded float operations: on CUDA the _rn intrinsics, which nvcc never contracts into an FMA.
#if defined(__CUDA_ARCH__)
DC_HD float fmul(float a, float b) { return __fmul_rn(a, b); }
DC_HD float fadd(float a, float b) { return __fadd_rn(a, b); }
DC_HD float fsub(float a, float b) { return __fsub_rn(a, b); }
DC_HD float fdiv(float a, float b) { return __fdiv_rn(a, b); }
DC_HD float fsqrt(float a) { return __fsqrt_rn(a); }
DC_HD float bits_float(uint32_t u) { return __uint_as_float(u); }
DC_HD uint32_t float_bits(float f) { return __float_as_uint(f); }
#else
DC_HD float fmul(float a, float b) { return a * b; }
DC_HD float fadd(float a, float b) { return a + b; }
DC_HD float fsub(float a, float b) { return a - b; }
DC_HD float fdiv(float a, float b) { return a / b; }
DC_HD float fsqrt(float a) { return sqrtf(a); }
DC_HD float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
DC_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
#endif

// log(u) for u in [2^-24, 1]: u = 2^e * m with m in (sqrt(1/2), sqrt(2)], log m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| < 0.1716, by its series to s^9 (error < 1e-9).
DC_HD float fast_log(float u) {
  // Integer selects only (no branches, no conditional float ops), so a CPU loop vectorizes.
  const uint32_t bits = float_bits(u);
  const uint32_t big = (bits & 0x7FFFFFu) > 0x3504F3u;  // mantissa > sqrt(2): halve it (exactly)
  const float m = bits_float(((bits & 0x7FFFFFu) | 0x3F800000u) - (big << 23));
  const int e = static_cast<int>(bits >> 23) - 127 + static_cast<int>(big);
  const float s = fdiv(fsub(m, 1.0f), fadd(m, 1.0f));
  const float s2 = fmul(s, s);
  float p = fadd(0.285714298f, fmul(s2, 0.222222224f));
  p = fadd(0.400000006f, fmul(s2, p));
  p = fadd(0.666666687f, fmul(s2, p));
  const float log_m = fadd(fmul(2.0f, s), fmul(fmul(s, s2), p));
  const float ef = static_cast<float>(e);
  return fadd(fmul(ef, 0.693359375f), fadd(log_m, fmul(ef, -0.000212194442f)));
}

// Fast transform of one pair of words: radius from w1, angle q * pi/2 + y from w2 with the
// quadrant q the top two bits and y in (-pi/4, pi/4) from the next 24, sin/cos of y by Taylor
// polynomials to y^7 / y^8 (error < 4e-7).
DC_HD void box_muller_fast(uint32_t w1, uint32_t w2, float& out0, float& out1) {
  const float u1 = fmul(static_cast<float>((w1 >> 8) + 1u), 5.96046448e-08f);  // (0, 1], exact
  const float r = fsqrt(fmul(-2.0f, fast_log(u1)));
  const uint32_t q = w2 >> 30;
  const float f = fadd(fmul(static_cast<float>(static_cast<int32_t>((w2 >> 6) & 0xFFFFFFu) - 8388608), 5.96046448e-08f),
                       2.98023224e-08f);  // (-1/2, 1/2), exact
  const float y = fmul(f, 1.57079637f);
  const float y2 = fmul(y, y);
  float ps = fadd(0.00833333377f, fmul(y2, -0.000198412701f));
  ps = fadd(-0.166666672f, fmul(y2, ps));
  const float sn = fadd(y, fmul(fmul(y, y2), ps));
  float pc = fadd(-0.00138888892f, fmul(y2, 2.48015876e-05f));
  pc = fadd(0.0416666679f, fmul(y2, pc));
  pc = fadd(-0.5f, fmul(y2, pc));
  const float cs = fadd(1.0f, fmul(y2, pc));
  // (cos, sin) of q * pi/2 + y: (cs, sn), (-sn, cs), (-cs, -sn), (sn, -cs); signs by sign-bit flips
  const uint32_t odd = 0u - (q & 1u), sn_bits = float_bits(sn), cs_bits = float_bits(cs);
  const uint32_t a = (sn_bits & odd) | (cs_bits & ~odd), b = (cs_bits & odd) | (sn_bits & ~odd);
  const float c = bits_float(a ^ (((q ^ (q >> 1)) & 1u) << 31));
  const float s = bits_float(b ^ ((q >> 1) << 31));
  out0 = fmul(r, c);
  out1 = fmul(r, s);
}

// The four standard normals of block `group` (elements 4*group .. 4*group+3) of `sample`.
DC_HD void philox_normal4(uint64_t seed, uint64_t offset, uint32_t sample, uint32_t group, int mode, float* out) {
  uint32_t w0, w1, w2, w3;
  philox4x32_10(seed, group, sample, offset, w0, w1, w2, w3);
  if (mode == kNoiseFast) {
    box_muller_fast(w0, w1, out[0], out[1]);
    box_muller_fast(w2, w3, out[2], out[3]);
  } else {
    box_muller_exact(w0, w1, out[0], out[1]);
    box_muller_exact(w2, w3, out[2], out[3]);
  }
}

// Standard normal number j of `sample` of the draw (seed, offset).
DC_HD float philox_normal(uint64_t seed, uint64_t offset, uint32_t sample, uint64_t j, int mode) {
  float v[4];
  philox_normal4(seed, offset, sample, static_cast<uint32_t>(j >> 2), mode, v);
  return v[j & 3];
}

}  // namespace diffcore
