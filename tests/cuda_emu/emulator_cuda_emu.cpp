// Kernels that check the CUDA emulation itself (tests/test_emulator_cuda_emulated.py): that barriers,
// shuffles and shared memory behave like a GPU's, and that the mistakes the emulation claims to catch
// (a missing barrier, a barrier not all threads reach, a shuffle from an exited lane) are caught.
// Registered as torch.ops.leo_emulator_cuda_emu._*.
// Also the switch that poisons CPU allocations for the emulated tests (_poison_cpu_allocations).
#define LEO_CUDA_EMULATE 1
#include <c10/core/CPUAllocator.h>
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

// Fills every CPU allocation with 0xff bytes (NaN in every floating type, -1 in integers), so an
// output element that an emulated kernel does not write shows up in the comparison.
struct PoisonAllocator final : c10::Allocator {
  c10::Allocator* base = nullptr;
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr p = base->allocate(n);
    if (n > 0) std::memset(p.get(), 0xff, n);
    return p;
  }
  c10::DeleterFnPtr raw_deleter() const override { return base->raw_deleter(); }
  void copy_data(void* dest, const void* src, std::size_t count) const override { base->copy_data(dest, src, count); }
};

void poison_cpu_allocations(bool on) {
  static PoisonAllocator poison;  // never destroyed: storages keep a pointer to their allocator
  static c10::Allocator* original = nullptr;
  constexpr uint8_t kPriority = 255;  // SetCPUAllocator replaces only at >= the current priority
  if (on && original == nullptr) {
    original = c10::GetCPUAllocator();
    poison.base = original;
    c10::SetCPUAllocator(&poison, kPriority);
  } else if (!on && original != nullptr) {
    c10::SetCPUAllocator(original, kPriority);
    original = nullptr;
  }
}

}  // namespace

TORCH_LIBRARY(leo_emulator_cuda_emu, m) {
  m.def("_poison_cpu_allocations", &poison_cpu_allocations);
  m.def("_rotate", &rotate);
  m.def("_warp_sum", &warp_sum);
  m.def("_divergent", &divergent);
  m.def("_shuffle_exited", &shuffle_exited);
}
