// Schemas of the compiled temporal-attention ops (implemented for CUDA in
// csrc/cuda/attention_cuda.cu). On CPU the Python custom ops use an ATen composite
// instead, so there is no CPU kernel; the schema lives here because this file always builds.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(leo_kernels, m) {
  // q, k, v (B, heads, L, d); returns (out (B, heads, L, d), lse (B, heads, L) float32).
  m.def("_temporal_attention_fwd(Tensor q, Tensor k, Tensor v, bool rope) -> (Tensor, Tensor)");
  // returns (grad_q, grad_k, grad_v), contiguous, in q's dtype.
  m.def(
      "_temporal_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "bool rope) -> (Tensor, Tensor, Tensor)");
}
