"""``optzoo list``: every registered optimizer, its hyperparameters and defaults, and its summary line.

Read from the registry and the constructor signatures at run time, so optimizers registered by any module
(including ones added after this was written) appear with their real defaults. Needs no optional package.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import textwrap

from .common import jsonable, registered_optimizers

__all__ = ["add_parser", "describe_optimizers", "run"]

_SKIP = {"self", "kwargs", "args"}


def _default(value):
    if value is inspect.Parameter.empty:
        return "<required>"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def _signature_defaults(klass: type, stop: type) -> dict:
    """Arguments and defaults of ``klass.__init__`` and of its ancestors below ``stop`` (a subclass's default
    wins), in declaration order."""
    out: dict = {}
    for base in klass.__mro__:
        if base is stop or not issubclass(base, stop):
            break
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name in _SKIP or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name in out:
                continue
            out[name] = _default(param.default)
    return out


def _summary(klass: type) -> str:
    doc = inspect.getdoc(klass) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def describe_optimizers() -> dict:
    """``{"optimizers": [...], "common": {...}}``: what ``optzoo list --json`` prints."""
    from ..optimizer import Optimizer

    common = {name: _default(p.default) for name, p in inspect.signature(Optimizer.__init__).parameters.items()
              if name not in _SKIP and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    rows = []
    for name, klass in sorted(registered_optimizers().items()):
        own = _signature_defaults(klass, Optimizer)
        learning_rate = getattr(klass, "default_learning_rate", None)
        own.pop("learning_rate", None)  # every optimizer has one; None in a signature means this default
        own = {"learning_rate": learning_rate, **own}
        rows.append({
            "name": name,
            "class": f"{klass.__module__}.{klass.__qualname__}",
            "summary": _summary(klass),
            "hyperparameters": own,
            "default_learning_rate": learning_rate,
            "sparse_support": getattr(klass, "sparse_support", None),
        })
    common["learning_rate"] = "each optimizer's default_learning_rate"
    return {"optimizers": rows, "common": common}


def _format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _print_text(info: dict, out) -> None:
    rows = info["optimizers"]
    print(f"{len(rows)} registered optimizers (optzoo.optimizer.create(name, **hyperparameters)):", file=out)
    width = max((len(row["name"]) for row in rows), default=4)
    for row in rows:
        print(file=out)
        print(f"{row['name']:<{width}}  {row['summary']}", file=out)
        args = ", ".join(f"{k}={_format_value(v)}" for k, v in row["hyperparameters"].items())
        for line in textwrap.wrap(args or "(no own hyperparameters)", 100):
            print(f"{'':<{width}}    {line}", file=out)
    common = {k: v for k, v in info["common"].items() if k != "learning_rate"}
    print(file=out)
    print("Every optimizer also takes (defaults shown):", file=out)
    for line in textwrap.wrap(", ".join(f"{k}={_format_value(v)}" for k, v in common.items()), 100):
        print(f"    {line}", file=out)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "list", help="list the registered optimizers with their hyperparameters and defaults",
        description="List every registered optimizer: its hyperparameters with their defaults (read from the "
                    "constructor signatures) and the first line of its docstring.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run)


def run(args) -> int:
    info = describe_optimizers()
    if args.json:
        json.dump(jsonable(info), sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_text(info, sys.stdout)
    return 0
