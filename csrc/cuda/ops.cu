// CUDA kernels of diffcore's fused ops. Validation and layout handling live in csrc/ops.cpp; the
// per-element math in csrc/step_math.h is shared with the CPU kernels. Kernels run on the current
// stream, never synchronize the host, and read coefficients from device memory, so a sampling
// loop built from them can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../ops.h"

namespace diffcore {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float to_acc(T v) {
  return static_cast<float>(v);
}
__device__ __forceinline__ double to_acc(double v) { return v; }

int multiprocessors() {
  static int cached[64] = {0};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return 132;
  if (cached[dev] == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&cached[dev], cudaDevAttrMultiProcessorCount, dev));
  return cached[dev];
}

int blocks_for(int64_t work) {
  const int sms = multiprocessors();
  const int64_t needed = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, static_cast<int64_t>(sms) * 8)));
}

// One thread handles VEC consecutive elements of one sample per grid-stride iteration. VEC = 4
// when every operand is 16-byte aligned and the sample size is a multiple of 4 (vector loads).
template <typename scalar_t, typename acc_t, int K, int W, bool CFG, bool PHILOX, int VEC>
__global__ void __launch_bounds__(kThreads) step_kernel(StepLaunch s) {
  constexpr int width = 2 + (1 + W) * (3 + K);
  auto* __restrict__ xp = static_cast<scalar_t*>(s.x);
  const auto* __restrict__ mp = static_cast<const scalar_t*>(CFG ? s.u : s.m);
  const auto* __restrict__ cp = static_cast<const scalar_t*>(s.c);
  auto* __restrict__ hp = static_cast<scalar_t*>(s.hist);
  const auto* __restrict__ zp = static_cast<const scalar_t*>(s.z);
  const auto* __restrict__ coeffs = static_cast<const acc_t*>(s.coeffs);
  const auto* __restrict__ guid = static_cast<const acc_t*>(s.guidance);
  const int64_t chunks = s.numel / VEC;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < chunks;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i0 = q * VEC;
    const int64_t b = i0 / s.per_sample;
    acc_t co[width];
    const acc_t* src = coeffs + b * s.coeff_stride;
#pragma unroll
    for (int k = 0; k < width; ++k) co[k] = __ldg(src + k);
    acc_t gw = 0, gr = 1;
    if (CFG) {
      gw = __ldg(guid + b * s.guidance_stride);
      gr = __ldg(guid + b * s.guidance_stride + 1);
    }
    float normals[4] = {0.f, 0.f, 0.f, 0.f};
    if (PHILOX && VEC == 4) philox_normal4(s.seed, s.offset, static_cast<uint64_t>(i0 >> 2), normals);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int64_t i = i0 + v;
      const acc_t xv = to_acc(xp[i]);
      acc_t mv = to_acc(mp[i]);
      if (CFG) mv = gr * (mv + gw * (to_acc(cp[i]) - mv));
      acc_t hv[K > 0 ? K : 1];
#pragma unroll
      for (int j = 0; j < K; ++j) hv[j] = to_acc(hp[j * s.slot_stride + i]);
      acc_t zv = 0;
      if (PHILOX) zv = VEC == 4 ? normals[v] : philox_normal(s.seed, s.offset, static_cast<uint64_t>(i));
      else if (zp != nullptr) zv = to_acc(zp[i]);
      acc_t out[1 + W];
      step_point<K, W, acc_t>(xv, mv, co, hv, zv, out);
      xp[i] = static_cast<scalar_t>(out[0]);
#pragma unroll
      for (int r = 0; r < W; ++r) hp[s.writes[r] * s.slot_stride + i] = static_cast<scalar_t>(out[1 + r]);
    }
  }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename scalar_t, int K, int W, bool CFG, bool PHILOX>
void launch(const StepLaunch& s) {
  using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = s.per_sample % 4 == 0 && s.numel % 4 == 0 && aligned16(s.x) && aligned16(s.m) &&
                   aligned16(s.u) && aligned16(s.c) && aligned16(s.z) && aligned16(s.hist) &&
                   (s.slot_stride * static_cast<int64_t>(sizeof(scalar_t))) % 16 == 0;
  if (vec) {
    step_kernel<scalar_t, acc_t, K, W, CFG, PHILOX, 4><<<blocks_for(s.numel / 4), kThreads, 0, stream>>>(s);
  } else {
    step_kernel<scalar_t, acc_t, K, W, CFG, PHILOX, 1><<<blocks_for(s.numel), kThreads, 0, stream>>>(s);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int K, int W>
void dispatch_flags(const StepLaunch& s) {
  const bool cfg = s.u != nullptr;
  if (cfg && s.philox) launch<scalar_t, K, W, true, true>(s);
  else if (cfg) launch<scalar_t, K, W, true, false>(s);
  else if (s.philox) launch<scalar_t, K, W, false, true>(s);
  else launch<scalar_t, K, W, false, false>(s);
}

template <typename scalar_t>
void dispatch_shape(const StepLaunch& s) {
  switch (s.K * 3 + s.W) {
    case 0: return dispatch_flags<scalar_t, 0, 0>(s);
    case 3: return dispatch_flags<scalar_t, 1, 0>(s);
    case 4: return dispatch_flags<scalar_t, 1, 1>(s);
    case 6: return dispatch_flags<scalar_t, 2, 0>(s);
    case 7: return dispatch_flags<scalar_t, 2, 1>(s);
    case 8: return dispatch_flags<scalar_t, 2, 2>(s);
    case 9: return dispatch_flags<scalar_t, 3, 0>(s);
    case 10: return dispatch_flags<scalar_t, 3, 1>(s);
    case 11: return dispatch_flags<scalar_t, 3, 2>(s);
    case 12: return dispatch_flags<scalar_t, 4, 0>(s);
    case 13: return dispatch_flags<scalar_t, 4, 1>(s);
    case 14: return dispatch_flags<scalar_t, 4, 2>(s);
    default: TORCH_CHECK(false, "diffcore: unsupported history layout K=", s.K, " W=", s.W);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void forward_noise_kernel(const scalar_t* __restrict__ x0, const scalar_t* __restrict__ noise,
                                     const int64_t* __restrict__ t, const acc_t* __restrict__ table,
                                     scalar_t* __restrict__ x_t, scalar_t* __restrict__ target, int64_t numel,
                                     int64_t per_sample, int64_t rows) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ti = __ldg(t + i / per_sample);
    CUDA_KERNEL_ASSERT(ti >= 0 && ti < rows);
    const acc_t* r = table + 4 * ti;
    const acc_t xv = to_acc(x0[i]), nv = to_acc(noise[i]);
    x_t[i] = static_cast<scalar_t>(__ldg(r) * xv + __ldg(r + 1) * nv);
    target[i] = static_cast<scalar_t>(__ldg(r + 2) * xv + __ldg(r + 3) * nv);
  }
}

// Per-sample sums of cond, cond^2, cfg, cfg^2 in double: one block row per sample.
template <typename scalar_t>
__global__ void rescale_sums_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ c,
                                    const double* __restrict__ scale, int64_t scale_stride, int64_t per_sample,
                                    double* __restrict__ sums) {
  const int64_t b = blockIdx.y;
  const double w = scale[b * scale_stride];
  double acc[4] = {0, 0, 0, 0};
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < per_sample;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double uv = static_cast<double>(to_acc(u[b * per_sample + k]));
    const double cv = static_cast<double>(to_acc(c[b * per_sample + k]));
    const double gv = uv + w * (cv - uv);
    acc[0] += cv;
    acc[1] += cv * cv;
    acc[2] += gv;
    acc[3] += gv * gv;
  }
  __shared__ double shared[4][kThreads];
  for (int j = 0; j < 4; ++j) shared[j][threadIdx.x] = acc[j];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride)
      for (int j = 0; j < 4; ++j) shared[j][threadIdx.x] += shared[j][threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int j = 0; j < 4; ++j) atomicAdd(sums + 4 * b + j, shared[j][0]);
}

template <typename out_t>
__global__ void rescale_finish_kernel(const double* __restrict__ sums, int64_t batch, int64_t n, double phi,
                                      out_t* __restrict__ out) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const double* s = sums + 4 * b;
  const double var_c = fmax(0.0, (s[1] - s[0] * s[0] / n) / (n - 1));
  const double var_g = fmax(0.0, (s[3] - s[2] * s[2] / n) / (n - 1));
  out[b] = static_cast<out_t>(phi * sqrt(var_c) / sqrt(var_g) + (1.0 - phi));
}

template <typename scalar_t>
__global__ void philox_fill_kernel(scalar_t* __restrict__ out, int64_t numel, uint64_t seed, uint64_t offset) {
  const int64_t groups = (numel + 3) / 4;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[4];
    philox_normal4(seed, offset, static_cast<uint64_t>(g), v);
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (4 * g + k < numel) out[4 * g + k] = static_cast<scalar_t>(v[k]);
  }
}

}  // namespace

void launch_step_cuda(const StepLaunch& s) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(s.device));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.dtype, "diffcore_sampler_step_cuda",
                                  [&] { dispatch_shape<scalar_t>(s); });
}

void launch_forward_noise_cuda(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t,
                               const at::Tensor& table, at::Tensor& x_t, at::Tensor& target) {
  const c10::cuda::CUDAGuard guard(x0.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t numel = x0.numel(), per_sample = numel / x0.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "diffcore_forward_noise_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    forward_noise_kernel<scalar_t, acc_t><<<blocks_for(numel), kThreads, 0, stream>>>(
        x0.data_ptr<scalar_t>(), noise.data_ptr<scalar_t>(), t.data_ptr<int64_t>(), table.data_ptr<acc_t>(),
        x_t.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), numel, per_sample, table.size(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor cfg_rescale_factor_cuda(const at::Tensor& uncond, const at::Tensor& cond, const at::Tensor& scale,
                                   double phi) {
  const c10::cuda::CUDAGuard guard(uncond.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = uncond.size(0), n = uncond.numel() / B;
  at::Tensor w = scale.to(at::kDouble).reshape({-1}).contiguous();
  at::Tensor sums = at::zeros({B, 4}, uncond.options().dtype(at::kDouble));
  const at::ScalarType acc = uncond.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({B}, uncond.options().dtype(acc));
  const int x_blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 64));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, uncond.scalar_type(), "diffcore_cfg_rescale_cuda", [&] {
    rescale_sums_kernel<scalar_t><<<dim3(x_blocks, static_cast<unsigned>(B)), kThreads, 0, stream>>>(
        uncond.data_ptr<scalar_t>(), cond.data_ptr<scalar_t>(), w.data_ptr<double>(), w.numel() == 1 ? 0 : 1, n,
        sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  AT_DISPATCH_FLOATING_TYPES(acc, "diffcore_cfg_rescale_finish", [&] {
    rescale_finish_kernel<scalar_t><<<static_cast<unsigned>((B + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        sums.data_ptr<double>(), B, n, phi, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void fill_philox_cuda(at::Tensor& out, uint64_t seed, uint64_t offset) {
  const c10::cuda::CUDAGuard guard(out.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t numel = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "diffcore_philox_cuda", [&] {
    philox_fill_kernel<scalar_t><<<blocks_for((numel + 3) / 4), kThreads, 0, stream>>>(out.data_ptr<scalar_t>(),
                                                                                        numel, seed, offset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace diffcore
