// Host-side description of one fused-op launch, shared by the CPU and CUDA backends.
#pragma once

#include <ATen/ATen.h>

#include "step_math.h"

namespace diffcore {

// Everything a sampler-step kernel needs, after validation and layout handling: all tensors are
// dense with x's strides, so element i of every operand sits at offset i from its base pointer.
struct StepLaunch {
  at::ScalarType dtype;
  int device = -1;  // CUDA device index of the operands
  void* x = nullptr;
  const void* m = nullptr;   // model output (plain step)
  const void* u = nullptr;   // uncond (guided step)
  const void* c = nullptr;   // cond (guided step)
  void* hist = nullptr;
  int64_t slot_stride = 0;   // elements between history slots
  int K = 0;                 // history slots
  const void* z = nullptr;   // noise tensor, or null
  bool philox = false;       // in-kernel counter-based noise from (seed, offset)
  uint64_t seed = 0, offset = 0;
  const void* coeffs = nullptr;  // acc_t, [B or 1, width]
  int64_t coeff_stride = 0;      // 0: one vector for the batch
  const void* guidance = nullptr;  // acc_t [B or 1, 2]: (w, r)
  int64_t guidance_stride = 0;
  int W = 0;
  int64_t writes[kMaxWrites] = {0, 0};
  int64_t numel = 0;
  int64_t per_sample = 0;  // elements per batch sample
};

void launch_step_cpu(const StepLaunch& s);
#ifdef DIFFCORE_WITH_CUDA
void launch_step_cuda(const StepLaunch& s);
void launch_forward_noise_cuda(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t,
                               const at::Tensor& table, at::Tensor& x_t, at::Tensor& target);
at::Tensor cfg_rescale_factor_cuda(const at::Tensor& uncond, const at::Tensor& cond, const at::Tensor& scale,
                                   double phi);
void fill_philox_cuda(at::Tensor& out, uint64_t seed, uint64_t offset);
#endif

}  // namespace diffcore
