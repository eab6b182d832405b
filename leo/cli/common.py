"""What every `leo` command shares: one flag vocabulary and the helpers behind it.

Flags (the same spelling and meaning in every command that has them):
  --device   cpu, cuda or cuda:N; default: cuda when available, else cpu
  --dtype    float32 | bfloat16 | float16: the compute dtype of inference, run under
             torch.autocast (the weights stay float32; float32 = autocast off)
  --no-progress  no progress bar
  --animator the animator checkpoint (LIA .pt, a state_dict, or leo .safetensors)

Old spellings still parse for one release, with a one-line notice on stderr (DEPRECATED).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import sys

import torch

from leo.cli import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# command -> {old flag: new flag}. Rewritten before parsing (see rewrite_deprecated).
DEPRECATED = {
    "animate": {"--checkpoint": "--animator", "--quiet": "--no-progress"},
    "manipulate": {"--checkpoint": "--animator", "--quiet": "--no-progress"},
    "train-lmdm": {"--batch-size": "--batch"},
    "train-first-frame": {"--batch-size": "--batch"},
}


# --------------------------------------------------------------------------- flags
def add_device(p):
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")


def add_dtype(p, note: str = ""):
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="compute dtype under torch.autocast; weights stay float32 (default: float32, autocast off)"
                   + note)


def add_progress(p):
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_animator(p, help="animator checkpoint (LIA .pt, a state_dict, or leo .safetensors)"):
    p.add_argument("--animator", required=True, help=help)


def rewrite_deprecated(argv: list[str]) -> list[str]:
    """Replace the old spelling of a flag by the new one, with a notice on stderr per old flag."""
    command = next((a for a in argv if not a.startswith("-")), None)
    table = DEPRECATED.get(command)
    if not table:
        return argv
    out, warned = [], set()
    for a in argv:
        name, eq, value = a.partition("=")
        if name in table:
            if name not in warned:
                print(f"leo: warning: {command} {name} is deprecated, use {table[name]} "
                      "(the old spelling goes in the next release)", file=sys.stderr)
                warned.add(name)
            a = table[name] + eq + value
        out.append(a)
    return out


# --------------------------------------------------------------------------- device, dtype, progress
def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """None/"auto" -> cuda when available, else cpu (leo.train.common.resolve_device, the one rule);
    anything else is checked as given, with errors that name ``flag``."""
    if name is None or name == "auto":
        from leo.train.common import resolve_device as auto_device

        return auto_device(name)
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag}: unknown device {name!r} (cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{flag} {name} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"{flag}: unsupported device {name!r} (cpu, cuda or cuda:N)")
    return dev


def precision(device: torch.device, dtype_name: str):
    """The context every inference command runs in: autocast to ``dtype_name`` (off for float32).

    The autocast weight-cast cache is off so that CUDA-graph capture (the LMDM sampler) stays valid.
    """
    dtype = DTYPES[dtype_name]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def run_outside_autocast(module: torch.nn.Module) -> torch.nn.Module:
    """Make ``module`` run in its own (float32) dtype inside a :func:`precision` block.

    The LMDM's fused attention block takes one dtype for all its inputs, which autocast's mix
    of float32 and low-precision activations breaks; it is small next to the animator, so it
    samples in float32 while the animator renders in the requested dtype.
    """
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for kind in ("cpu", "cuda"):
                if torch.is_autocast_enabled(kind):
                    stack.enter_context(torch.autocast(kind, enabled=False))
            return inner(*args, **kwargs)

    module.forward = forward
    return module


def progress(total, enabled: bool, desc: str, unit: str = "frame"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)


def positive(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value}")


def finite(name: str, value, minimum: float = 0.0, strict: bool = True, allow_none: bool = False):
    """A float flag: a finite number above ``minimum`` (at least it with ``strict=False``); NaN and
    infinity are refused with a UserError naming the flag."""
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or not (value > minimum if strict else value >= minimum):
        raise UserError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_image_arg(path, size: int, flag: str):
    """The image at ``path`` (option ``flag``) as a (3, size, size) tensor in [-1, 1]; a missing or
    unreadable file is a UserError naming the option."""
    from leo.media import MediaError, read_image

    try:
        return read_image(path, size)
    except (MediaError, OSError) as exc:
        raise UserError(f"{flag}: {first_line(exc)}") from None


# --------------------------------------------------------------------------- model loading
def load_animator(path, device, kernels: str = "auto", size: int | None = None, flag: str = "--animator"):
    """The animator from any accepted checkpoint, on ``device``, in eval mode."""
    from leo.animator import Animator

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{flag}: checkpoint not found: {path}")
    try:
        model = Animator.from_checkpoint(path, map_location=device, kernels=kernels)
    except (ValueError, KeyError, RuntimeError) as exc:  # CheckpointError is a ValueError
        raise UserError(f"{flag}: wrong checkpoint: {first_line(exc)}") from None
    except OSError as exc:
        raise UserError(f"{flag}: cannot read checkpoint {path}: {first_line(exc)}") from None
    if size is not None and size != model.size:
        raise UserError(f"--size {size} does not match the checkpoint's image size {model.size}")
    return model.eval()


def load_lmdm(path, device, kernels: str = "auto", flag: str = "--lmdm"):
    from leo.lmdm import LMDM

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{flag}: checkpoint not found: {path}")
    try:
        lmdm = LMDM.from_checkpoint(path, map_location="cpu", kernels=kernels)
    except (ValueError, OSError) as exc:
        raise UserError(f"{flag}: {first_line(exc)}") from None
    return lmdm.to(device).eval()


def load_first_frame(path, device, size: int | None = None, flag: str = "--first-frame-model", **kwargs):
    """A first-frame generator ``g(n, seed=None) -> (n, 3, size, size)`` from its checkpoint."""
    from leo.first_frame import load_first_frame_generator

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{flag}: checkpoint not found: {path}")
    try:
        return load_first_frame_generator(path, device=device, size=size, **kwargs)
    except (ValueError, OSError, RuntimeError) as exc:
        raise UserError(f"{flag}: {first_line(exc)}") from None


def check_dims(animator, lmdm, flag: str = "--lmdm"):
    a_dim = animator.config.get("motion_dim") if isinstance(getattr(animator, "config", None), dict) else None
    if a_dim is not None and a_dim != lmdm.motion_dim:
        raise UserError(f"{flag}: motion_dim {lmdm.motion_dim} does not match the animator's {a_dim}")


# --------------------------------------------------------------------------- leo --version
def version_text() -> str:
    import leo
    import leo_kernels
    from leo_kernels import _backend

    lines = [f"leo {leo.__version__}", f"torch {torch.__version__}"
             + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU build)")]
    if _backend.extension_loaded():
        omp = _backend._C.with_openmp()
        ext = f"built{', with CUDA kernels' if _backend.extension_has_cuda() else ', no CUDA kernels'}" \
              f"{', OpenMP' if omp else ', no OpenMP'}"
    else:
        ext = f"not built ({first_line(_backend.extension_error())})"
    lines.append(f"leo_kernels extension: {ext}")
    for kind in ("cpu", "cuda"):
        note = " (no CUDA device visible)" if kind == "cuda" and not torch.cuda.is_available() else ""
        lines.append(f"leo_kernels backends for {kind} tensors: {', '.join(leo_kernels.available_backends(kind))}{note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- diffusion trainers
def int_list(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_training_args(p, default_steps: int, optimizer: str, out_help: str, out_metavar: str | None = None):
    """The flags of every trainer (leo.train.common.TrainConfig's loop fields): --out, --steps,
    --max-minutes, --lr, --save-every, --log-every, --seed, --resume, --device and --no-progress;
    :func:`training_kwargs` reads them."""
    p.add_argument("--out", required=True, metavar=out_metavar, help=out_help)
    p.add_argument("--steps", type=int, default=default_steps, help=f"total optimizer steps (default {default_steps})")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="wall-clock budget: end the run after the step that passes M minutes, with its weights "
                        "exported (--resume continues toward --steps; default: no budget)")
    p.add_argument("--lr", type=float, default=2e-4, help=f"{optimizer} learning rate (default 2e-4)")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint interval in steps (default 500)")
    p.add_argument("--log-every", type=int, default=10, help="metrics.csv interval in steps (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help=f"continue {out_metavar or 'OUT'}/checkpoint.pt when it exists")
    add_device(p)
    add_progress(p)


def training_kwargs(args) -> dict:
    """The TrainConfig fields given by :func:`add_training_args`' flags (but ``device``, whose
    default each trainer spells its own way)."""
    from leo.train.common import check_max_minutes

    try:
        check_max_minutes(args.max_minutes)
    except ValueError as exc:
        raise UserError(f"--max-minutes: {exc}") from None
    finite("--lr", args.lr)
    return dict(steps=args.steps, max_minutes=args.max_minutes, lr=args.lr, save_every=args.save_every,
                log_every=args.log_every, seed=args.seed, resume=args.resume, progress=not args.no_progress)


def add_diffusion_training_args(p, default_steps):
    """The flags `train-lmdm` and `train-first-frame` share."""
    p.add_argument("--data", required=True, help="folder of videos (mp4/mov/avi/webm) and/or frame folders (png/jpg), or one video file")
    add_training_args(p, default_steps, "AdamW", "output folder (weights, checkpoint.pt, metrics.csv)")
    p.add_argument("--batch", type=int, default=16, help="batch per process (default 16)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the exported weights (default 0.999)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--objective", choices=("eps", "v"), default=None,
                   help="diffusion prediction target (default: eps for first-frame, v for LMDM)")


@contextlib.contextmanager
def data_errors(flag: str = "--data"):
    """A leo.data.videos.DataError raised inside (the data source is missing, holds no clip, or
    none of its clips can be read) becomes a one-line UserError naming ``flag``."""
    from leo.data.videos import DataError

    try:
        yield
    except DataError as exc:
        raise UserError(f"{flag}: {exc}") from None


def check_data_arg(path, flag: str = "--data") -> None:
    """A training data source (a folder of videos or frame folders, or one video file) holds at
    least one clip (leo.data.videos.find_clips decides); else a UserError naming ``flag``."""
    from leo.data.videos import require_clips

    with data_errors(flag):
        require_clips(path)


def check_diffusion_training_args(args):
    for name in ("steps", "batch", "save_every", "log_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 <= args.ema_decay < 1:  # also refuses NaN
        raise UserError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    resolve_device(args.device)


def run_diffusion_trainer(train, cfg) -> int:
    """Run a diffusion trainer (train-lmdm, train-first-frame): bad input becomes a one-line error;
    returns 0 when training finished, 130 when a signal stopped it (the checkpoint is saved)."""
    check_data_arg(cfg.data)  # after every flag: those are cheaper to check than a folder
    try:
        with data_errors():  # the clips exist but none can be read
            summary = train(cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    # Under torchrun only rank 0 writes the weights, so only it says so.
    if os.environ.get("RANK", "0") == "0":
        if summary.get("finished", True):
            budget = ", --max-minutes reached" if summary.get("ended_by") == "max_minutes" else ""
            print(f"wrote {summary['weights']} (step {summary['step']}{budget})")
        else:
            print(f"stopped at step {summary['step']}; continue with --resume")
    return 0 if summary.get("finished", True) else 130
