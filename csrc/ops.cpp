// diffcore._C: op schemas, input checks and layout handling (all devices), and the CPU kernels.
//
// The math is defined by diffcore/ops/reference.py; csrc/step_math.h holds the per-element
// formulas shared with the CUDA kernels in csrc/cuda/. Every op validates its inputs with
// TORCH_CHECK so a direct torch.ops.diffcore call can never read out of bounds.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "ops.h"

namespace diffcore {
namespace {

bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_operand(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), "diffcore: ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "diffcore: ", name, " has dtype ", t.scalar_type(),
              " but x has dtype ", x.scalar_type());
  TORCH_CHECK(t.sizes() == x.sizes(), "diffcore: ", name, " has shape ", t.sizes(), " but x has shape ", x.sizes());
}

void check_coeffs(const char* name, const at::Tensor& c, const at::Tensor& x, int64_t width) {
  TORCH_CHECK(is_float_type(c.scalar_type()), "diffcore: ", name, " must be floating point, got ", c.scalar_type());
  TORCH_CHECK(c.device() == x.device(), "diffcore: ", name, " is on ", c.device(), " but x is on ", x.device());
  const bool shared = c.dim() == 1 && c.size(0) == width;
  const bool per_sample = c.dim() == 2 && c.size(0) == x.size(0) && c.size(1) == width;
  TORCH_CHECK(shared || per_sample, "diffcore: ", name, " has shape ", c.sizes(), "; expected (", width, ") or (",
              x.size(0), ", ", width, ")");
}

// Dense with x's strides: element i of the operand is at data_ptr + i.
bool same_dense_layout(const at::Tensor& t, const at::Tensor& x) {
  return t.is_non_overlapping_and_dense() && t.strides() == x.strides();
}

bool batch_outermost(const at::Tensor& x) {
  return x.size(0) <= 1 || x.stride(0) * x.size(0) == x.numel();
}

struct Operands {
  at::Tensor x, m, u, c, hist, z;  // undefined when absent
};

void fill_launch(StepLaunch& s, Operands& o, const at::Tensor& coeffs, const at::Tensor* guidance,
                 const std::vector<int64_t>& writes) {
  s.dtype = o.x.scalar_type();
  s.device = o.x.is_cuda() ? o.x.get_device() : -1;
  s.x = o.x.data_ptr();
  s.numel = o.x.numel();
  s.per_sample = o.x.numel() / std::max<int64_t>(o.x.size(0), 1);
  if (o.m.defined()) s.m = o.m.data_ptr();
  if (o.u.defined()) {
    s.u = o.u.data_ptr();
    s.c = o.c.data_ptr();
  }
  if (o.hist.defined()) {
    s.hist = o.hist.data_ptr();
    s.K = static_cast<int>(o.hist.size(0));
    s.slot_stride = o.hist.stride(0);
  }
  if (o.z.defined()) s.z = o.z.data_ptr();
  s.coeffs = coeffs.data_ptr();
  s.coeff_stride = coeffs.dim() == 2 ? coeffs.size(1) : 0;
  if (guidance != nullptr) {
    s.guidance = guidance->data_ptr();
    s.guidance_stride = guidance->dim() == 2 ? 2 : 0;
  }
  s.W = static_cast<int>(writes.size());
  for (size_t r = 0; r < writes.size(); ++r) s.writes[r] = writes[r];
}

void step_impl(at::Tensor& x, const at::Tensor* m, const at::Tensor* u, const at::Tensor* c, const at::Tensor* guidance,
               const at::Tensor& coeffs, const c10::optional<at::Tensor>& history,
               const c10::optional<at::Tensor>& noise, at::IntArrayRef writes_ref, int64_t seed, int64_t offset) {
  TORCH_CHECK(is_float_type(x.scalar_type()), "diffcore: x must be float32/float64/float16/bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.numel() > 0, "diffcore: x must be a non-empty batch, got shape ", x.sizes());
  if (m != nullptr) check_operand("model_out", *m, x);
  if (u != nullptr) {
    check_operand("uncond", *u, x);
    check_operand("cond", *c, x);
  }
  int64_t K = 0;
  if (history.has_value()) {
    const at::Tensor& h = *history;
    TORCH_CHECK(h.device() == x.device() && h.scalar_type() == x.scalar_type(), "diffcore: history is ",
                h.scalar_type(), " on ", h.device(), "; x is ", x.scalar_type(), " on ", x.device());
    TORCH_CHECK(h.dim() == x.dim() + 1 && h.sizes().slice(1) == x.sizes(), "diffcore: history has shape ", h.sizes(),
                "; expected (slots, ", x.sizes(), ")");
    K = h.size(0);
    TORCH_CHECK(K >= 1 && K <= kMaxSlots, "diffcore: history has ", K, " slots; the kernels support 1..", kMaxSlots);
  }
  if (noise.has_value()) check_operand("noise", *noise, x);
  TORCH_CHECK(!(noise.has_value() && seed >= 0), "diffcore: pass either a noise tensor or a seed, not both");
  std::vector<int64_t> writes(writes_ref.begin(), writes_ref.end());
  TORCH_CHECK(static_cast<int64_t>(writes.size()) <= kMaxWrites, "diffcore: at most ", kMaxWrites,
              " history writes per step, got ", writes.size());
  for (size_t r = 0; r < writes.size(); ++r) {
    TORCH_CHECK(writes[r] >= 0 && writes[r] < K, "diffcore: write slot ", writes[r], " is outside [0, ", K, ")");
    for (size_t q = 0; q < r; ++q) TORCH_CHECK(writes[q] != writes[r], "diffcore: write slot ", writes[r], " repeats");
  }
  const int64_t width = 2 + (1 + static_cast<int64_t>(writes.size())) * (3 + K);
  check_coeffs("coeffs", coeffs, x, width);
  if (guidance != nullptr) check_coeffs("guidance", *guidance, x, 2);

  const at::ScalarType acc = acc_type(x.scalar_type());
  at::Tensor co = coeffs.to(acc).contiguous();
  at::Tensor g = guidance != nullptr ? guidance->to(acc).contiguous() : at::Tensor();

  bool fast = x.is_non_overlapping_and_dense();
  const bool per_sample = co.dim() == 2 || (g.defined() && g.dim() == 2);
  if (per_sample) fast = fast && batch_outermost(x);
  if (m != nullptr) fast = fast && same_dense_layout(*m, x);
  if (u != nullptr) fast = fast && same_dense_layout(*u, x) && same_dense_layout(*c, x);
  if (noise.has_value()) fast = fast && same_dense_layout(*noise, x);
  if (history.has_value()) {
    const at::Tensor& h = *history;
    fast = fast && h.stride(0) >= x.numel() && h.strides().slice(1) == x.strides();
    for (int64_t j = 0; j < K && fast; ++j) fast = h.select(0, j).is_non_overlapping_and_dense();
  }

  Operands o;
  if (fast) {
    o.x = x;
    if (m != nullptr) o.m = *m;
    if (u != nullptr) {
      o.u = *u;
      o.c = *c;
    }
    if (history.has_value()) o.hist = *history;
    if (noise.has_value()) o.z = *noise;
  } else {  // general strides: run on contiguous copies, then write back what changed
    o.x = x.contiguous();
    if (m != nullptr) o.m = m->contiguous();
    if (u != nullptr) {
      o.u = u->contiguous();
      o.c = c->contiguous();
    }
    if (history.has_value()) o.hist = history->contiguous();
    if (noise.has_value()) o.z = noise->contiguous();
  }
  StepLaunch s;
  fill_launch(s, o, co, g.defined() ? &g : nullptr, writes);
  if (seed >= 0) {
    s.philox = true;
    s.seed = static_cast<uint64_t>(seed);
    s.offset = static_cast<uint64_t>(offset);
  }
  if (x.is_cuda()) {
#ifdef DIFFCORE_WITH_CUDA
    launch_step_cuda(s);
#else
    TORCH_CHECK(false, "diffcore: this build of diffcore._C has no CUDA kernels");
#endif
  } else {
    launch_step_cpu(s);
  }
  if (!fast) {
    if (!o.x.is_same(x)) x.copy_(o.x);
    if (history.has_value() && !o.hist.is_same(*history)) {
      for (int64_t slot : writes) history->select(0, slot).copy_(o.hist.select(0, slot));
    }
  }
}

// ---------------------------------------------------------------- CPU sampler-step kernels

template <typename scalar_t, typename acc_t, int K, int W, bool CFG>
inline void step_element(scalar_t* xp, const scalar_t* mp, const scalar_t* cp, scalar_t* hp, int64_t slot,
                         const int64_t* wslot, const acc_t* co, acc_t gw, acc_t gr, acc_t zv, int64_t i) {
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

template <typename scalar_t, typename acc_t, int K, int W, bool CFG, bool PHILOX>
void step_cpu_kernel(const StepLaunch& s) {
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

  at::parallel_for(0, s.numel, 32768, [&](int64_t begin, int64_t end) {
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
          step_element<scalar_t, acc_t, K, W, CFG>(xp, mp, cp, hp, slot, wslot, co, gw, gr,
                                                  static_cast<acc_t>(normals[i & 3]), i);
        }
      } else {
        const int64_t lo = i;
        // Each element reads its own history values before writing them, so iterations are
        // independent even though history writes alias history reads: safe to vectorize.
#pragma omp simd
        for (int64_t e = lo; e < seg_end; ++e)
          step_element<scalar_t, acc_t, K, W, CFG>(xp, mp, cp, hp, slot, wslot, co, gw, gr,
                                                  static_cast<acc_t>(zp[e]), e);
        i = seg_end;
      }
    }
  });
}

template <typename scalar_t, int K, int W>
void dispatch_flags_cpu(const StepLaunch& s) {
  using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
  const bool cfg = s.u != nullptr;
  if (cfg && s.philox) step_cpu_kernel<scalar_t, acc_t, K, W, true, true>(s);
  else if (cfg) step_cpu_kernel<scalar_t, acc_t, K, W, true, false>(s);
  else if (s.philox) step_cpu_kernel<scalar_t, acc_t, K, W, false, true>(s);
  else step_cpu_kernel<scalar_t, acc_t, K, W, false, false>(s);
}

template <typename scalar_t>
void dispatch_shape_cpu(const StepLaunch& s) {
  switch (s.K * 3 + s.W) {
    case 0: return dispatch_flags_cpu<scalar_t, 0, 0>(s);
    case 3: return dispatch_flags_cpu<scalar_t, 1, 0>(s);
    case 4: return dispatch_flags_cpu<scalar_t, 1, 1>(s);
    case 6: return dispatch_flags_cpu<scalar_t, 2, 0>(s);
    case 7: return dispatch_flags_cpu<scalar_t, 2, 1>(s);
    case 8: return dispatch_flags_cpu<scalar_t, 2, 2>(s);
    case 9: return dispatch_flags_cpu<scalar_t, 3, 0>(s);
    case 10: return dispatch_flags_cpu<scalar_t, 3, 1>(s);
    case 11: return dispatch_flags_cpu<scalar_t, 3, 2>(s);
    case 12: return dispatch_flags_cpu<scalar_t, 4, 0>(s);
    case 13: return dispatch_flags_cpu<scalar_t, 4, 1>(s);
    case 14: return dispatch_flags_cpu<scalar_t, 4, 2>(s);
    default: TORCH_CHECK(false, "diffcore: unsupported history layout K=", s.K, " W=", s.W);
  }
}

}  // namespace

void launch_step_cpu(const StepLaunch& s) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.dtype, "diffcore_sampler_step",
                                  [&] { dispatch_shape_cpu<scalar_t>(s); });
}

namespace {

// ---------------------------------------------------------------- ops

void sampler_step(at::Tensor x, const at::Tensor& model_out, const at::Tensor& coeffs,
                  const c10::optional<at::Tensor>& history, const c10::optional<at::Tensor>& noise,
                  at::IntArrayRef writes, int64_t seed, int64_t offset) {
  step_impl(x, &model_out, nullptr, nullptr, nullptr, coeffs, history, noise, writes, seed, offset);
}

void cfg_sampler_step(at::Tensor x, const at::Tensor& uncond, const at::Tensor& cond, const at::Tensor& guidance,
                      const at::Tensor& coeffs, const c10::optional<at::Tensor>& history,
                      const c10::optional<at::Tensor>& noise, at::IntArrayRef writes, int64_t seed, int64_t offset) {
  step_impl(x, nullptr, &uncond, &cond, &guidance, coeffs, history, noise, writes, seed, offset);
}

std::tuple<at::Tensor, at::Tensor> forward_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t,
                                                 const at::Tensor& table) {
  TORCH_CHECK(is_float_type(x0.scalar_type()), "diffcore: x0 must be floating point, got ", x0.scalar_type());
  TORCH_CHECK(x0.dim() >= 1 && x0.numel() > 0, "diffcore: x0 must be a non-empty batch, got shape ", x0.sizes());
  check_operand("noise", noise, x0);
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "diffcore: t must be int32/int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x0.size(0), "diffcore: t has shape ", t.sizes(), "; expected (",
              x0.size(0), ")");
  TORCH_CHECK(is_float_type(table.scalar_type()) && table.dim() == 2 && table.size(1) == 4,
              "diffcore: table must be a floating (T, 4) tensor, got ", table.scalar_type(), " ", table.sizes());
  TORCH_CHECK(t.device() == x0.device() && table.device() == x0.device(), "diffcore: t (", t.device(),
              ") and table (", table.device(), ") must be on x0's device ", x0.device());
  const at::ScalarType acc = acc_type(x0.scalar_type());
  at::Tensor tt = t.to(at::kLong).contiguous();
  at::Tensor tab = table.to(acc).contiguous();
  at::Tensor xc = x0.contiguous(), nc = noise.contiguous();
  at::Tensor x_t = at::empty_like(xc), target = at::empty_like(xc);
  if (x0.is_cuda()) {
#ifdef DIFFCORE_WITH_CUDA
    launch_forward_noise_cuda(xc, nc, tt, tab, x_t, target);
    return {x_t, target};
#else
    TORCH_CHECK(false, "diffcore: this build of diffcore._C has no CUDA kernels");
#endif
  }
  const int64_t B = xc.size(0), n = xc.numel() / B, T = tab.size(0);
  const int64_t* tp = tt.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(tp[b] >= 0 && tp[b] < T, "diffcore: t[", b, "] = ", tp[b], " is outside the table's ", T, " rows");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "diffcore_forward_noise", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const auto* xp = xc.data_ptr<scalar_t>();
    const auto* np = nc.data_ptr<scalar_t>();
    auto* op = x_t.data_ptr<scalar_t>();
    auto* gp = target.data_ptr<scalar_t>();
    const auto* rows = tab.data_ptr<acc_t>();
    at::parallel_for(0, B * n, 32768, [&](int64_t begin, int64_t end) {
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
  return {x_t, target};
}

at::Tensor cfg_rescale_factor(const at::Tensor& uncond, const at::Tensor& cond, const at::Tensor& scale, double phi) {
  TORCH_CHECK(is_float_type(uncond.scalar_type()), "diffcore: uncond must be floating point, got ",
              uncond.scalar_type());
  TORCH_CHECK(uncond.dim() >= 1 && uncond.numel() > 0, "diffcore: uncond must be a non-empty batch, got shape ",
              uncond.sizes());
  check_operand("cond", cond, uncond);
  TORCH_CHECK(phi >= 0.0 && phi <= 1.0, "diffcore: guidance rescale phi=", phi, " must be in [0, 1]");
  const int64_t B = uncond.size(0), n = uncond.numel() / B;
  TORCH_CHECK(n >= 2, "diffcore: guidance rescale needs at least 2 elements per sample");
  TORCH_CHECK(scale.numel() == 1 || (scale.dim() == 1 && scale.size(0) == B), "diffcore: scale has shape ",
              scale.sizes(), "; expected a scalar or (", B, ")");
  TORCH_CHECK(scale.device() == uncond.device(), "diffcore: scale is on ", scale.device(), " but uncond is on ",
              uncond.device());
  if (uncond.is_cuda()) {
#ifdef DIFFCORE_WITH_CUDA
    return cfg_rescale_factor_cuda(uncond.contiguous(), cond.contiguous(), scale, phi);
#else
    TORCH_CHECK(false, "diffcore: this build of diffcore._C has no CUDA kernels");
#endif
  }
  const at::ScalarType acc = acc_type(uncond.scalar_type());
  at::Tensor u = uncond.contiguous(), c = cond.contiguous();
  at::Tensor w = scale.to(at::kDouble).reshape({-1}).contiguous();
  at::Tensor out = at::empty({B}, uncond.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "diffcore_cfg_rescale", [&] {
    const auto* up = u.data_ptr<scalar_t>();
    const auto* cp = c.data_ptr<scalar_t>();
    const double* wp = w.data_ptr<double>();
    std::vector<double> factor(B);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const double wv = wp[w.numel() == 1 ? 0 : b];
        double sc = 0, sc2 = 0, sg = 0, sg2 = 0;
        for (int64_t k = b * n; k < (b + 1) * n; ++k) {
          const double uv = static_cast<double>(up[k]), cv = static_cast<double>(cp[k]);
          const double gv = uv + wv * (cv - uv);
          sc += cv;
          sc2 += cv * cv;
          sg += gv;
          sg2 += gv * gv;
        }
        const double var_c = std::max(0.0, (sc2 - sc * sc / n) / (n - 1));
        const double var_g = std::max(0.0, (sg2 - sg * sg / n) / (n - 1));
        factor[b] = phi * std::sqrt(var_c) / std::sqrt(var_g) + (1.0 - phi);
      }
    });
    AT_DISPATCH_FLOATING_TYPES(acc, "diffcore_cfg_rescale_out", [&] {
      auto* op = out.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) op[b] = static_cast<scalar_t>(factor[b]);
    });
  });
  return out;
}

void philox_normal_(at::Tensor out, int64_t seed, int64_t offset) {
  TORCH_CHECK(is_float_type(out.scalar_type()), "diffcore: out must be floating point, got ", out.scalar_type());
  TORCH_CHECK(seed >= 0 && offset >= 0, "diffcore: seed=", seed, " and offset=", offset, " must be >= 0");
  if (out.numel() == 0) return;
  at::Tensor dense = out.is_non_overlapping_and_dense() ? out : out.contiguous();
  if (dense.is_cuda()) {
#ifdef DIFFCORE_WITH_CUDA
    fill_philox_cuda(dense, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
#else
    TORCH_CHECK(false, "diffcore: this build of diffcore._C has no CUDA kernels");
#endif
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dense.scalar_type(), "diffcore_philox", [&] {
      auto* p = dense.data_ptr<scalar_t>();
      const int64_t n = dense.numel();
      at::parallel_for(0, (n + 3) / 4, 4096, [&](int64_t g0, int64_t g1) {
        float v[4];
        for (int64_t g = g0; g < g1; ++g) {
          philox_normal4(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint64_t>(g), v);
          for (int k = 0; k < 4 && 4 * g + k < n; ++k) p[4 * g + k] = static_cast<scalar_t>(v[k]);
        }
      });
    });
  }
  if (!dense.is_same(out)) out.copy_(dense);
}

}  // namespace
}  // namespace diffcore

TORCH_LIBRARY(diffcore, m) {
  m.def("forward_noise(Tensor x0, Tensor noise, Tensor t, Tensor table) -> (Tensor, Tensor)");
  m.def(
      "sampler_step(Tensor(a!) x, Tensor model_out, Tensor coeffs, Tensor(b!)? history, Tensor? noise, int[] writes, "
      "int seed=-1, int offset=0) -> ()");
  m.def(
      "cfg_sampler_step(Tensor(a!) x, Tensor uncond, Tensor cond, Tensor guidance, Tensor coeffs, "
      "Tensor(b!)? history, Tensor? noise, int[] writes, int seed=-1, int offset=0) -> ()");
  m.def("cfg_rescale_factor(Tensor uncond, Tensor cond, Tensor scale, float phi) -> Tensor");
  m.def("philox_normal_(Tensor(a!) out, int seed, int offset) -> ()");
}

TORCH_LIBRARY_IMPL(diffcore, CPU, m) {
  m.impl("forward_noise", &diffcore::forward_noise);
  m.impl("sampler_step", &diffcore::sampler_step);
  m.impl("cfg_sampler_step", &diffcore::cfg_sampler_step);
  m.impl("cfg_rescale_factor", &diffcore::cfg_rescale_factor);
  m.impl("philox_normal_", &diffcore::philox_normal_);
}

#ifdef DIFFCORE_WITH_CUDA
TORCH_LIBRARY_IMPL(diffcore, CUDA, m) {
  m.impl("forward_noise", &diffcore::forward_noise);
  m.impl("sampler_step", &diffcore::sampler_step);
  m.impl("cfg_sampler_step", &diffcore::cfg_sampler_step);
  m.impl("cfg_rescale_factor", &diffcore::cfg_rescale_factor);
  m.impl("philox_normal_", &diffcore::philox_normal_);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "diffcore native kernels (ops registered as torch.ops.diffcore.*)";
  m.def("has_cpu", [] { return true; });
#ifdef DIFFCORE_WITH_CUDA
  m.def("has_cuda", [] { return true; });
#else
  m.def("has_cuda", [] { return false; });
#endif
}
