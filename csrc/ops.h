// The seam between the shared op bodies (csrc/ops.cpp: argument checks, layout handling) and the
// kernels of one device (csrc/cpu/, csrc/cuda/). A device file defines a Kernels struct and
// registers the ops for its dispatch key:
//   TORCH_LIBRARY_IMPL(diffcore, CPU, m) { impl_ops<CpuKernels>(m); }
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <type_traits>

#include "step_math.h"

namespace diffcore {

// Accumulation type of a kernel on scalar_t: double for double, float for float/half/bfloat16.
template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;

// Everything a sampler-step kernel needs, after validation and layout handling: all tensors are
// dense with x's strides, so element i of every operand sits at offset i from its base pointer.
struct StepLaunch {
  at::ScalarType dtype;
  int device = -1;  // CUDA device index of the operands
  void* x = nullptr;
  const void* m = nullptr;  // model output (plain step)
  const void* u = nullptr;  // uncond (guided step)
  const void* c = nullptr;  // cond (guided step)
  void* hist = nullptr;
  int64_t slot_stride = 0;  // elements between history slots
  int K = 0;                // history slots
  const void* z = nullptr;  // noise tensor, or null
  bool philox = false;      // in-kernel counter-based noise from (seed, offset), sample b keyed sample_index + b
  uint64_t seed = 0, offset = 0, sample_index = 0;
  int noise_mode = kNoiseFast;
  const void* limit = nullptr;  // acc_t [B or 1, 2]: the x0 limit's (lo, div) per sample, or null
  int64_t limit_stride = 0;
  int32_t* nonfinite = nullptr;    // set to 1 when a non-finite x0 is seen, or null
  const void* coeffs = nullptr;    // acc_t, [B or 1, width]
  int64_t coeff_stride = 0;        // 0: one vector for the batch
  const void* guidance = nullptr;  // acc_t [B or 1, 2]: (w, r)
  int64_t guidance_stride = 0;
  int W = 0;
  int64_t writes[kMaxWrites] = {0, 0};
  int64_t numel = 0;
  int64_t per_sample = 0;  // elements per batch sample
};

// The kernels one device supplies (as static member functions of its Kernels struct). They run
// after the shared checks, on the device of their operands:
//   step(s)                                  sampler_step / cfg_sampler_step on a StepLaunch
//   forward_noise(x0, noise, t, table, x_t, target)
//                                            contiguous x0, noise, x_t, target; t int64 (B);
//                                            table (T, 4) in the accumulation dtype
//   rescale_factor(u, c, w, phi, out)        contiguous u, c; w float64 (1) or (B); out (B) in the
//                                            accumulation dtype (float32, float64 for float64)
//   philox_fill(out, seed, offset, sample_index, mode)
//                                            out contiguous (B, ...): sample b gets the draw of
//                                            sample sample_index + b
using StepKernel = void (*)(const StepLaunch&);
using ForwardNoiseKernel = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    at::Tensor&, at::Tensor&);
using RescaleKernel = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, at::Tensor&);
using PhiloxKernel = void (*)(at::Tensor&, uint64_t, uint64_t, uint64_t, int);

// The arguments of a step beyond its operands: noise keys, the x0 limit, the finiteness flag.
struct StepOptions {
  int64_t seed = -1, offset = 0, sample_index = 0, noise_mode = kNoiseFast;
  c10::optional<double> x0_clip, x0_ratio;
  double x0_max = 1.0;
  c10::optional<at::Tensor> nonfinite;
};

// Shared op bodies (ops.cpp): validate with TORCH_CHECK, bring the operands into the layout the
// kernel takes, run it, write the results back. m is set for sampler_step; u, c and guidance for
// cfg_sampler_step.
void run_step(StepKernel kernel, at::Tensor& x, const at::Tensor* m, const at::Tensor* u, const at::Tensor* c,
              const at::Tensor* guidance, const at::Tensor& coeffs, const c10::optional<at::Tensor>& history,
              const c10::optional<at::Tensor>& noise, at::IntArrayRef writes, const StepOptions& opt);
std::tuple<at::Tensor, at::Tensor> run_forward_noise(ForwardNoiseKernel kernel, const at::Tensor& x0,
                                                     const at::Tensor& noise, const at::Tensor& t,
                                                     const at::Tensor& table);
at::Tensor run_cfg_rescale_factor(RescaleKernel kernel, const at::Tensor& uncond, const at::Tensor& cond,
                                  const at::Tensor& scale, double phi);
void run_philox_normal_(PhiloxKernel kernel, at::Tensor& out, int64_t seed, int64_t offset, int64_t sample_index,
                        int64_t mode);

// The CPU backend's step kernel (csrc/cpu/ops.cpp), for the direct CPU entry points of ops.cpp.
StepKernel cpu_step_kernel();

// dst = src * scale over n elements of dense CPU memory of x's dtype, each rounded as ATen's
// `src * scale` rounds it (scale 1: a copy); returns whether every src element is finite
// (csrc/cpu/ops.cpp). One pass for the start state of a sampling run.
bool cpu_scaled_copy(const at::Tensor& src, at::Tensor& dst, double scale);

// Registers the five ops of TORCH_LIBRARY(diffcore) (csrc/ops.cpp) with Kernels' functions.
template <class Kernels>
void impl_ops(torch::Library& m) {
  m.impl("forward_noise",
         [](const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t, const at::Tensor& table) {
           return run_forward_noise(&Kernels::forward_noise, x0, noise, t, table);
         });
  m.impl("sampler_step",
         [](at::Tensor x, const at::Tensor& model_out, const at::Tensor& coeffs,
            const c10::optional<at::Tensor>& history, const c10::optional<at::Tensor>& noise, at::IntArrayRef writes,
            int64_t seed, int64_t offset, int64_t sample_index, int64_t noise_mode, c10::optional<double> x0_clip,
            c10::optional<double> x0_ratio, double x0_max, const c10::optional<at::Tensor>& nonfinite) {
           const StepOptions opt{seed, offset, sample_index, noise_mode, x0_clip, x0_ratio, x0_max, nonfinite};
           run_step(&Kernels::step, x, &model_out, nullptr, nullptr, nullptr, coeffs, history, noise, writes, opt);
         });
  m.impl("cfg_sampler_step",
         [](at::Tensor x, const at::Tensor& uncond, const at::Tensor& cond, const at::Tensor& guidance,
            const at::Tensor& coeffs, const c10::optional<at::Tensor>& history, const c10::optional<at::Tensor>& noise,
            at::IntArrayRef writes, int64_t seed, int64_t offset, int64_t sample_index, int64_t noise_mode,
            c10::optional<double> x0_clip, c10::optional<double> x0_ratio, double x0_max,
            const c10::optional<at::Tensor>& nonfinite) {
           const StepOptions opt{seed, offset, sample_index, noise_mode, x0_clip, x0_ratio, x0_max, nonfinite};
           run_step(&Kernels::step, x, nullptr, &uncond, &cond, &guidance, coeffs, history, noise, writes, opt);
         });
  m.impl("cfg_rescale_factor",
         [](const at::Tensor& uncond, const at::Tensor& cond, const at::Tensor& scale, double phi) {
           return run_cfg_rescale_factor(&Kernels::rescale_factor, uncond, cond, scale, phi);
         });
  m.impl("philox_normal_", [](at::Tensor out, int64_t seed, int64_t offset, int64_t sample_index, int64_t mode) {
    run_philox_normal_(&Kernels::philox_fill, out, seed, offset, sample_index, mode);
  });
}

}  // namespace diffcore
