// CPU kernels of diffcore's fused ops, registered for the CPU dispatch key. Argument checks and
// layout handling run before them in csrc/ops.cpp; the per-element math is csrc/step_math.h,
// shared with the CUDA kernels. Work is split with at::parallel_for (OpenMP).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../ops.h"
#include "../step_dispatch.h"

namespace diffcore {
namespace {

constexpr int64_t kGrain = 32768;  // elements per parallel_for task

template <typename scalar_t, typename acc_t, int K, int W, bool CFG>
inline void step_element(scalar_t* xp, const scalar_t* mp, const scalar_t* cp, scalar_t* hp, int64_t slot,
                         const int64_t* wslot, const acc_t* co, acc_t gw, acc_t gr, int64_t i, acc_t zv) {
  const acc_t xv = static_cast<acc_t>(xp[i]);
  acc_t mv = static_cast<acc_t>(mp[i]);
  if (CFG) mv = gr * (mv + gw * (static_cast<acc_t>(cp[i]) - mv));
  acc_t hv[K > 0 ? K : 1];
  for (int j = 0; j < K; ++j) hv[j] = static_cast<acc_t>(hp[j * slot + i]);
  acc_t out[1 + W];
  step_point<K, W, acc_t>(xv, mv, co, hv, zv, out);
  xp[i] = static_cast<scalar_t>(out[0]);
  for (int r = 0; r < W; ++r) hp[wslot[r] + i] = static_cast<scalar_t>(out[1 + r]);
}

template <typename scalar_t, int K, int W, bool CFG, bool PHILOX>
void step_kernel(const StepLaunch& s) {
  using acc_t = acc_type_t<scalar_t>;
  constexpr int width = 2 + (1 + W) * (3 + K);
  auto* xp = static_cast<scalar_t*>(s.x);
  const auto* mp = static_cast<const scalar_t*>(CFG ? s.u : s.m);
  const auto* cp = static_cast<const scalar_t*>(s.c);
  auto* hp = static_cast<scalar_t*>(s.hist);
  // Without a noise tensor the z column reads x and its coefficients are zeroed below.
  const auto* zp = s.z != nullptr ? static_cast<const scalar_t*>(s.z) : static_cast<const scalar_t*>(s.x);
  const bool zero_z = s.z == nullptr && !PHILOX;
  const auto* coeffs = static_cast<const acc_t*>(s.coeffs);
  const auto* guid = static_cast<const acc_t*>(s.guidance);
  const int64_t slot = s.slot_stride;
  int64_t wslot[W > 0 ? W : 1];
  for (int r = 0; r < W; ++r) wslot[r] = s.writes[r] * slot;

  at::parallel_for(0, s.numel, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / s.per_sample;
      const int64_t seg_end = std::min(end, (b + 1) * s.per_sample);
      acc_t co[width];
      const acc_t* src = coeffs + b * s.coeff_stride;
      for (int k = 0; k < width; ++k) co[k] = src[k];
      if (zero_z)
        for (int r = 0; r <= W; ++r) co[2 + r * (3 + K) + 2 + K] = acc_t(0);
      acc_t gw = 0, gr = 1;
      if (CFG) {
        gw = guid[b * s.guidance_stride];
        gr = guid[b * s.guidance_stride + 1];
      }
      if (PHILOX) {
        float normals[4];
        int64_t group = -1;
        for (; i < seg_end; ++i) {
          if ((i >> 2) != group) {
            group = i >> 2;
            philox_normal4(s.seed, s.offset, static_cast<uint64_t>(group), normals);
          }
          step_element<scalar_t, acc_t, K, W, CFG>(xp, mp, cp, hp, slot, wslot, co, gw, gr, i,
                                                   static_cast<acc_t>(normals[i & 3]));
        }
      } else {
        const int64_t lo = i;
        // Each element reads its own history values before writing them, so iterations are
        // independent even though history writes alias history reads: safe to vectorize.
#pragma omp simd
        for (int64_t e = lo; e < seg_end; ++e)
          step_element<scalar_t, acc_t, K, W, CFG>(xp, mp, cp, hp, slot, wslot, co, gw, gr, e,
                                                   static_cast<acc_t>(zp[e]));
        i = seg_end;
      }
    }
  });
}

struct CpuKernels {
  static void step(const StepLaunch& s) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.dtype, "diffcore_sampler_step", [&] {
      dispatch_step(s, [&](auto shape) {
        using S = decltype(shape);
        step_kernel<scalar_t, S::K, S::W, S::CFG, S::PHILOX>(s);
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

  static void philox_fill(at::Tensor& out, uint64_t seed, uint64_t offset) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "diffcore_philox", [&] {
      auto* p = out.data_ptr<scalar_t>();
      const int64_t n = out.numel();
      at::parallel_for(0, (n + 3) / 4, 4096, [&](int64_t g0, int64_t g1) {
        float v[4];
        for (int64_t g = g0; g < g1; ++g) {
          philox_normal4(seed, offset, static_cast<uint64_t>(g), v);
          for (int k = 0; k < 4 && 4 * g + k < n; ++k) p[4 * g + k] = static_cast<scalar_t>(v[k]);
        }
      });
    });
  }
};

}  // namespace
}  // namespace diffcore

TORCH_LIBRARY_IMPL(diffcore, CPU, m) { diffcore::impl_ops<diffcore::CpuKernels>(m); }
