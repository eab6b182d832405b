"""The `leo` command. Each subcommand lives in its own module of this package and
exposes ``register(subparsers)``; user mistakes raise :class:`UserError` and are
reported as one line with a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `leo --help` lists them. A module that is not
# there yet is simply skipped.
SUBCOMMAND_MODULES = (
    "leo.cli.selfcheck",
    "leo.cli.demo",
    "leo.cli.animate",
    "leo.cli.generate",
    "leo.cli.train",
    "leo.cli.train_motion",
    "leo.cli.evaluate",
)


class UserError(Exception):
    """A mistake in the user's input: reported as `leo: error: <message>` with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leo", description="LEO human video generation")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
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
