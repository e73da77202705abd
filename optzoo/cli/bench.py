"""``optzoo bench``: the speed benchmark, when the ``optzoo.bench`` module is installed.

The benchmark itself is a separate piece of work; this subcommand forwards its arguments to
``optzoo.bench.main(argv) -> int`` and, while that module does not exist, says so in one line.
"""

from __future__ import annotations

import importlib

from .common import CLIError

__all__ = ["BENCH_MODULE", "add_parser", "run"]

BENCH_MODULE = "optzoo.bench"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="optimizer speed benchmark (when installed); arguments go to the benchmark",
        description=f"Runs the optimizer speed benchmark ({BENCH_MODULE}); every argument after 'bench' is "
                    "passed to it (try 'optzoo bench --help' once it is installed).",
        add_help=False)
    parser.set_defaults(run=run, bench_args=[])  # main() hands it every argument after 'bench'



def _load():
    try:
        return importlib.import_module(BENCH_MODULE)
    except ModuleNotFoundError as err:
        if err.name in (BENCH_MODULE, None) or BENCH_MODULE.startswith(f"{err.name}."):
            return None
        raise CLIError(f"the benchmark cannot be imported: {err}", status=1) from None
    except ImportError as err:
        raise CLIError(f"the benchmark cannot be imported: {err}", status=1) from None


def run(args) -> int:
    module = _load()
    if module is None:
        if args.bench_args in (["--help"], ["-h"]):
            print(f"usage: optzoo bench [ARGS...]\n\nThe speed benchmark ({BENCH_MODULE}) is not installed in this "
                  "optzoo build.")
            return 0
        raise CLIError(f"the speed benchmark is not installed (no {BENCH_MODULE} module in this optzoo build)",
                       status=1)
    entry = getattr(module, "main", None)
    if not callable(entry):
        raise CLIError(f"{BENCH_MODULE} has no main(argv) entry point", status=1)
    try:
        return int(entry(list(args.bench_args)) or 0)
    except SystemExit as done:  # the benchmark's own argparse: --help, or a usage error (already printed)
        return done.code if isinstance(done.code, int) else int(done.code is not None)
