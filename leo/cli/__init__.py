"""The `leo` command. Each subcommand module of this package is named after the commands it
holds and exposes ``register(subparsers)``; the flags they share (--device, --dtype,
--no-progress, --animator) and the model loaders live in :mod:`leo.cli.common`. User mistakes
raise :class:`UserError` and are reported as one line with a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules, in the order `leo --help` lists them.
SUBCOMMAND_MODULES = (
    "leo.cli.selfcheck",         # selfcheck
    "leo.cli.demo",              # demo
    "leo.cli.animate",           # animate, manipulate, init-animator
    "leo.cli.generate",          # generate, edit, init-lmdm
    "leo.cli.train_animator",    # train-animator, make-synthetic
    "leo.cli.train_lmdm",        # train-lmdm
    "leo.cli.train_first_frame", # train-first-frame
    "leo.cli.evaluate",          # evaluate reconstruction / generation
)


def tune_cpu_memory() -> bool:
    """How the `leo` command (and the benchmarks) allocate large CPU tensors; a user's own settings win.

    - Transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE=1): tensors of 2 MB and more are backed
      by 2 MB pages instead of being zero-filled 4 KB page by page on first touch. torch reads the
      switch once, at its first allocation, so it applies only before torch is imported.
    - Freed memory stays in the process (glibc's mmap and trim thresholds at 1 GiB): by default glibc
      hands every allocation above 32 MB to mmap and every free back to the kernel, which zero-fills
      fresh pages on the next allocation. Skipped when MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_
      or GLIBC_TUNABLES is set; glibc only.
    Measured on the 2-core CPU: cloning an 8x64x256x256 float32 tensor takes 75-81 ms by default and
    19-21 ms with huge pages (a copy into an existing tensor: 8-10 ms). The thresholds were measured on
    `leo animate` (24 frames at 256, 1 thread: 2.2M page faults and 6 s of system time -> 0.4M and
    1.3 s); in small allocate/free loops glibc does not always reuse the block (memalign padding).
    Commands are processes of their own, so holding the peak memory is harmless.
    Returns whether huge pages could still be switched on (torch not imported yet)."""
    fresh = "torch" not in sys.modules
    if fresh:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if sys.platform.startswith("linux") and not any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        try:
            import ctypes

            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return fresh
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc malloc.h
        mallopt(m_mmap_threshold, 1 << 30)
        mallopt(m_trim_threshold, 1 << 30)
    return fresh


class UserError(Exception):
    """A mistake in the user's input: reported as `leo: error: <message>` with exit code 2."""


class _Version(argparse.Action):
    """``leo --version``: computed only when asked (it imports leo_kernels)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from leo.cli.common import version_text

        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leo", description="LEO human video generation")
    parser.add_argument("--version", action=_Version,
                        help="print the leo and torch versions and the leo_kernels backends built, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    tune_cpu_memory()  # before anything imports torch
    from leo.cli.common import rewrite_deprecated

    parser = build_parser()
    argv = rewrite_deprecated(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"leo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
