// Host emulation of the CUDA constructs csrc/cuda/*.cu use, so their kernels and host code compile
// as C++ and run on CPU tensors (tests/test_*_cuda_emulated.py). Never part of the real build.
//
// A launch runs its grid block after block with the real grid and block dimensions. The threads of
// a block are cooperative fibers (ucontext) on one OS thread: each runs until it reaches a barrier
// (__syncthreads, __syncwarp, a warp shuffle) and the block's scheduler resumes the next one, in a
// per-block shuffled order, so a read of shared memory that is missing the barrier before it sees
// data not yet written. __shared__ is one per-OS-thread static per kernel instantiation (reused by
// the next block, like on a GPU). Warp shuffles go through a double-buffered per-warp exchange
// buffer and a warp barrier. A barrier that not all live threads of its block/warp reach, or a
// shuffle from a lane that did not take part, throws instead of hanging. Atomics are plain adds
// (threads never interleave). Launched kernel names are recorded (take_launched_kernels).
//
// What this shows: index math, strides, vectorized paths, partial tiles, reductions, barrier
// placement, shuffle patterns, host code. What it cannot show: memory-model races (visibility
// without a barrier, weak ordering), bank conflicts, occupancy, register spills, fast-math
// rounding, speed (docs/GPU.md).
#pragma once
#include <ATen/ATen.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// Set by the scheduler before it resumes a thread (only one thread runs at a time).
inline thread_local dim3 gridDim, blockDim, blockIdx, threadIdx;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
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

constexpr unsigned kWarpSize = 32;
constexpr size_t kStackBytes = 64 * 1024;

struct Barrier {
  unsigned arrived = 0, generation = 0, live = 0;
};

struct Thread {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;  // uninitialized: pages are touched only as far as used
  unsigned tid = 0;
  bool done = false;
  const Barrier* waiting = nullptr;  // barrier this thread waits at, and the generation it waits on
  unsigned wait_gen = 0;
  unsigned shuffles = 0;  // warp shuffles done so far (selects the exchange buffer)
};

struct Warp {
  Barrier barrier;
  uint64_t value[2][kWarpSize];  // exchange buffers, alternating per shuffle
  unsigned stamp[2][kWarpSize];  // shuffle number that wrote each slot
};

// The block being run on this OS thread.
struct Block {
  ucontext_t scheduler;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  Barrier barrier;
  Thread* current = nullptr;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  std::exception_ptr error;
};
inline thread_local Block* g_block = nullptr;

[[noreturn]] inline void fail(const std::string& what) {
  throw std::runtime_error("CUDA emulation: block (" + std::to_string(blockIdx.x) + "," +
                           std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + ") thread " +
                           std::to_string(threadIdx.x) + ": " + what);
}

inline void release_if_complete(Barrier& b) {
  if (b.arrived > 0 && b.arrived == b.live) {
    b.arrived = 0;
    ++b.generation;
  }
}

// The calling thread waits until every live thread of the barrier's group has arrived.
inline void arrive_and_wait(Barrier& b) {
  Block& blk = *g_block;
  Thread& t = *blk.current;
  t.waiting = &b;
  t.wait_gen = b.generation;
  ++b.arrived;
  release_if_complete(b);
  swapcontext(&t.ctx, &blk.scheduler);  // back when the barrier is released
}

inline void thread_main() {
  Block& blk = *g_block;
  try {
    blk.body(blk.body_arg);
  } catch (...) {
    blk.error = std::current_exception();
  }
  blk.current->done = true;  // returning resumes the scheduler (uc_link)
}

inline void run_block(unsigned nthreads, uint64_t seed, void (*body)(void*), void* arg, Block& blk) {
  const unsigned nwarps = (nthreads + kWarpSize - 1) / kWarpSize;
  blk.body = body;
  blk.body_arg = arg;
  blk.error = nullptr;
  blk.barrier = Barrier{0, 0, nthreads};
  blk.warps.assign(nwarps, Warp{});
  for (unsigned w = 0; w < nwarps; ++w) blk.warps[w].barrier.live = std::min(kWarpSize, nthreads - w * kWarpSize);
  blk.threads.resize(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) {
    Thread& t = blk.threads[i];
    if (!t.stack) t.stack.reset(new char[kStackBytes]);
    t.tid = i;
    t.done = false;
    t.waiting = nullptr;
    t.shuffles = 0;
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = t.stack.get();
    t.ctx.uc_stack.ss_size = kStackBytes;
    t.ctx.uc_link = &blk.scheduler;
    makecontext(&t.ctx, thread_main, 0);
  }
  std::vector<unsigned> order(nthreads);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  unsigned live = nthreads;
  while (live > 0) {
    bool progressed = false;
    for (unsigned i : order) {
      Thread& t = blk.threads[i];
      if (t.done || (t.waiting && t.waiting->generation == t.wait_gen)) continue;
      t.waiting = nullptr;
      blk.current = &t;
      threadIdx = dim3(i);
      swapcontext(&blk.scheduler, &t.ctx);
      progressed = true;
      if (blk.error) std::rethrow_exception(blk.error);
      if (t.done) {  // an exited thread no longer holds back its block's or warp's barriers
        --live;
        --blk.barrier.live;
        release_if_complete(blk.barrier);
        Barrier& wb = blk.warps[i / kWarpSize].barrier;
        --wb.live;
        release_if_complete(wb);
      }
    }
    if (!progressed) {
      threadIdx = dim3(0);
      fail("deadlock: threads wait at barriers that not all live threads of their block/warp reach");
    }
  }
}

template <typename F>
void run_grid(dim3 grid, unsigned nthreads, F& body) {
  TORCH_CHECK(nthreads >= 1 && nthreads <= 1024, "CUDA emulation: block of ", nthreads, " threads");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.y <= 65535 && grid.z <= 65535,
              "CUDA emulation: invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  Block blk;
  Block* saved = g_block;
  g_block = &blk;
  gridDim = grid;
  blockDim = dim3(nthreads);
  auto call = [](void* f) { (*static_cast<F*>(f))(); };
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = dim3(x, y, z);
          run_block(nthreads, (uint64_t(z) * grid.y + y) * grid.x + x, call, &body, blk);
        }
  } catch (...) {
    g_block = saved;
    throw;
  }
  g_block = saved;
}

// Names of the kernels launched so far, without template arguments: the tests check that every
// __global__ function of a file has run (torch.ops.leo_<family>_cuda_emu._launched_kernels).
inline std::set<std::string>& launched_kernels() {
  static std::set<std::string> names;
  return names;
}
inline std::vector<std::string> take_launched_kernels(bool clear) {
  std::vector<std::string> out(launched_kernels().begin(), launched_kernels().end());
  if (clear) launched_kernels().clear();
  return out;
}

template <typename... A>
struct Launcher {
  dim3 grid;
  unsigned threads;
  void (*fn)(A...);
  const char* name;  // the kernel expression as written at the launch
  template <typename... B>
  void operator()(B&&... args) const {
    const std::string n(name);
    launched_kernels().insert(n.substr(0, n.find('<')));
    std::tuple<A...> a{static_cast<A>(args)...};
    auto body = [&] { std::apply(fn, a); };  // every thread gets its own copy of the arguments
    run_grid(grid, threads, body);
  }
};
template <typename... A>
Launcher<A...> make_launcher(dim3 grid, unsigned threads, void (*fn)(A...), const char* name) {
  return {grid, threads, fn, name};
}

inline Warp& my_warp() { return g_block->warps[threadIdx.x / kWarpSize]; }

template <typename T>
T shuffle(unsigned mask, T v, unsigned src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 8 bytes");
  if (mask != 0xffffffffu) fail("warp shuffle with a partial mask (not emulated)");
  Warp& w = my_warp();
  Thread& t = *g_block->current;
  const unsigned lane = threadIdx.x % kWarpSize, buf = t.shuffles & 1u, stamp = ++t.shuffles;
  std::memcpy(&w.value[buf][lane], &v, sizeof(T));
  w.stamp[buf][lane] = stamp;
  arrive_and_wait(w.barrier);
  src_lane %= kWarpSize;
  if (w.stamp[buf][src_lane] != stamp) fail("warp shuffle reads lane " + std::to_string(src_lane) + ", which did not take part");
  T out;
  std::memcpy(&out, &w.value[buf][src_lane], sizeof(T));
  return out;
}

}  // namespace leo_emu

inline void __syncthreads() { leo_emu::arrive_and_wait(leo_emu::g_block->barrier); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) leo_emu::fail("__syncwarp with a partial mask (not emulated)");
  leo_emu::arrive_and_wait(leo_emu::my_warp().barrier);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  if (width != 32) leo_emu::fail("__shfl_sync with width != 32 (not emulated)");
  return leo_emu::shuffle(mask, v, static_cast<unsigned>(src_lane));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) leo_emu::fail("__shfl_xor_sync with width != 32 (not emulated)");
  return leo_emu::shuffle(mask, v, (threadIdx.x % leo_emu::kWarpSize) ^ static_cast<unsigned>(lane_mask));
}

#define LEO_LAUNCH(grid, stream, ...) leo_emu::make_launcher((grid), kThreads, &__VA_ARGS__, #__VA_ARGS__)
