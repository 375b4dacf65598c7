// CPU kernels of diffcore's fused ops, registered for the CPU dispatch key. Argument checks and
// layout handling run before them in csrc/ops.cpp; the per-element math is csrc/step_math.h,
// shared with the CUDA kernels. Work is split with at::parallel_for (OpenMP). In-kernel noise is
// drawn in chunks of kChunk elements by a vectorized Philox (philox_blocks) into a stack buffer,
// then read like a noise tensor (csrc/cpu/noise.cpp).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/OpMathType.h>

#include <algorithm>
#include <atomic>

#include "../ops.h"
#include "../step_dispatch.h"
#include "noise.h"

namespace diffcore {
namespace {

constexpr int64_t kGrain = 32768;  // elements per parallel_for task
constexpr int64_t kChunk = 512;    // elements of in-kernel noise drawn at a time

// Elements j0 .. j0+count-1 (count <= kChunk) of `sample`'s noise, rounded to scalar_t as the
// reference rounds it.
template <typename scalar_t>
void philox_span(uint64_t seed, uint64_t offset, uint64_t sample, int64_t j0, int64_t count, int mode, scalar_t* out) {
  float buf[kChunk + 8];
  const int64_t g0 = j0 >> 2, g1 = (j0 + count + 3) >> 2;
  philox_blocks(seed, offset, static_cast<uint32_t>(sample), static_cast<uint32_t>(g0), g1 - g0, mode, buf);
  const float* src = buf + (j0 & 3);
  for (int64_t k = 0; k < count; ++k) out[k] = static_cast<scalar_t>(src[k]);
}

// The step loop is compiled for AVX-512, AVX2 and baseline x86-64 and the widest the CPU runs is
// picked at load time (GCC function multiversioning), as ATen picks its own kernels: the baseline
// (SSE2) loop alone ran at 2-4x the time of a torch.add on the same tensors. -ffp-contract=off holds
// for every clone, so each gives the same bits (every lane rounds each op as the scalar code does).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define DIFFCORE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DIFFCORE_CPU_CLONES
#endif

// Row r of step_point (csrc/step_math.h) at element i, in its order of operations, reading the K
// history slots straight from memory: no per-element arrays, so the loop below vectorizes.
template <int K, typename acc_t, typename scalar_t>
inline acc_t step_row(const acc_t* c, acc_t xv, acc_t x0, const scalar_t* hp, int64_t slot, int64_t i, acc_t zv) {
  acc_t acc = c[0] * xv + c[1] * x0;
  if constexpr (K > 0) acc += c[2] * static_cast<acc_t>(hp[i]);
  if constexpr (K > 1) acc += c[3] * static_cast<acc_t>(hp[slot + i]);
  if constexpr (K > 2) acc += c[4] * static_cast<acc_t>(hp[2 * slot + i]);
  if constexpr (K > 3) acc += c[5] * static_cast<acc_t>(hp[3 * slot + i]);
  return acc + c[2 + K] * zv;
}

// Elements [e0, e1) of one sample with coefficients co; z[e] is the noise of element e. Returns the
// sum of x0 - x0 (NaN when an x0 is not finite, else 0).
template <typename scalar_t, typename acc_t, int K, int W, bool CFG, bool LIMIT>
DIFFCORE_CPU_CLONES acc_t step_range(scalar_t* xp, const scalar_t* mp, const scalar_t* cp, scalar_t* hp, int64_t slot,
                                     const int64_t* wslot, const acc_t* coeffs, acc_t gw, acc_t gr, acc_t lo, acc_t div,
                                     const scalar_t* zp, int64_t e0, int64_t e1) {
  static_assert(K <= 4 && W <= 2, "step_range spells out 4 history slots and 2 writes");
  constexpr int width = 2 + (1 + W) * (3 + K);
  acc_t co[width];  // a local copy the compiler keeps in registers (stores to x cannot alias it)
  for (int k = 0; k < width; ++k) co[k] = coeffs[k];
  const int64_t w0 = W > 0 ? wslot[0] : 0, w1 = W > 1 ? wslot[1] : 0;
  acc_t bad = 0;
  // Each element reads its own x and history values before writing them, so iterations are
  // independent even though history writes alias history reads: safe to vectorize.
#pragma omp simd reduction(+ : bad)
  for (int64_t i = e0; i < e1; ++i) {
    const acc_t xv = static_cast<acc_t>(xp[i]);
    acc_t mv = static_cast<acc_t>(mp[i]);
    if (CFG) mv = gr * (mv + gw * (static_cast<acc_t>(cp[i]) - mv));
    const acc_t raw = co[0] * xv + co[1] * mv;
    bad += raw - raw;
    const acc_t x0 = LIMIT ? limit_x0(raw, lo, div) : raw;
    const acc_t zv = static_cast<acc_t>(zp[i]);
    const acc_t o0 = step_row<K>(co + 2, xv, x0, hp, slot, i, zv);
    acc_t o1 = 0, o2 = 0;
    if constexpr (W > 0) o1 = step_row<K>(co + 2 + (3 + K), xv, x0, hp, slot, i, zv);
    if constexpr (W > 1) o2 = step_row<K>(co + 2 + 2 * (3 + K), xv, x0, hp, slot, i, zv);
    xp[i] = static_cast<scalar_t>(o0);
    if constexpr (W > 0) hp[w0 + i] = static_cast<scalar_t>(o1);
    if constexpr (W > 1) hp[w1 + i] = static_cast<scalar_t>(o2);
  }
  return bad;
}

// True when some history coefficient of some row (of any sample's coefficients) is non-zero: a
// step whose rows all weigh the history by exactly 0 (Heun's predictor, a multistep method's first
// step) runs without reading it, one full-size tensor fewer. Its result then differs from the
// reading kernel's only where that reads a non-finite slot (0 * inf) or adds +0 to an x of -0.
template <typename acc_t, int K, int W>
bool reads_history(const acc_t* coeffs, int64_t rows, int64_t stride) {
  for (int64_t b = 0; b < rows; ++b)
    for (int r = 0; r <= W; ++r)
      for (int k = 0; k < K; ++k)
        if (coeffs[b * stride + 2 + r * (3 + K) + 2 + k] != acc_t(0)) return true;
  return false;
}

template <typename scalar_t, int K, int W, bool CFG, bool LIMIT>
void step_kernel(const StepLaunch& s) {
  using acc_t = acc_type_t<scalar_t>;
  constexpr int width = 2 + (1 + W) * (3 + K);
  constexpr int bare = 2 + (1 + W) * 3;  // a row without its history columns
  auto* xp = static_cast<scalar_t*>(s.x);
  const auto* mp = static_cast<const scalar_t*>(CFG ? s.u : s.m);
  const auto* cp = static_cast<const scalar_t*>(s.c);
  auto* hp = static_cast<scalar_t*>(s.hist);
  // Without noise the z column reads x and its coefficients are zeroed below.
  const auto* zp = s.z != nullptr ? static_cast<const scalar_t*>(s.z) : static_cast<const scalar_t*>(s.x);
  const bool zero_z = s.z == nullptr && !s.philox;
  const auto* coeffs = static_cast<const acc_t*>(s.coeffs);
  const auto* guid = static_cast<const acc_t*>(s.guidance);
  const auto* lims = static_cast<const acc_t*>(s.limit);
  const int64_t slot = s.slot_stride, n = s.per_sample;
  int64_t wslot[W > 0 ? W : 1];
  for (int r = 0; r < W; ++r) wslot[r] = s.writes[r] * slot;
  const int64_t rows = s.coeff_stride > 0 ? s.numel / std::max<int64_t>(n, 1) : 1;
  const bool reads = K > 0 && reads_history<acc_t, K, W>(coeffs, rows, s.coeff_stride);

  at::parallel_for(0, s.numel, kGrain, [&](int64_t begin, int64_t end) {
    scalar_t zbuf[kChunk];
    acc_t bad = 0;
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / n;
      const int64_t seg_end = std::min(end, (b + 1) * n);
      acc_t co[width], cb[bare];
      const acc_t* src = coeffs + b * s.coeff_stride;
      for (int k = 0; k < width; ++k) co[k] = src[k];
      if (zero_z)
        for (int r = 0; r <= W; ++r) co[2 + r * (3 + K) + 2 + K] = acc_t(0);
      cb[0] = co[0];
      cb[1] = co[1];
      for (int r = 0; r <= W; ++r) {
        cb[2 + 3 * r] = co[2 + r * (3 + K)];
        cb[3 + 3 * r] = co[3 + r * (3 + K)];
        cb[4 + 3 * r] = co[4 + r * (3 + K) + K];
      }
      acc_t gw = 0, gr = 1, lo = 0, div = 1;
      if (CFG) {
        gw = guid[b * s.guidance_stride];
        gr = guid[b * s.guidance_stride + 1];
      }
      if (LIMIT) {
        lo = lims[b * s.limit_stride];
        div = lims[b * s.limit_stride + 1];
      }
      const auto range = [&](const scalar_t* z, int64_t a, int64_t e) -> acc_t {
        if (K > 0 && !reads)
          return step_range<scalar_t, acc_t, 0, W, CFG, LIMIT>(xp, mp, cp, hp, slot, wslot, cb, gw, gr, lo, div, z, a,
                                                               e);
        return step_range<scalar_t, acc_t, K, W, CFG, LIMIT>(xp, mp, cp, hp, slot, wslot, co, gw, gr, lo, div, z, a, e);
      };
      if (s.philox) {
        for (; i < seg_end; i += kChunk) {
          const int64_t count = std::min(kChunk, seg_end - i);
          philox_span(s.seed, s.offset, s.sample_index + b, i - b * n, count, s.noise_mode, zbuf);
          bad += range(zbuf - i, i, i + count);
        }
      } else {
        bad += range(zp, i, seg_end);
      }
      i = seg_end;
    }
    if (s.nonfinite != nullptr && !(bad == acc_t(0))) __atomic_store_n(s.nonfinite, 1, __ATOMIC_RELAXED);
  });
}

struct CpuKernels {
  static void step(const StepLaunch& s) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.dtype, "diffcore_sampler_step", [&] {
      dispatch_step(s, [&](auto shape) {
        using S = decltype(shape);
        step_kernel<scalar_t, S::K, S::W, S::CFG, S::LIMIT>(s);  // noise: s.philox at run time
      });
    });
  }

  static void forward_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t, const at::Tensor& table,
                            at::Tensor& x_t, at::Tensor& target) {
    const int64_t B = x0.size(0), n = x0.numel() / B, T = table.size(0);
    const int64_t* tp = t.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(tp[b] >= 0 && tp[b] < T, "diffcore: t[", b, "] = ", tp[b], " is outside the table's ", T, " rows");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "diffcore_forward_noise", [&] {
      using acc_t = acc_type_t<scalar_t>;
      const auto* xp = x0.data_ptr<scalar_t>();
      const auto* np = noise.data_ptr<scalar_t>();
      auto* op = x_t.data_ptr<scalar_t>();
      auto* gp = target.data_ptr<scalar_t>();
      const auto* rows = table.data_ptr<acc_t>();
      at::parallel_for(0, B * n, kGrain, [&](int64_t begin, int64_t end) {
        int64_t i = begin;
        while (i < end) {
          const int64_t b = i / n;
          const int64_t seg = std::min(end, (b + 1) * n);
          const acc_t* r = rows + 4 * tp[b];
          const acc_t c0 = r[0], c1 = r[1], c2 = r[2], c3 = r[3];
          for (; i < seg; ++i) {
            const acc_t xv = static_cast<acc_t>(xp[i]), nv = static_cast<acc_t>(np[i]);
            op[i] = static_cast<scalar_t>(c0 * xv + c1 * nv);
            gp[i] = static_cast<scalar_t>(c2 * xv + c3 * nv);
          }
        }
      });
    });
  }

  // One task per sample: its four sums in double, then the shared finish (csrc/step_math.h).
  static void rescale_factor(const at::Tensor& u, const at::Tensor& c, const at::Tensor& w, double phi,
                             at::Tensor& out) {
    const int64_t B = u.size(0), n = u.numel() / B;
    const double* wp = w.data_ptr<double>();
    const int64_t w_stride = w.numel() == 1 ? 0 : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "diffcore_cfg_rescale", [&] {
      const auto* up = u.data_ptr<scalar_t>();
      const auto* cp = c.data_ptr<scalar_t>();
      AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "diffcore_cfg_rescale_out", [&] {
        auto* op = out.data_ptr<scalar_t>();
        at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            double sums[4] = {0, 0, 0, 0};
            for (int64_t k = b * n; k < (b + 1) * n; ++k)
              rescale_accumulate(sums, static_cast<double>(up[k]), static_cast<double>(cp[k]), wp[b * w_stride]);
            op[b] = static_cast<scalar_t>(rescale_finish(sums, n, phi));
          }
        });
      });
    });
  }

  static void philox_fill(at::Tensor& out, uint64_t seed, uint64_t offset, uint64_t sample_index, int mode) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "diffcore_philox", [&] {
      auto* p = out.data_ptr<scalar_t>();
      const int64_t B = out.size(0), n = out.numel() / B, chunks = (n + kChunk - 1) / kChunk;
      at::parallel_for(0, B * chunks, std::max<int64_t>(1, 16384 / kChunk), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t b = c / chunks, j0 = (c % chunks) * kChunk;
          philox_span(seed, offset, sample_index + b, j0, std::min(kChunk, n - j0), mode, p + b * n + j0);
        }
      });
    });
  }
};

// dst[i] = src[i] * scale in ATen's opmath type (float for half / bfloat16 / float, double for
// double), as `src * scale` computes it; returns the sum of v - v over src (0 when all finite).
template <typename scalar_t, typename op_t>
DIFFCORE_CPU_CLONES op_t scaled_copy_range(const scalar_t* src, scalar_t* dst, op_t scale, bool copy, int64_t e0,
                                           int64_t e1) {
  op_t bad = 0;
  if (copy) {
#pragma omp simd reduction(+ : bad)
    for (int64_t i = e0; i < e1; ++i) {
      const op_t v = static_cast<op_t>(src[i]);
      bad += v - v;
      dst[i] = src[i];
    }
  } else {
#pragma omp simd reduction(+ : bad)
    for (int64_t i = e0; i < e1; ++i) {
      const op_t v = static_cast<op_t>(src[i]);
      bad += v - v;
      dst[i] = static_cast<scalar_t>(v * scale);
    }
  }
  return bad;
}

}  // namespace

StepKernel cpu_step_kernel() { return &CpuKernels::step; }

bool cpu_scaled_copy(const at::Tensor& src, at::Tensor& dst, double scale) {
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "diffcore_scaled_copy", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const auto* sp = src.data_ptr<scalar_t>();
    auto* dp = dst.data_ptr<scalar_t>();
    const op_t sc = static_cast<op_t>(scale);
    const bool copy = scale == 1.0;
    std::atomic<bool> bad{false};
    at::parallel_for(0, src.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (!(scaled_copy_range<scalar_t, op_t>(sp, dp, sc, copy, begin, end) == op_t(0))) bad.store(true);
    });
    finite = !bad.load();
  });
  return finite;
}

}  // namespace diffcore

TORCH_LIBRARY_IMPL(diffcore, CPU, m) { diffcore::impl_ops<diffcore::CpuKernels>(m); }
