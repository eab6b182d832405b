"""Evaluation of LEO models (``leo evaluate``): FVD/KVD with a user-supplied I3D weights file, and
metrics that need no external weights (FMD in the animator's motion-code space, motion and jitter
relative to real, motion-code residual statistics). Protocol: docs/EVALUATE.md."""
from leo.evaluate.distances import FeatureStats, frechet_distance, frechet_from_features, kernel_distance
from leo.evaluate.generation import code_features, generation_metrics, windows
from leo.evaluate.i3d import I3DDetector, InceptionI3d, load_i3d, random_i3d_state_dict

__all__ = [
    "FeatureStats", "frechet_distance", "frechet_from_features", "kernel_distance", "code_features",
    "generation_metrics", "windows", "I3DDetector", "InceptionI3d", "load_i3d", "random_i3d_state_dict",
]
