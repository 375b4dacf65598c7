// diffcore._C: the op schemas (TORCH_LIBRARY) and the op bodies shared by every device: input
// checks and layout handling. The kernels live in csrc/cpu/ and csrc/cuda/ and register there
// for their dispatch key (csrc/ops.h, impl_ops).
//
// The math is defined by diffcore/ops/reference.py; csrc/step_math.h holds the per-element
// formulas the CPU and CUDA kernels share. Every op validates its inputs with TORCH_CHECK so a
// direct torch.ops.diffcore call can never read out of bounds.
#include <ATen/MemoryOverlap.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
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

bool batch_outermost(const at::Tensor& x) { return x.size(0) <= 1 || x.stride(0) * x.size(0) == x.numel(); }

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

// The checks of sampler_step / cfg_sampler_step; returns the number of history slots K.
int64_t check_step(const at::Tensor& x, const at::Tensor* m, const at::Tensor* u, const at::Tensor* c,
                   const at::Tensor* guidance, const at::Tensor& coeffs, const c10::optional<at::Tensor>& history,
                   const c10::optional<at::Tensor>& noise, const std::vector<int64_t>& writes, int64_t seed) {
  TORCH_CHECK(is_float_type(x.scalar_type()), "diffcore: x must be float32/float64/float16/bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.numel() > 0, "diffcore: x must be a non-empty batch, got shape ", x.sizes());
  TORCH_CHECK(!(x.requires_grad() && x.is_leaf() && at::GradMode::is_enabled()),
              "diffcore: x is a leaf tensor that requires grad and the step updates it in place; "
              "sample under torch.no_grad() or pass x.detach()");
  TORCH_CHECK(at::has_internal_overlap(x) != at::MemOverlap::Yes,
              "diffcore: x has overlapping memory (e.g. an expanded tensor); the step writes it in place");
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
    TORCH_CHECK(at::has_internal_overlap(h) != at::MemOverlap::Yes,
                "diffcore: history has overlapping memory (e.g. stride 0); each slot needs its own storage");
    TORCH_CHECK(!x.storage().is_alias_of(h.storage()) || at::get_overlap_status(x, h) == at::MemOverlapStatus::No,
                "diffcore: x shares memory with history; the step reads every slot before it writes x");
  }
  if (noise.has_value()) check_operand("noise", *noise, x);
  TORCH_CHECK(!(noise.has_value() && seed >= 0), "diffcore: pass either a noise tensor or a seed, not both");
  TORCH_CHECK(static_cast<int64_t>(writes.size()) <= kMaxWrites, "diffcore: at most ", kMaxWrites,
              " history writes per step, got ", writes.size());
  for (size_t r = 0; r < writes.size(); ++r) {
    TORCH_CHECK(writes[r] >= 0 && writes[r] < K, "diffcore: write slot ", writes[r], " is outside [0, ", K, ")");
    for (size_t q = 0; q < r; ++q) TORCH_CHECK(writes[q] != writes[r], "diffcore: write slot ", writes[r], " repeats");
  }
  const int64_t width = 2 + (1 + static_cast<int64_t>(writes.size())) * (3 + K);
  check_coeffs("coeffs", coeffs, x, width);
  if (guidance != nullptr) check_coeffs("guidance", *guidance, x, 2);
  return K;
}

// True when the kernels can work on the operands in place: every operand dense with x's strides,
// history slots dense with x's layout, the batch outermost where coefficients are per sample, and
// x contiguous where the kernel draws noise (element j of a sample is its j-th in row-major order).
bool in_place_layout(const at::Tensor& x, const at::Tensor* m, const at::Tensor* u, const at::Tensor* c,
                     const c10::optional<at::Tensor>& history, const c10::optional<at::Tensor>& noise, bool per_sample,
                     bool logical_order) {
  bool fast = logical_order ? x.is_contiguous() : x.is_non_overlapping_and_dense();
  if (per_sample) fast = fast && batch_outermost(x);
  if (m != nullptr) fast = fast && same_dense_layout(*m, x);
  if (u != nullptr) fast = fast && same_dense_layout(*u, x) && same_dense_layout(*c, x);
  if (noise.has_value()) fast = fast && same_dense_layout(*noise, x);
  if (history.has_value()) {
    const at::Tensor& h = *history;
    // each slot has x's sizes and strides, and x passed its density check above: every slot is
    // dense too (no per-slot select, which allocated a tensor per slot per step)
    fast = fast && h.stride(0) >= x.numel() && h.strides().slice(1) == x.strides();
  }
  return fast;
}

// The operands themselves (in place), or contiguous copies of them (general strides).
Operands step_operands(bool in_place, const at::Tensor& x, const at::Tensor* m, const at::Tensor* u,
                       const at::Tensor* c, const c10::optional<at::Tensor>& history,
                       const c10::optional<at::Tensor>& noise) {
  const auto take = [in_place](const at::Tensor& t) { return in_place ? t : t.contiguous(); };
  Operands o;
  o.x = take(x);
  if (m != nullptr) o.m = take(*m);
  if (u != nullptr) {
    o.u = take(*u);
    o.c = take(*c);
  }
  if (history.has_value()) o.hist = take(*history);
  if (noise.has_value()) o.z = take(*noise);
  return o;
}

void check_noise_keys(const at::Tensor& x, int64_t sample_index, int64_t mode) {
  const int64_t batch = x.dim() == 0 ? 1 : x.size(0);
  TORCH_CHECK(sample_index >= 0 && sample_index + batch <= (int64_t{1} << 32), "diffcore: sample_index=", sample_index,
              " must be >= 0 with sample_index + batch (", batch, ") <= 2^32");
  TORCH_CHECK(x.numel() / std::max<int64_t>(batch, 1) <= (int64_t{1} << 34),
              "diffcore: ", x.numel() / std::max<int64_t>(batch, 1),
              " elements per sample; in-kernel noise supports up to 2^34");
  TORCH_CHECK(mode == kNoiseExact || mode == kNoiseFast, "diffcore: noise_mode=", mode,
              " must be 0 (exact) or 1 (fast)");
}

// (B or 1, 2) per-sample (lo, div) of the x0 limit in the accumulation dtype, or an undefined tensor.
// Dynamic thresholding (Saharia et al. 2022, sec. 2.3) needs each sample's x0 first: it is computed
// here with ATen exactly as the kernel computes it (x0 = a*x + b*m, m the guided output), then
// s = clamp(quantile(|x0|, ratio), 1, max) per sample; lo = div = s.
at::Tensor x0_limits(const StepOptions& opt, const at::Tensor& x, const at::Tensor* m, const at::Tensor* u,
                     const at::Tensor* c, const at::Tensor& co, const at::Tensor& g) {
  TORCH_CHECK(!(opt.x0_clip.has_value() && opt.x0_ratio.has_value()),
              "diffcore: pass x0_clip or x0_ratio (dynamic thresholding), not both");
  const at::ScalarType acc = co.scalar_type();
  if (opt.x0_clip.has_value()) {
    const double clip = *opt.x0_clip;
    TORCH_CHECK(clip > 0.0 && std::isfinite(clip), "diffcore: x0_clip=", clip, " must be positive and finite");
    at::Tensor lim = at::ones({2}, x.options().dtype(acc));
    lim.select(0, 0).fill_(clip);
    return lim;
  }
  if (!opt.x0_ratio.has_value()) return at::Tensor();
  const double ratio = *opt.x0_ratio;
  TORCH_CHECK(ratio > 0.0 && ratio <= 1.0, "diffcore: x0_ratio=", ratio, " must be in (0, 1]");
  TORCH_CHECK(opt.x0_max >= 1.0 && std::isfinite(opt.x0_max), "diffcore: x0_max=", opt.x0_max,
              " must be finite and >= 1");
  const int64_t B = x.size(0);
  const auto column = [&](const at::Tensor& t, int64_t j) {
    return t.dim() == 2 ? t.select(1, j).reshape({B, 1}) : t.select(0, j);
  };
  at::Tensor mv;
  if (m != nullptr) {
    mv = m->to(acc).reshape({B, -1});
  } else {
    at::Tensor ua = u->to(acc).reshape({B, -1});
    mv = column(g, 1) * (ua + column(g, 0) * (c->to(acc).reshape({B, -1}) - ua));
  }
  at::Tensor x0 = column(co, 0) * x.to(acc).reshape({B, -1}) + column(co, 1) * mv;
  at::Tensor sv = at::quantile(x0.abs(), ratio, 1).clamp(1.0, opt.x0_max);
  return at::stack({sv, sv}, 1).contiguous();
}

void check_flag(const c10::optional<at::Tensor>& flag, const at::Tensor& x) {
  if (!flag.has_value()) return;
  TORCH_CHECK(flag->scalar_type() == at::kInt && flag->numel() == 1 && flag->device() == x.device(),
              "diffcore: nonfinite must be a one-element int32 tensor on ", x.device(), ", got ", flag->scalar_type(),
              " ", flag->sizes(), " on ", flag->device());
}

}  // namespace

void run_step(StepKernel kernel, at::Tensor& x, const at::Tensor* m, const at::Tensor* u, const at::Tensor* c,
              const at::Tensor* guidance, const at::Tensor& coeffs, const c10::optional<at::Tensor>& history,
              const c10::optional<at::Tensor>& noise, at::IntArrayRef writes_ref, const StepOptions& opt) {
  const std::vector<int64_t> writes(writes_ref.begin(), writes_ref.end());
  check_step(x, m, u, c, guidance, coeffs, history, noise, writes, opt.seed);
  const bool philox = opt.seed >= 0;
  if (philox) {
    TORCH_CHECK(opt.offset >= 0, "diffcore: offset=", opt.offset, " must be >= 0");
    check_noise_keys(x, opt.sample_index, opt.noise_mode);
  }
  check_flag(opt.nonfinite, x);
  const at::ScalarType acc = acc_type(x.scalar_type());
  at::Tensor co = coeffs.to(acc).contiguous();
  at::Tensor g = guidance != nullptr ? guidance->to(acc).contiguous() : at::Tensor();
  at::Tensor lim = x0_limits(opt, x, m, u, c, co, g);
  const bool per_sample = co.dim() == 2 || (g.defined() && g.dim() == 2) || (lim.defined() && lim.dim() == 2);
  const bool in_place = in_place_layout(x, m, u, c, history, noise, per_sample, philox);
  Operands o = step_operands(in_place, x, m, u, c, history, noise);

  StepLaunch s;
  fill_launch(s, o, co, g.defined() ? &g : nullptr, writes);
  if (philox) {
    s.philox = true;
    s.seed = static_cast<uint64_t>(opt.seed);
    s.offset = static_cast<uint64_t>(opt.offset);
    s.sample_index = static_cast<uint64_t>(opt.sample_index);
    s.noise_mode = static_cast<int>(opt.noise_mode);
  }
  if (lim.defined()) {
    s.limit = lim.data_ptr();
    s.limit_stride = lim.dim() == 2 ? 2 : 0;
  }
  if (opt.nonfinite.has_value()) s.nonfinite = opt.nonfinite->data_ptr<int32_t>();
  kernel(s);
  if (!in_place) {  // write back what changed
    if (!o.x.is_same(x)) x.copy_(o.x);
    if (history.has_value() && !o.hist.is_same(*history)) {
      for (int64_t slot : writes) history->select(0, slot).copy_(o.hist.select(0, slot));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> run_forward_noise(ForwardNoiseKernel kernel, const at::Tensor& x0,
                                                     const at::Tensor& noise, const at::Tensor& t,
                                                     const at::Tensor& table) {
  TORCH_CHECK(is_float_type(x0.scalar_type()), "diffcore: x0 must be floating point, got ", x0.scalar_type());
  TORCH_CHECK(x0.dim() >= 1 && x0.numel() > 0, "diffcore: x0 must be a non-empty batch, got shape ", x0.sizes());
  check_operand("noise", noise, x0);
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "diffcore: t must be int32/int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x0.size(0), "diffcore: t has shape ", t.sizes(), "; expected (", x0.size(0),
              ")");
  TORCH_CHECK(is_float_type(table.scalar_type()) && table.dim() == 2 && table.size(1) == 4,
              "diffcore: table must be a floating (T, 4) tensor, got ", table.scalar_type(), " ", table.sizes());
  TORCH_CHECK(t.device() == x0.device() && table.device() == x0.device(), "diffcore: t (", t.device(), ") and table (",
              table.device(), ") must be on x0's device ", x0.device());
  const at::ScalarType acc = acc_type(x0.scalar_type());
  at::Tensor tt = t.to(at::kLong).contiguous();
  at::Tensor tab = table.to(acc).contiguous();
  at::Tensor xc = x0.contiguous(), nc = noise.contiguous();
  at::Tensor x_t = at::empty_like(xc), target = at::empty_like(xc);
  kernel(xc, nc, tt, tab, x_t, target);
  return {x_t, target};
}

at::Tensor run_cfg_rescale_factor(RescaleKernel kernel, const at::Tensor& uncond, const at::Tensor& cond,
                                  const at::Tensor& scale, double phi) {
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
  const at::ScalarType acc = acc_type(uncond.scalar_type());
  at::Tensor w = scale.to(at::kDouble).reshape({-1}).contiguous();
  at::Tensor out = at::empty({B}, uncond.options().dtype(acc));
  kernel(uncond.contiguous(), cond.contiguous(), w, phi, out);
  return out;
}

void run_philox_normal_(PhiloxKernel kernel, at::Tensor& out, int64_t seed, int64_t offset, int64_t sample_index,
                        int64_t mode) {
  TORCH_CHECK(is_float_type(out.scalar_type()), "diffcore: out must be floating point, got ", out.scalar_type());
  TORCH_CHECK(seed >= 0 && offset >= 0, "diffcore: seed=", seed, " and offset=", offset, " must be >= 0");
  check_noise_keys(out, sample_index, mode);
  if (out.numel() == 0) return;
  at::Tensor dense = out.dim() == 0 ? out.reshape({1}) : (out.is_contiguous() ? out : out.contiguous());
  kernel(dense, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint64_t>(sample_index),
         static_cast<int>(mode));
  if (!dense.is_same(out)) out.copy_(dense.reshape(out.sizes()));
}

}  // namespace diffcore

TORCH_LIBRARY(diffcore, m) {
  m.def("forward_noise(Tensor x0, Tensor noise, Tensor t, Tensor table) -> (Tensor, Tensor)");
  m.def(
      "sampler_step(Tensor(a!) x, Tensor model_out, Tensor coeffs, Tensor(b!)? history, Tensor? noise, int[] writes, "
      "int seed=-1, int offset=0, int sample_index=0, int noise_mode=1, float? x0_clip=None, float? x0_ratio=None, "
      "float x0_max=1.0, Tensor(c!)? nonfinite=None) -> ()");
  m.def(
      "cfg_sampler_step(Tensor(a!) x, Tensor uncond, Tensor cond, Tensor guidance, Tensor coeffs, "
      "Tensor(b!)? history, Tensor? noise, int[] writes, int seed=-1, int offset=0, int sample_index=0, "
      "int noise_mode=1, float? x0_clip=None, float? x0_ratio=None, float x0_max=1.0, Tensor(c!)? nonfinite=None) "
      "-> ()");
  m.def("cfg_rescale_factor(Tensor uncond, Tensor cond, Tensor scale, float phi) -> Tensor");
  m.def("philox_normal_(Tensor(a!) out, int seed, int offset, int sample_index=0, int noise_mode=1) -> ()");
}

namespace diffcore {
namespace {

// sampler_step / cfg_sampler_step on CPU tensors without the dispatcher: the same checks, layout
// handling and kernel, for eager sampling loops whose small steps the boxed op call dominated
// (issue #20: host work per step). Unlike the op, a call does not bump the version counters of x
// and history: only for buffers a loop owns (diffcore.ops.step_kernels).
void cpu_step(at::Tensor x, const at::Tensor& m, const at::Tensor& coeffs, const c10::optional<at::Tensor>& history,
              const c10::optional<at::Tensor>& noise, const std::vector<int64_t>& writes, int64_t seed, int64_t offset,
              int64_t sample_index, int64_t noise_mode, c10::optional<double> x0_clip, c10::optional<double> x0_ratio,
              double x0_max, const c10::optional<at::Tensor>& nonfinite) {
  TORCH_CHECK(x.device().is_cpu(), "diffcore: the direct CPU step got x on ", x.device());
  const StepOptions opt{seed, offset, sample_index, noise_mode, x0_clip, x0_ratio, x0_max, nonfinite};
  run_step(cpu_step_kernel(), x, &m, nullptr, nullptr, nullptr, coeffs, history, noise, writes, opt);
}

void cpu_cfg_step(at::Tensor x, const at::Tensor& uncond, const at::Tensor& cond, const at::Tensor& guidance,
                  const at::Tensor& coeffs, const c10::optional<at::Tensor>& history,
                  const c10::optional<at::Tensor>& noise, const std::vector<int64_t>& writes, int64_t seed,
                  int64_t offset, int64_t sample_index, int64_t noise_mode, c10::optional<double> x0_clip,
                  c10::optional<double> x0_ratio, double x0_max, const c10::optional<at::Tensor>& nonfinite) {
  TORCH_CHECK(x.device().is_cpu(), "diffcore: the direct CPU step got x on ", x.device());
  const StepOptions opt{seed, offset, sample_index, noise_mode, x0_clip, x0_ratio, x0_max, nonfinite};
  run_step(cpu_step_kernel(), x, nullptr, &uncond, &cond, &guidance, coeffs, history, noise, writes, opt);
}

// (x * scale as a new tensor with x's layout, whether every element of x is finite): the start
// state of a CPU sampling run in one pass where the torch ops made two (a sum for the check, then
// the clone or product). x must be a dense CPU tensor of a floating dtype.
std::tuple<at::Tensor, bool> cpu_start_state(const at::Tensor& x, double scale) {
  TORCH_CHECK(x.device().is_cpu() && is_float_type(x.scalar_type()) && x.is_non_overlapping_and_dense(),
              "diffcore: start_state takes a dense floating-point CPU tensor, got ", x.scalar_type(), " ", x.sizes(),
              " on ", x.device());
  at::Tensor out = at::empty_like(x);  // x's strides (dense: preserve_format keeps them)
  TORCH_CHECK(out.strides() == x.strides(), "diffcore: start_state could not keep x's strides ", x.strides());
  const bool finite = cpu_scaled_copy(x, out, scale);
  return {out, finite};
}

}  // namespace
}  // namespace diffcore

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "diffcore native kernels (ops registered as torch.ops.diffcore.*)";
  namespace py = pybind11;
  const auto tail = [] {  // the schema's defaults of the arguments after writes
    return std::make_tuple(py::arg("seed") = -1, py::arg("offset") = 0, py::arg("sample_index") = 0,
                           py::arg("noise_mode") = 1, py::arg("x0_clip") = py::none(), py::arg("x0_ratio") = py::none(),
                           py::arg("x0_max") = 1.0, py::arg("nonfinite") = py::none());
  };
  std::apply(
      [&](auto... t) {
        m.def("cpu_sampler_step", &diffcore::cpu_step, "sampler_step on CPU tensors (arguments as in the op schema)",
              py::arg("x"), py::arg("model_out"), py::arg("coeffs"), py::arg("history"), py::arg("noise"),
              py::arg("writes"), t...);
        m.def("cpu_cfg_sampler_step", &diffcore::cpu_cfg_step,
              "cfg_sampler_step on CPU tensors (arguments as in the op schema)", py::arg("x"), py::arg("uncond"),
              py::arg("cond"), py::arg("guidance"), py::arg("coeffs"), py::arg("history"), py::arg("noise"),
              py::arg("writes"), t...);
      },
      tail());
  m.def("cpu_start_state", &diffcore::cpu_start_state,
        "(x * scale as a new tensor, whether x is all finite) in one pass, dense CPU x", py::arg("x"),
        py::arg("scale"));
  m.def("has_cpu", [] { return true; });
#ifdef DIFFCORE_WITH_CUDA
  m.def("has_cuda", [] { return true; });
#else
  m.def("has_cuda", [] { return false; });
#endif
}
