// Per-element math of the fused ops, shared by the CPU (g++) and CUDA (nvcc) kernels.
//
// The canonical definition is diffcore/ops/reference.py. Coefficient vector of one sample:
//   co = [a, b, row_0, ..., row_W],  row = [c_x, c_x0, c_h0 .. c_h{K-1}, c_z]
//   x0 = a*x + b*m;  out_r = c_x*x + c_x0*x0 + sum_j c_hj*h_j + c_z*z
// Row 0 is the new x, row r >= 1 the new value of history slot writes[r-1].
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DC_HD __host__ __device__ __forceinline__
#else
#define DC_HD inline
#endif

namespace diffcore {

constexpr int kMaxSlots = 4;   // history slots a kernel is instantiated for
constexpr int kMaxWrites = 2;  // history writes per step

template <int K, int W, typename acc_t>
DC_HD void step_point(acc_t xv, acc_t m, const acc_t* co, const acc_t* hv, acc_t zv, acc_t* out) {
  const acc_t x0 = co[0] * xv + co[1] * m;
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

// ---- Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3") ----
// Element i of a step's noise uses counter (i / 4, offset) and key seed; two Box-Muller pairs
// turn the four 32-bit words into four standard normals. diffcore/ops/philox.py is the same
// generator in Torch, so every backend draws identical noise for a (seed, offset).

DC_HD void philox_round(uint32_t* ctr, const uint32_t* key) {
  const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * ctr[0];
  const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * ctr[2];
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  const uint32_t c1 = ctr[1], c3 = ctr[3];
  ctr[0] = hi1 ^ c1 ^ key[0];
  ctr[1] = lo1;
  ctr[2] = hi0 ^ c3 ^ key[1];
  ctr[3] = lo0;
}

DC_HD void philox4x32_10(uint64_t seed, uint64_t group, uint64_t offset, uint32_t* out) {
  uint32_t ctr[4] = {static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32), static_cast<uint32_t>(offset),
                     static_cast<uint32_t>(offset >> 32)};
  uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      key[0] += 0x9E3779B9u;
      key[1] += 0xBB67AE85u;
    }
    philox_round(ctr, key);
  }
  for (int i = 0; i < 4; ++i) out[i] = ctr[i];
}

// The four standard normals of group `group` (elements 4*group .. 4*group+3) of (seed, offset).
// Uniforms in (0, 1) are (u + 0.5) / 2^32 rounded to float32; Box-Muller runs in double.
DC_HD void philox_normal4(uint64_t seed, uint64_t offset, uint64_t group, float* out) {
  uint32_t u[4];
  philox4x32_10(seed, group, offset, u);
  for (int pair = 0; pair < 2; ++pair) {
    const float u1 = static_cast<float>((static_cast<double>(u[2 * pair]) + 0.5) * 2.3283064365386963e-10);
    const float u2 = static_cast<float>((static_cast<double>(u[2 * pair + 1]) + 0.5) * 2.3283064365386963e-10);
    const double r = sqrt(-2.0 * log(static_cast<double>(u1)));
    const double theta = 6.283185307179586 * static_cast<double>(u2);
    out[2 * pair] = static_cast<float>(r * cos(theta));
    out[2 * pair + 1] = static_cast<float>(r * sin(theta));
  }
}

// Standard normal number `idx` of the stream (seed, offset).
DC_HD float philox_normal(uint64_t seed, uint64_t offset, uint64_t idx) {
  float v[4];
  philox_normal4(seed, offset, idx >> 2, v);
  return v[idx & 3];
}

}  // namespace diffcore
