"""Trainers for leo's models and the infrastructure they share (see :mod:`leo.train.common`)."""
from leo.train.common import (  # noqa: F401  (the public names of leo.train.common)
    CHECKPOINT_FORMAT, CHECKPOINT_NAME, CheckpointError, DistributedContext, RunDir, StopRequest, StreamSampler,
    TrainConfig, TrainLogger, distributed_context, ema_update, gather_rng, load_training_checkpoint, open_run, plot_losses, plot_run, pyplot,
    read_metrics, resolve_device, restore_rng, rng_state, save_training_checkpoint, seed_everything, set_rng_state,
)
