// Host emulation of the few CUDA constructs csrc/cuda/*.cu use, so their kernels and host code can
// be compiled as C++ and run on CPU tensors (tests/test_warp_cuda_emulated.py). Blocks and threads
// run one after another, so atomics are plain adds. Checks the kernels' index math, strides,
// vectorized paths and the deterministic path; says nothing about races or GPU performance.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

struct leo_emu_dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline leo_emu_dim3 blockIdx, threadIdx, blockDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)

using std::exp;
using std::floor;
using std::fmax;
using std::fmin;
using std::fmod;
using std::max;
using std::min;
using std::tanh;

inline float __fdiv_rn(float a, float b) { return a / b; }

template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p += v;
  return old;
}

namespace c10::cuda {
inline int getCurrentCUDAStream() { return 0; }
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda

namespace leo_emu {
template <typename... A>
struct Launcher {
  unsigned blocks, threads;
  void (*fn)(A...);
  template <typename... B>
  void operator()(B&&... args) const {
    blockDim.x = threads;
    for (unsigned b = 0; b < blocks; ++b) {
      blockIdx.x = b;
      for (unsigned t = 0; t < threads; ++t) {
        threadIdx.x = t;
        fn(static_cast<A>(args)...);
      }
    }
  }
};
template <typename... A>
Launcher<A...> make_launcher(unsigned blocks, unsigned threads, void (*fn)(A...)) {
  return {blocks, threads, fn};
}
}  // namespace leo_emu

#define LEO_LAUNCH(blocks, stream, ...) leo_emu::make_launcher((blocks), kThreads, &__VA_ARGS__)
