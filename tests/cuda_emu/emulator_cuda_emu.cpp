// Kernels that check the CUDA emulation itself (tests/test_emulator_cuda_emulated.py): that barriers,
// shuffles and shared memory behave like a GPU's, and that the mistakes the emulation claims to catch
// (a missing barrier, a barrier not all threads reach, a shuffle from an exited lane) are caught.
// Registered as torch.ops.leo_emulator_cuda_emu._*.
#define LEO_CUDA_EMULATE 1
#include <torch/library.h>

#include "leo_cuda_emulate.h"

namespace {

constexpr int kThreads = 128;

// out[b, t] = x[b, (t + 1) % 128], passed through shared memory; `sync` places the barrier between
// the writes and the reads.
__global__ void rotate_kernel(const float* x, float* out, bool sync) {
  __shared__ float s[kThreads];
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * kThreads + t];
  if (sync) __syncthreads();
  out[blockIdx.x * kThreads + t] = s[(t + 1) % kThreads];
}

// out[i] = the sum of x over i's warp (butterfly of __shfl_xor_sync), then broadcast from lane 5.
__global__ void warp_sum_kernel(const float* x, float* out) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  float v = x[i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[i] = __shfl_sync(0xffffffffu, v, 5);
}

// Lanes 0-15 of warp 0 wait at __syncwarp, every other thread at __syncthreads: no barrier completes.
__global__ void divergent_kernel(float* out) {
  if (threadIdx.x < 16)
    __syncwarp();
  else
    __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Lanes 16-31 exit; lanes 0-15 read lane + 16.
__global__ void shuffle_exited_kernel(float* out) {
  const int lane = threadIdx.x % 32;
  if (lane >= 16) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.f * lane, lane + 16);
}

at::Tensor rotate(const at::Tensor& x, bool sync) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == kThreads && x.scalar_type() == at::kFloat && x.is_contiguous());
  auto out = at::empty_like(x);
  LEO_LAUNCH(static_cast<unsigned>(x.size(0)), 0, rotate_kernel)(x.data_ptr<float>(), out.data_ptr<float>(), sync);
  return out;
}

at::Tensor warp_sum(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == kThreads && x.scalar_type() == at::kFloat && x.is_contiguous());
  auto out = at::empty_like(x);
  LEO_LAUNCH(static_cast<unsigned>(x.size(0)), 0, warp_sum_kernel)(x.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

at::Tensor divergent(const at::Tensor& like) {
  auto out = at::zeros({kThreads}, like.options());
  LEO_LAUNCH(1u, 0, divergent_kernel)(out.data_ptr<float>());
  return out;
}

at::Tensor shuffle_exited(const at::Tensor& like) {
  auto out = at::zeros({kThreads}, like.options());
  LEO_LAUNCH(1u, 0, shuffle_exited_kernel)(out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY(leo_emulator_cuda_emu, m) {
  m.def("_rotate", &rotate);
  m.def("_warp_sum", &warp_sum);
  m.def("_divergent", &divergent);
  m.def("_shuffle_exited", &shuffle_exited);
}
