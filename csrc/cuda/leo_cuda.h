// Shared preamble of csrc/cuda/*.cu: the CUDA headers and the launch macro
//   LEO_LAUNCH(grid, stream, kernel<...>)(args...)  ==  kernel<...><<<grid, kThreads, 0, stream>>>(args...)
// Built with LEO_CUDA_EMULATE (tests/cuda_emu/, never the real build) the same sources compile as
// host C++: blocks run one after another, their threads as cooperating fibers, on CPU tensors.
#pragma once
#ifdef LEO_CUDA_EMULATE
#include "leo_cuda_emulate.h"
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define LEO_LAUNCH(grid, stream, ...) __VA_ARGS__<<<(grid), kThreads, 0, (stream)>>>
#endif
