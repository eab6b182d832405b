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


def reuse_freed_memory() -> None:
    """Keep freed CPU memory in the `leo` process for reuse (glibc only; a user's MALLOC_*_ or
    GLIBC_TUNABLES settings win).

    By default glibc hands every allocation above 32 MB to mmap and every free back to the kernel,
    which then zero-fills fresh pages on the next allocation: `leo animate` at 24 frames, 256x256,
    1 thread, took 2.2M page faults and 6 s of system time (a quarter of the command); with 1 GiB
    mmap/trim thresholds 0.4M faults and 1.3 s. Commands are processes of their own, so holding the
    peak memory is harmless.

    Not done: PyTorch's THP_MEM_ALLOC_ENABLE=1 (2 MB huge pages for tensors of 2 MB and more). It makes
    one fresh large allocation 4x cheaper (cloning 8x64x256x256 float32: 81 -> 21 ms), but `leo
    animate` at 24 frames took 13.2-13.9 s with it against 11.3-11.9 s without (system time 1 -> 5 s):
    huge pages are zero-filled again on every fresh 2 MB-aligned allocation."""
    if not sys.platform.startswith("linux") or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc malloc.h
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)


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
    reuse_freed_memory()
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
