"""leo_kernels: fused kernels for LEO (flow warping, StyleGAN2 ops, temporal attention).

Every op is a drop-in function with a ``backend=None`` keyword; see
:func:`available_backends` and :func:`last_backend`.
"""
from leo_kernels._backend import (  # noqa: F401
    BACKENDS,
    available_backends,
    extension_error,
    extension_has_cuda,
    extension_loaded,
    last_backend,
)

# Op families, each in its own module (public names as in docs/OPS.md).
from leo_kernels.warp import compose_flow, grid_sample, warp_inpaint  # noqa: F401,E402
from leo_kernels.stylegan import bias_act, upfirdn2d  # noqa: F401,E402
from leo_kernels.attention import temporal_attention, temporal_attention_block  # noqa: F401,E402

__all__ = [
    "BACKENDS",
    "available_backends",
    "last_backend",
    "extension_loaded",
    "extension_has_cuda",
    "extension_error",
    "grid_sample",
    "compose_flow",
    "warp_inpaint",
    "upfirdn2d",
    "bias_act",
    "temporal_attention",
    "temporal_attention_block",
]
