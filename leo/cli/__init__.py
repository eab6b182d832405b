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


def prefer_huge_pages() -> bool:
    """Back torch's large CPU allocations (>= 2 MB) with transparent huge pages, unless the user set
    THP_MEM_ALLOC_ENABLE (PyTorch's own switch) already. Without them every fresh allocation of a
    large activation is zero-filled 4 KB page by page on first touch: measured on the 2-core CPU,
    cloning an 8x64x256x256 float32 tensor takes 81 ms with 4 KB pages and 21 ms with huge pages
    (a plain copy into an existing tensor: 13-18 ms). torch reads the switch once, at its first
    allocation, so this only works before torch is imported; returns whether it could apply."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return True


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
    prefer_huge_pages()  # before anything imports torch
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
