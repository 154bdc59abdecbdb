"""The ``hashlearn`` command-line tool.

Each step of the package contributes its commands from a ``commands.py`` module with a
``register(subparsers)`` function. Those modules import only ``argparse`` at top level;
every command imports what it needs (numpy, numba, torch) when it runs, so ``hashlearn
--help`` and light commands start fast.

User errors (:class:`hashlearn.errors.HashlearnError`, and an ``OSError`` that names the path
the file system refused) print one line and exit 2; other exceptions are bugs and keep their
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hashlearn import __version__
from hashlearn.errors import HashlearnError

# Order = order in ``hashlearn --help``. A module missing here is simply skipped, so a
# step can land its commands independently.
COMMAND_MODULES = (
    "hashlearn.data.commands",
    "hashlearn.train.commands",
    "hashlearn.eval.commands",
    "hashlearn.benchmark.commands",
    "hashlearn.index.commands",
    "hashlearn.duplicates.commands",
    "hashlearn.serve.commands",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="hashlearn",
        description="Learning-to-hash image retrieval: datasets, training, binary codes, Hamming search, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"hashlearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except HashlearnError as exc:
        print(f"hashlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hashlearn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `hashlearn data info cifar10 | head`): not an error
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A file system refusal (read-only place, no permission, disk full) names its path: that is
        # the user's environment, not a bug, so it is one line too. OSErrors without a path stay bugs.
        if exc.filename is None:
            raise
        print(f"hashlearn {args.command}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
