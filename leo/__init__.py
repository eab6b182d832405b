"""leo: LEO human video generation (flow-based image animator + latent motion diffusion)."""
__version__ = "0.1.0"
