// CUDA kernels of diffcore's fused ops, registered for the CUDA dispatch key. Argument checks and
// layout handling run before them in csrc/ops.cpp; the per-element math in csrc/step_math.h is
// shared with the CPU kernels. Kernels run on the current stream, never synchronize the host, and
// read coefficients from device memory, so a sampling loop built from them can be captured in a
// CUDA graph.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "../ops.h"
#include "../step_dispatch.h"

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
// when every operand is 16-byte aligned and the sample size is a multiple of 4 (vector loads; a
// thread's four elements are then one Philox block of its sample).
template <typename scalar_t, typename acc_t, int K, int W, bool CFG, bool PHILOX, bool LIMIT, int VEC>
__global__ void __launch_bounds__(kThreads) step_kernel(StepLaunch s) {
  constexpr int width = 2 + (1 + W) * (3 + K);
  auto* __restrict__ xp = static_cast<scalar_t*>(s.x);
  const auto* __restrict__ mp = static_cast<const scalar_t*>(CFG ? s.u : s.m);
  const auto* __restrict__ cp = static_cast<const scalar_t*>(s.c);
  auto* __restrict__ hp = static_cast<scalar_t*>(s.hist);
  const auto* __restrict__ zp = static_cast<const scalar_t*>(s.z);
  const auto* __restrict__ coeffs = static_cast<const acc_t*>(s.coeffs);
  const auto* __restrict__ guid = static_cast<const acc_t*>(s.guidance);
  const auto* __restrict__ lims = static_cast<const acc_t*>(s.limit);
  const int64_t chunks = s.numel / VEC;
  bool bad = false;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < chunks;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i0 = q * VEC;
    const int64_t b = i0 / s.per_sample;
    const int64_t j0 = i0 - b * s.per_sample;  // index within the sample
    acc_t co[width];
    const acc_t* src = coeffs + b * s.coeff_stride;
#pragma unroll
    for (int k = 0; k < width; ++k) co[k] = __ldg(src + k);
    acc_t gw = 0, gr = 1, lo = 0, div = 1;
    if (CFG) {
      gw = __ldg(guid + b * s.guidance_stride);
      gr = __ldg(guid + b * s.guidance_stride + 1);
    }
    if (LIMIT) {
      lo = __ldg(lims + b * s.limit_stride);
      div = __ldg(lims + b * s.limit_stride + 1);
    }
    const uint32_t sample = static_cast<uint32_t>(s.sample_index + b);
    float normals[4] = {0.f, 0.f, 0.f, 0.f};
    if (PHILOX && VEC == 4)
      philox_normal4(s.seed, s.offset, sample, static_cast<uint32_t>(j0 >> 2), s.noise_mode, normals);
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
      if (PHILOX) {  // rounded to scalar_t, as the reference rounds its noise tensor
        const float n = VEC == 4 ? normals[v] : philox_normal(s.seed, s.offset, sample, j0 + v, s.noise_mode);
        zv = to_acc(static_cast<scalar_t>(n));
      } else if (zp != nullptr) {
        zv = to_acc(zp[i]);
      }
      acc_t out[1 + W];
      const acc_t raw = step_point<K, W, LIMIT, acc_t>(xv, mv, co, lo, div, hv, zv, out);
      bad = bad || !isfinite(raw);
      xp[i] = static_cast<scalar_t>(out[0]);
#pragma unroll
      for (int r = 0; r < W; ++r) hp[s.writes[r] * s.slot_stride + i] = static_cast<scalar_t>(out[1 + r]);
    }
  }
  if (bad && s.nonfinite != nullptr) *s.nonfinite = 1;  // every writer writes 1: no atomics needed
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename scalar_t, int K, int W, bool CFG, bool PHILOX, bool LIMIT>
void launch_step(const StepLaunch& s) {
  using acc_t = acc_type_t<scalar_t>;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = s.per_sample % 4 == 0 && s.numel % 4 == 0 && aligned16(s.x) && aligned16(s.m) && aligned16(s.u) &&
                   aligned16(s.c) && aligned16(s.z) && aligned16(s.hist) &&
                   (s.slot_stride * static_cast<int64_t>(sizeof(scalar_t))) % 16 == 0;
  if (vec) {
    step_kernel<scalar_t, acc_t, K, W, CFG, PHILOX, LIMIT, 4><<<blocks_for(s.numel / 4), kThreads, 0, stream>>>(s);
  } else {
    step_kernel<scalar_t, acc_t, K, W, CFG, PHILOX, LIMIT, 1><<<blocks_for(s.numel), kThreads, 0, stream>>>(s);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

// Per-sample sums of cond, cond^2, cfg, cfg^2 in double (rescale_accumulate): one block row per sample.
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
    rescale_accumulate(acc, uv, cv, w);
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
  out[b] = static_cast<out_t>(rescale_finish(sums + 4 * b, n, phi));
}

// One thread per Philox block of one sample: sample b's elements j = 4g .. 4g+3.
template <typename scalar_t>
__global__ void philox_fill_kernel(scalar_t* __restrict__ out, int64_t batch, int64_t per_sample, uint64_t seed,
                                   uint64_t offset, uint64_t sample_index, int mode) {
  const int64_t groups = (per_sample + 3) / 4;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < batch * groups;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = q / groups, g = q - b * groups;
    float v[4];
    philox_normal4(seed, offset, static_cast<uint32_t>(sample_index + b), static_cast<uint32_t>(g), mode, v);
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (4 * g + k < per_sample) out[b * per_sample + 4 * g + k] = static_cast<scalar_t>(v[k]);
  }
}

struct CudaKernels {
  static void step(const StepLaunch& s) {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(s.device));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.dtype, "diffcore_sampler_step_cuda", [&] {
      dispatch_step(s, [&](auto shape) {
        using S = decltype(shape);
        launch_step<scalar_t, S::K, S::W, S::CFG, S::PHILOX, S::LIMIT>(s);
      });
    });
  }

  static void forward_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t, const at::Tensor& table,
                            at::Tensor& x_t, at::Tensor& target) {
    const c10::cuda::CUDAGuard guard(x0.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t numel = x0.numel(), per_sample = numel / x0.size(0);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "diffcore_forward_noise_cuda", [&] {
      using acc_t = acc_type_t<scalar_t>;
      forward_noise_kernel<scalar_t, acc_t><<<blocks_for(numel), kThreads, 0, stream>>>(
          x0.data_ptr<scalar_t>(), noise.data_ptr<scalar_t>(), t.data_ptr<int64_t>(), table.data_ptr<acc_t>(),
          x_t.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), numel, per_sample, table.size(0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  // Two launches: per-sample sums (rescale_sums_kernel), then the shared finish (csrc/step_math.h).
  static void rescale_factor(const at::Tensor& u, const at::Tensor& c, const at::Tensor& w, double phi,
                             at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(u.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t B = u.size(0), n = u.numel() / B;
    at::Tensor sums = at::zeros({B, 4}, u.options().dtype(at::kDouble));
    const int x_blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 64));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "diffcore_cfg_rescale_cuda", [&] {
      rescale_sums_kernel<scalar_t><<<dim3(x_blocks, static_cast<unsigned>(B)), kThreads, 0, stream>>>(
          u.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), w.data_ptr<double>(), w.numel() == 1 ? 0 : 1, n,
          sums.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "diffcore_cfg_rescale_finish", [&] {
      rescale_finish_kernel<scalar_t><<<static_cast<unsigned>((B + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          sums.data_ptr<double>(), B, n, phi, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void philox_fill(at::Tensor& out, uint64_t seed, uint64_t offset, uint64_t sample_index, int mode) {
    const c10::cuda::CUDAGuard guard(out.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t batch = out.size(0), per_sample = out.numel() / batch;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "diffcore_philox_cuda", [&] {
      philox_fill_kernel<scalar_t><<<blocks_for(batch * ((per_sample + 3) / 4)), kThreads, 0, stream>>>(
          out.data_ptr<scalar_t>(), batch, per_sample, seed, offset, sample_index, mode);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace
}  // namespace diffcore

TORCH_LIBRARY_IMPL(diffcore, CUDA, m) { diffcore::impl_ops<diffcore::CudaKernels>(m); }
