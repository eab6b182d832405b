// csrc/cuda/warp_cuda.cu compiled as host C++ (see leo_cuda_emulate.h); registers the compiled warp
// ops as torch.ops.leo_warp_cuda_emu._* on CPU tensors.
#define LEO_CUDA_EMULATE 1
#include "../../csrc/cuda/warp_cuda.cu"
