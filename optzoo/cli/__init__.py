"""The ``optzoo`` command line (also ``python -m optzoo``).

    optzoo list [--json]                  registered optimizers, hyperparameters, defaults
    optzoo compare [--tune] [options]     train small models (digits, sparse logistic regression), ranked + report
    optzoo trajectories [options]         optimizer paths on 2-D test functions (PNG + animated GIF)
    optzoo bench [args]                   the speed benchmark (when installed)
    optzoo inspect FILE                   what an MXNet (.params/.states) or optzoo checkpoint holds
    optzoo convert P [S] --out DIR        MXNet .params (+ .states) -> safetensors + optzoo Trainer checkpoint

User errors print one line on stderr and exit with status 2 (1 for a missing optional package or a failure
while running, 130 when interrupted). Set ``OPTZOO_DEBUG=1`` to see the traceback of an unexpected error.
The plotting/reporting commands need the ``cli`` extra: ``pip install 'optzoo[cli]'``.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from .common import CLIError

__all__ = ["CLIError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (through CLIError) instead of usage text + exit."""

    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')", status=2)


def build_parser() -> argparse.ArgumentParser:
    from . import bench, checkpoints, compare, list_cmd, trajectories

    parser = _Parser(prog="optzoo", description="optzoo: MXNet's optimizers on PyTorch. Which one should I use? "
                                                "Run them and see.")
    parser.add_argument("--version", action="version", version=f"optzoo {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    list_cmd.add_parser(subparsers)
    compare.add_parser(subparsers)
    trajectories.add_parser(subparsers)
    bench.add_parser(subparsers)
    checkpoints.add_parsers(subparsers)
    return parser


def _command_name(argv) -> str:
    for arg in argv:
        if not arg.startswith("-"):
            return f"optzoo {arg}"
    return "optzoo"


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = _command_name(argv)
    try:
        parser = build_parser()
        rest = None
        command_at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
        if command_at is not None and argv[command_at] == "bench":  # everything after it is the benchmark's
            argv, rest = argv[:command_at + 1], argv[command_at + 1:]
        args = parser.parse_args(argv)
        if rest is not None:
            args.bench_args = rest
        args.argv = argv
        if not hasattr(args, "run"):
            parser.print_help(sys.stderr)
            return 2
        return int(args.run(args) or 0)
    except CLIError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `optzoo list | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as err:  # an unexpected failure: one line unless debugging
        if os.environ.get("OPTZOO_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {type(err).__name__}: {message} (set OPTZOO_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
