"""Shared training infrastructure for every leo trainer.

- seeding and RNG state capture/restore (python, numpy, torch CPU and CUDA);
- atomic training checkpoints (temp file + fsync + rename, so a killed run never leaves a
  corrupt file) with a clear error when a file is corrupt;
- :class:`DistributedContext`: the same code runs as one process or under ``torchrun``;
- :func:`open_run` / :class:`RunDir`: the one resume rule (``out/checkpoint.pt``);
- :func:`gather_rng` / :func:`restore_rng`: every rank's RNG state in the checkpoint;
- :class:`StopRequest`: SIGINT/SIGTERM ask for a clean stop, agreed on by all ranks;
- :class:`StreamSampler`: an infinite, resumable stream of sample ids, split across ranks;
- :class:`TrainLogger`: tqdm progress bar with losses and throughput plus ``metrics.csv``
  (main rank only; :meth:`DistributedContext.print` for plain messages);
- :func:`plot_losses`: a PNG of the curves in a ``metrics.csv``; :func:`plot_run`: the ``loss.png``
  every trainer writes at the end of a run;
- :class:`TrainConfig`: the loop settings every trainer's config shares.

Every trainer (stage 1, LMDM, first-frame) is built from these; see docs/INTERNALS.md,
"Training loop structure".
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import math
import os
import pathlib
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import InitVar, dataclass, field, fields
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from leo.checkpoint_io import atomic_write

CHECKPOINT_FORMAT = "leo-training-checkpoint-1"


from leo.checkpoint_io import CheckpointError  # noqa: E402,F401  (the one class; importable from here)


# --------------------------------------------------------------------------- config


# The old spellings of fields the trainers once named differently (stage 1 said out/batch/quiet, the
# diffusion trainers out_dir/batch_size/progress): the constructors take them for one release, with
# a DeprecationWarning, and TrainConfig.from_dict maps them in saved configs (old checkpoints).
OLD_FIELD_NAMES = {"out_dir": "out", "batch_size": "batch", "quiet": "progress"}


def _from_old(old: str, value):
    return (not value) if old == "quiet" else value  # quiet=True is progress=False


def check_positive_finite(name: str, value) -> None:
    """``value`` (a learning rate) is a positive, finite number; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")


def check_max_minutes(value) -> None:
    """``max_minutes`` (``--max-minutes``) is None or a positive, finite number of minutes."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 < value < float("inf")):
        raise ValueError(f"max_minutes must be a positive number of minutes or None, got {value!r}")


@dataclass(kw_only=True)
class TrainConfig:
    """The loop settings every trainer's config shares (Stage1Config, the diffusion trainers').

    Keyword-only, so a trainer's own required fields (``data``, ``out``...) stay its first
    positional ones. A trainer that wants another default re-declares the field with
    ``field(default=..., kw_only=True)``. Every trainer spells the run folder ``out``, the batch
    per process ``batch`` and the progress switch ``progress`` (the CLI's ``--no-progress``); the
    old keywords ``out_dir=``, ``batch_size=`` and ``quiet=`` still work for one release
    (DeprecationWarning).
    """

    steps: int = 1000
    max_minutes: float | None = None     # wall-clock budget of this invocation: at the first step boundary past
                                         # it the run ends early as if --steps were reached (exported), and
                                         # --resume continues toward steps; None: no budget
    lr: float = 2e-4
    save_every: int = 500                # checkpoint interval in steps
    log_every: int = 10                  # metrics.csv interval in steps
    seed: int = 0
    resume: bool = False                 # continue out/checkpoint.pt when it exists (open_run)
    device: str | None = None            # None or "auto": cuda when available (resolve_device)
    amp: bool = False                    # bf16 autocast (CUDA only)
    progress: bool = True                # progress bar and messages on stderr (main rank)
    extra: dict = field(default_factory=dict)  # stored in the checkpoint's config
    # deprecated keywords (one release): the old spellings of out, batch and progress
    out_dir: InitVar[str | None] = None
    batch_size: InitVar[int | None] = None
    quiet: InitVar[bool | None] = None

    def __post_init__(self, out_dir, batch_size, quiet):
        names = {f.name for f in fields(self)}
        for old, value in (("out_dir", out_dir), ("batch_size", batch_size), ("quiet", quiet)):
            if value is None:
                continue
            new = OLD_FIELD_NAMES[old]
            if new not in names:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {old!r}")
            warnings.warn(f"{type(self).__name__}({old}=) is deprecated; use {new}="
                          + (" (progress=not quiet)" if old == "quiet" else ""), DeprecationWarning, stacklevel=3)
            setattr(self, new, _from_old(old, value))
        if "out" in names and self.out is None:
            raise TypeError(f"{type(self).__name__}() missing required argument: 'out'")
        check_max_minutes(self.max_minutes)
        check_positive_finite("lr", self.lr)

    @classmethod
    def current_keys(cls, d: dict) -> dict:
        """``d`` (a saved config) with old field spellings mapped and keys that are not fields dropped."""
        d = dict(d)
        for old, new in OLD_FIELD_NAMES.items():
            if old in d:
                value = d.pop(old)
                d.setdefault(new, _from_old(old, value))
        names = {f.name for f in fields(cls) if f.init}
        return {k: v for k, v in d.items() if k in names}

    @classmethod
    def from_dict(cls, d: dict):
        """The config saved as ``d`` (a checkpoint's ``config``, old spellings included)."""
        return cls(**cls.current_keys(d))


# --------------------------------------------------------------------------- optimizer


def adam(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0, decoupled: bool = False) -> torch.optim.Optimizer:
    """Adam (AdamW with ``decoupled``) in its fused form: one kernel over all parameters instead of
    ~8 small ops per parameter tensor (on CPU the default is that per-tensor loop). Same update
    rule; at the demo's stage-1 settings (G + D, 139 tensors) one update takes 2.1 ms instead of
    6.4 ms on 1 CPU thread, about 2% of a training step."""
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)


# --------------------------------------------------------------------------- seeding / RNG


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """The global RNG states, as plain types and tensors (safe for ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states captured by :func:`rng_state`."""
    if not isinstance(state, dict) or "torch" not in state:
        raise ValueError("state must be a dict returned by rng_state()")
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        keys = np.asarray(n["keys"].numpy() if torch.is_tensor(n["keys"]) else n["keys"], dtype=np.uint32)
        np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# --------------------------------------------------------------------------- checkpoints

_PLAIN = (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def _plain(obj: Any, where: str) -> Any:
    """Convert ``obj`` to types ``torch.load(weights_only=True)`` accepts, or raise naming the key."""
    if torch.is_tensor(obj) or isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(out) if isinstance(obj, tuple) else out
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"payload{where} has type {type(obj).__name__}, which a training checkpoint "
                    "cannot hold (use tensors, numbers, strings, lists and dicts)")


def save_training_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (a dict of state_dicts, tensors and plain values) to ``path`` atomically.

    The file is written to a temporary name, fsynced and renamed over ``path``: the previous
    checkpoint stays intact until the new one is complete.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    blob = {"format": CHECKPOINT_FORMAT, "payload": _plain(payload, "")}
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_training_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_training_checkpoint`.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` (a ValueError) for
    a corrupt, truncated or foreign one.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip errors, EOF, unpickling errors all mean the same to the user
        from leo.checkpoint_io import unreadable_reason

        raise CheckpointError(f"training checkpoint {path} is corrupt or unreadable ({unreadable_reason(exc)}); "
                              "accepted: a checkpoint.pt written by a leo trainer") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a leo training checkpoint")
    return blob["payload"]


# --------------------------------------------------------------------------- distributed


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> cuda when available, else cpu; otherwise checked as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return dev


class DistributedContext:
    """One process, or one rank of a ``torchrun`` job (read from its RANK/WORLD_SIZE/LOCAL_RANK env).

    Under torchrun the process group uses nccl on CUDA and gloo on CPU, and each rank takes the
    GPU ``cuda:LOCAL_RANK``. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, device: str | torch.device | None = None, timeout_s: float = 1800.0):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank if self.world_size > 1 else torch.cuda.current_device())
        self.device = dev
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self._owns_group = False
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            self._owns_group = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, **ddp_kwargs) -> torch.nn.Module:
        """DistributedDataParallel(model) when distributed, else ``model`` itself."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids, **ddp_kwargs)

    @staticmethod
    def unwrap(model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "module", model)

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``t`` over ranks (returns ``t`` unchanged in one process)."""
        if not self.distributed:
            return t
        t = t.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def print(self, *args, file=None, **kwargs) -> None:
        """``print`` on the main rank only (stderr by default), so a message appears once per job."""
        if self.is_main:
            print(*args, file=file if file is not None else sys.stderr, **kwargs)

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------- resume, RNG, stopping

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class RunDir:
    """A run folder and the checkpoint it resumes from (``payload`` is None for a fresh run)."""

    out: pathlib.Path
    checkpoint: pathlib.Path
    payload: dict | None = None

    @property
    def start_step(self) -> int:
        return int(self.payload["step"]) if self.payload is not None else 0


def open_run(out: str | os.PathLike, resume: bool, *, overwrite: bool = False,
             name: str = CHECKPOINT_NAME) -> RunDir:
    """The resume rule every trainer follows.

    ``resume=True``: load ``out/checkpoint.pt`` when it exists (a missing one starts a fresh run).
    ``resume=False`` with an existing checkpoint: :class:`FileExistsError`, unless ``overwrite``
    (then the old run is replaced by the new one's checkpoints). Every rank reads the file.
    """
    out = pathlib.Path(out)
    path = out / name
    if path.exists():
        if resume:
            return RunDir(out, path, load_training_checkpoint(path))
        if not overwrite:
            raise FileExistsError(f"{out} already holds a training run ({path}); pass --resume to continue it "
                                  "or choose another output folder")
    return RunDir(out, path, None)


def gather_rng(ctx: "DistributedContext") -> list:
    """Every rank's :func:`rng_state`, in rank order (a collective under torchrun)."""
    state = rng_state()
    if not ctx.distributed:
        return [state]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, state)
    return out


def restore_rng(states, ctx: "DistributedContext") -> None:
    """Restore this rank's state from :func:`gather_rng`'s list (rank 0's when the run had fewer
    ranks; a single state dict, as older checkpoints hold, is used by every rank)."""
    if states is None:
        return
    if isinstance(states, dict):
        set_rng_state(states)
        return
    set_rng_state(states[ctx.rank] if ctx.rank < len(states) else states[0])


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (``kill``, cluster preemption) ask for a clean stop, and an
    optional wall-clock ``deadline`` (``time.monotonic()`` seconds) ends the run early.

    Use as a context manager around the training loop; it installs the handlers (main thread
    only) and restores the previous ones on exit. A second signal raises KeyboardInterrupt
    (abort without saving). Call :meth:`should_stop` on every rank at every step boundary: it
    all-reduces the flags (MAX) so a signal that reached any one rank, or the deadline that any
    one rank's clock passed, stops all of them after the same step, and the collectives stay
    matched. After it returned True, :attr:`out_of_time` says whether the deadline (rather than a
    signal) was the reason.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, deadline: float | None = None, max_minutes: float | None = None):
        self.requested = False
        self.signum: int | None = None
        self.deadline, self.max_minutes = deadline, max_minutes
        self.stopped = self.out_of_time = False
        self._old: dict = {}

    @classmethod
    def for_budget(cls, max_minutes: float | None) -> "StopRequest":
        """A StopRequest whose deadline is ``max_minutes`` from now (None: no deadline)."""
        return cls(None if max_minutes is None else time.monotonic() + 60.0 * max_minutes, max_minutes)

    def ended_by(self, step: int, steps: int) -> str:
        """Why a run that is at ``step`` of ``steps`` ended: "steps", "max_minutes" or "signal"."""
        return "steps" if step >= steps else "max_minutes" if self.out_of_time else "signal"

    def end_message(self, step: int, steps: int) -> str | None:
        """What the trainer says when :meth:`should_stop` stopped it at ``step`` (None: it did not,
        or the run reached ``steps`` anyway)."""
        if not self.stopped or (self.out_of_time and step >= steps):
            return None
        if self.out_of_time:
            return (f"time budget of {self.max_minutes:g} min reached at step {step} of {steps}: "
                    "the run ends here (exported); --resume continues toward --steps")
        return f"stopped at step {step}; checkpoint saved, continue with --resume"

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        return False

    def should_stop(self, ctx: "DistributedContext | None" = None) -> bool:
        """True when a stop was requested, or the deadline passed, on any rank (a collective under
        torchrun). A signal wins over the deadline: that run stops unfinished."""
        late = self.deadline is not None and time.monotonic() >= self.deadline
        signalled = self.requested
        if ctx is not None and ctx.distributed:
            flags = torch.tensor([float(signalled), float(late)], device=ctx.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            signalled, late = bool(flags[0].item()), bool(flags[1].item())
        self.out_of_time = late and not signalled
        self.stopped = signalled or late
        return self.stopped


@contextlib.contextmanager
def distributed_context(ctx: "DistributedContext | None", device) -> Iterator["DistributedContext"]:
    """``ctx`` itself, or a new :class:`DistributedContext` on ``device`` that is closed on exit
    (trainers accept a caller's context and otherwise own one)."""
    if ctx is not None:
        yield ctx
    else:
        with DistributedContext(device=device) as own:
            yield own


class StreamSampler(torch.utils.data.Sampler):
    """Infinite stream of sample ids ``start, start+1, ...`` (this rank's share of them).

    Datasets derive all their randomness from the id (see leo.data), so a run resumed at
    ``start = samples consumed so far`` sees exactly the batches an uninterrupted run would,
    whatever the number of DataLoader workers. Rank r of w takes ids ``i*w + r``.
    """

    def __init__(self, start: int = 0, rank: int = 0, world_size: int = 1):
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start, self.rank, self.world_size = int(start), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i * self.world_size + self.rank
            i += 1

    def __len__(self) -> int:  # DataLoader asks only for progress estimates
        return sys.maxsize


# --------------------------------------------------------------------------- logging


def _fmt(v: float) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class TrainLogger:
    """Progress bar (tqdm) with losses and throughput, plus a ``metrics.csv`` in ``out_dir``.

    ``log(step, metrics)`` appends one row (columns ``step``, ``time`` then the metric names;
    a new metric name rewrites the file with the wider header). When resuming at ``start_step``,
    rows after it (from the run that was killed) are dropped so the CSV stays one consistent
    history. Only the main rank should pass ``enabled=True``. ``progress=False`` (a config's
    ``progress``): no bar and no messages, the CSV is still written.
    """

    def __init__(self, out_dir: str | os.PathLike, total_steps: int | None = None, start_step: int = 0,
                 enabled: bool = True, desc: str = "train", samples_per_step: int | None = None,
                 file=None, progress: bool = True):
        self.out_dir = pathlib.Path(out_dir)
        self.csv_path = self.out_dir / "metrics.csv"
        self.enabled = enabled
        self.progress = progress
        self.samples_per_step = samples_per_step
        self.start_step = start_step
        self._last_step, self._last_time = start_step, time.perf_counter()
        self._t0 = time.time()
        self._fields: list[str] = []
        self._rows: list[dict] = []
        self.bar = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                self._fields = list(reader.fieldnames or [])
                self._rows = [r for r in reader if r.get("step") and int(float(r["step"])) <= start_step]
            if self._rows and self._rows[-1].get("time"):  # keep the time column cumulative
                self._t0 -= float(self._rows[-1]["time"])
            self._rewrite()
        if not progress:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True,
                        file=file if file is not None else sys.stderr, smoothing=0.1)

    def _rewrite(self) -> None:
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self._fields)
                w.writeheader()
                w.writerows(self._rows)

        atomic_write(self.csv_path, write)

    def log(self, step: int, metrics: dict, to_csv: bool = True) -> None:
        """Record ``metrics`` (floats or 0-d tensors) at ``step``; updates the bar's postfix."""
        if not self.enabled:
            return
        vals = {k: (float(v.detach().float().item()) if torch.is_tensor(v) else v) for k, v in metrics.items()}
        now = time.perf_counter()
        dt = now - self._last_time
        if step > self._last_step and dt > 0:
            vals.setdefault("steps_per_s", (step - self._last_step) / dt)
            if self.samples_per_step:
                vals.setdefault("samples_per_s", vals["steps_per_s"] * self.samples_per_step)
        if self.bar is not None:
            self.bar.update(max(0, step - self.bar.n))
            self.bar.set_postfix({k: _fmt(v) for k, v in vals.items()}, refresh=False)
        self._last_step, self._last_time = step, now
        if not to_csv:
            return
        row = {"step": step, "time": round(time.time() - self._t0, 3), **vals}
        self._rows.append(row)
        new = [k for k in row if k not in self._fields]
        if new or not self.csv_path.exists():
            self._fields += new
            self._rewrite()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._fields).writerow(row)

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled or not self.progress:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.bar.fp)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_metrics(csv_path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{column: [(step, value), ...]}`` for every numeric column of a ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"]))
            for k, v in row.items():
                if k in ("step", "time") or v in (None, ""):
                    continue
                try:
                    x = float(v)
                except ValueError:
                    continue
                if math.isfinite(x):
                    series.setdefault(k, []).append((step, x))
    return series


_PLOT_NOTICE_SHOWN = False


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed: plots are
    then skipped with a one-line notice (once per process) instead of failing after training."""
    global _PLOT_NOTICE_SHOWN
    try:
        import matplotlib
    except ImportError:
        if not _PLOT_NOTICE_SHOWN:
            print("leo: matplotlib is not installed; skipping loss plots (pip install matplotlib)", file=sys.stderr)
            _PLOT_NOTICE_SHOWN = True
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# held-out numbers that tell whether stage 1 learned motion (gain over copying, motion ratio)
HELD_OUT_KEYS = ("eval_gain", "eval_motion_ratio", "eval_l1", "eval_copy_l1")


def _default_panels(series: dict, several: bool) -> list:
    curves = [k for k in series if not k.endswith("_per_s") and k != "lr"]
    if not several:  # one run: a panel per column
        return curves
    # several runs: per run, its losses in one panel and its held-out evaluation in another
    losses = tuple(k for k in curves if not k.startswith("eval_") and k != "grad_norm")
    return [p for p in (losses, tuple(k for k in HELD_OUT_KEYS if k in series)) if p]


def _panel_title(run: str | None, panel) -> str:
    if isinstance(panel, str):
        what = panel
    elif panel[0].startswith("eval_"):
        what = "held-out eval"
    else:
        what = None if run is not None else ", ".join(panel)  # a run's losses panel is named after the run
    return what if run is None else run if what is None else f"{run}: {what}"


def plot_losses(csv_path, png_path: str | os.PathLike, keys: list | None = None, title: str | None = None) -> bool:
    """Plot the curves of a ``metrics.csv`` into ``png_path``; the one loss-plot function.

    ``csv_path``: one run's ``metrics.csv``, or ``{run name: metrics.csv}`` for several runs in one
    figure (runs whose file does not exist are left out). ``keys``: the panels, each a column name
    or a tuple of names drawn together with a legend. Default: one run, a panel per column but
    throughput and lr; several runs, per run a panel of its losses and one of its held-out
    evaluation (:data:`HELD_OUT_KEYS`). Returns False (nothing written) when matplotlib is missing;
    raises ValueError when there is nothing to plot.
    """
    plt = pyplot()
    if plt is None:
        return False
    several = isinstance(csv_path, dict)
    runs = {name: path for name, path in csv_path.items() if os.path.exists(path)} if several else {None: csv_path}
    panels = []  # (title, {label: [(step, value), ...]})
    for name, path in runs.items():
        series = {k: v for k, v in read_metrics(path).items() if v}
        for panel in (keys if keys is not None else _default_panels(series, several)):
            group = (panel,) if isinstance(panel, str) else tuple(panel)
            curves = {k: series[k] for k in group if k in series}
            if not curves:
                continue
            panels.append((_panel_title(name, panel), curves))
    if not panels:
        raise ValueError(f"{csv_path} has no numeric columns to plot")
    n = len(panels)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels):
        low = high = None
        for i, (k, pts) in enumerate(curves.items()):
            steps, vals = zip(*pts)
            ax.plot(steps, vals, lw=1.0, label=k, color=f"C{i}", marker="o" if len(vals) < 5 else None)
            if len(curves) == 1 and len(vals) >= 20:  # a moving average makes noisy losses readable
                w = max(2, len(vals) // 20)
                sm = np.convolve(vals, np.ones(w) / w, mode="valid")
                ax.plot(steps[w - 1:], sm, lw=1.5, color="C1")
            low = min(vals) if low is None else min(low, min(vals))
            high = max(vals) if high is None else max(high, max(vals))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if low > 0 and high / max(low, 1e-12) > 20:
            ax.set_yscale("log")
        if len(curves) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = os.fspath(png_path)
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return True


def plot_run(out_dir: str | os.PathLike) -> pathlib.Path | None:
    """``out_dir/loss.png`` from ``out_dir/metrics.csv``: what every trainer does at the end of a run
    (main rank). None when nothing was written: no metrics yet, or matplotlib is missing (then a
    one-line notice, see :func:`pyplot`)."""
    out_dir = pathlib.Path(out_dir)
    csv_path, png_path = out_dir / "metrics.csv", out_dir / "loss.png"
    if not csv_path.exists():
        return None
    try:
        return png_path if plot_losses(csv_path, png_path) else None
    except ValueError:  # no numeric column yet
        return None


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """Move ``ema``'s parameters toward ``model``'s (buffers are copied)."""
    # Warm-up: short runs (demo, tests) still get an EMA that follows the model.
    d = min(decay, (1.0 + step) / (10.0 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - d)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
