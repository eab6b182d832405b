"""Trainers for leo's models and the infrastructure they share (see :mod:`leo.train.common`)."""
from leo.train.common import (  # noqa: F401
    CheckpointError,
    DistributedContext,
    StreamSampler,
    TrainLogger,
    load_training_checkpoint,
    plot_losses,
    rng_state,
    save_training_checkpoint,
    seed_everything,
    set_rng_state,
)
