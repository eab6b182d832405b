"""leo: LEO human video generation (flow-based image animator + latent motion diffusion).

Heavy submodules load on first use: ``leo.Animator``, ``leo.LMDM``, ``leo.LEOPipeline``,
``leo.GaussianDiffusion``.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "Animator": "leo.animator",
    "LMDM": "leo.lmdm",
    "LEOPipeline": "leo.pipeline",
    "GaussianDiffusion": "leo.diffusion",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'leo' has no attribute {name!r}")


__all__ = list(_LAZY)
