"""What every ``optzoo`` subcommand shares: user errors, optional-dependency imports, optimizer specs
(``name[:key=value,...]``), output folders and atomic file writes."""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..serialization import atomic_write as write_atomic

__all__ = [
    "GUIDE_OPTIMIZERS",
    "CLIError",
    "OptimizerSpec",
    "assign_labels",
    "check_specs",
    "fraction",
    "guide_specs",
    "jsonable",
    "lr_list",
    "parse_optimizer_specs",
    "parse_value",
    "positive_float",
    "positive_int",
    "prepare_output_dir",
    "registered_optimizers",
    "require",
    "write_atomic",
    "write_json_atomic",
]

#: package -> the distribution to install when it is missing
_DISTRIBUTIONS = {"rich": "rich", "matplotlib": "matplotlib", "PIL": "pillow", "sklearn": "scikit-learn"}


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr; ``status`` is the exit code (2: usage error)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(" ".join(str(message).split()))
        self.status = status


def require(module: str, command: str):
    """Imports an optional dependency of the command line, or raises a one-line CLIError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        dist = _DISTRIBUTIONS.get(top, top)
        raise CLIError(f"'optzoo {command}' needs {dist}, which is not installed; "
                       f"install the command-line extra: pip install 'optzoo[cli]'", status=1) from None


# ------------------------------------------------------------------------------------------ optimizer specs
#: The optimizers of the MXNet optimizer guide with the guide's example hyperparameters (in its order).
GUIDE_OPTIMIZERS: tuple[tuple[str, dict], ...] = (
    ("sgd", {"learning_rate": 0.1, "momentum": 0.8}),
    ("nag", {"learning_rate": 0.1, "momentum": 0.8}),
    ("adagrad", {"learning_rate": 0.1, "epsilon": 1e-7}),
    ("rmsprop", {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.9, "epsilon": 1e-7, "centered": False}),
    ("adadelta", {"rho": 0.9, "epsilon": 1e-7}),
    ("adam", {"learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}),
    ("adamax", {"learning_rate": 0.002, "beta1": 0.9, "beta2": 0.999}),
    ("nadam", {"learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}),
    ("signum", {"learning_rate": 0.01, "momentum": 0.9, "wd_lh": 0.0}),
    ("dcasgd", {"momentum": 0.0, "lamda": 0.04}),
    ("ftrl", {"lamda1": 0.01, "learning_rate": 0.1, "beta": 1}),
    ("ftml", {"beta1": 0.6, "beta2": 0.999, "epsilon": 1e-8}),
    ("sgld", {}),
)


@dataclass
class OptimizerSpec:
    """A registered optimizer name plus constructor arguments; ``label`` names it in tables and plots."""

    name: str
    params: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            self.label = self.name

    def with_params(self, **params) -> OptimizerSpec:
        return OptimizerSpec(self.name, {**self.params, **params})

    def describe(self) -> str:
        """``name(k=v, ...)``, the full constructor call."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"


def registered_optimizers() -> dict[str, type]:
    """The optimizer registry, after every family module that exists has been imported."""
    from ..optimizer import Optimizer  # importing the package imports (and so registers) every family

    return dict(Optimizer.opt_registry)


def parse_value(text: str):
    """``k=v`` values: true/false, none, integers, floats (``1e-3``, ``inf``, ``nan``), else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _check_name(name: str, option: str) -> str:
    registry = registered_optimizers()
    key = name.strip().lower()
    if not key:
        raise CLIError(f"{option}: empty optimizer name")
    if key not in registry:
        close = difflib.get_close_matches(key, registry, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CLIError(f"{option}: unknown optimizer {name!r}; {hint}registered: {', '.join(sorted(registry))} "
                       f"(see 'optzoo list')")
    return key


def parse_optimizer_specs(tokens: list[str], option: str = "--optimizers") -> list[OptimizerSpec]:
    """Parses ``adam:learning_rate=0.01,beta1=0.8 sgd`` (or the same joined by commas) into specs.

    A comma-separated part with ``=`` is an argument of the optimizer before it; any other part starts a
    new optimizer. Raises CLIError for unknown names, malformed parts and repeated arguments.
    """
    specs: list[OptimizerSpec] = []
    for token in tokens:
        for part in token.split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part.split("=", 1)[0]:
                name, rest = part.split(":", 1)
                specs.append(OptimizerSpec(_check_name(name, option)))
                part = rest.strip()
                if not part:
                    continue
            elif "=" not in part:
                specs.append(OptimizerSpec(_check_name(part, option)))
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not specs:
                raise CLIError(f"{option}: {part!r} has no optimizer before it (write name:{part})")
            if not sep or not key.isidentifier():
                raise CLIError(f"{option}: expected key=value after '{specs[-1].name}:', got {part!r}")
            if key in specs[-1].params:
                raise CLIError(f"{option}: {specs[-1].name} sets {key} twice")
            specs[-1].params[key] = parse_value(value.strip())
    if not specs:
        raise CLIError(f"{option}: no optimizer given")
    return specs


def check_specs(specs: list[OptimizerSpec], option: str = "--optimizers") -> None:
    """Builds each optimizer once so that a bad hyperparameter fails before any work starts."""
    from ..optimizer import create

    for spec in specs:
        try:
            create(spec.name, **spec.params)
        except (ValueError, TypeError) as err:
            raise CLIError(f"{option}: {spec.describe()}: {err}") from None


def guide_specs(optimizers=None) -> tuple[list[OptimizerSpec], list[str]]:
    """The guide's optimizers (or ``optimizers``: ``(name, params)`` pairs, a preset) that are registered, with
    their hyperparameters, and notes on the others."""
    from ..optimizer import create

    registry = registered_optimizers()
    specs, notes = [], []
    for name, params in optimizers or GUIDE_OPTIMIZERS:
        if name not in registry:
            notes.append(f"skipped {name}: not registered in this optzoo build")
            continue
        try:
            create(name, **params)
        except (ValueError, TypeError) as err:
            notes.append(f"skipped {name}: the guide's arguments are rejected ({err})")
            continue
        specs.append(OptimizerSpec(name, dict(params)))
    return specs, notes


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def assign_labels(specs: list[OptimizerSpec]) -> None:
    """Labels are the optimizer names, plus the arguments that tell apart specs sharing a name."""
    by_name: dict[str, list[OptimizerSpec]] = {}
    for spec in specs:
        by_name.setdefault(spec.name, []).append(spec)
    for name, group in by_name.items():
        if len(group) == 1:
            group[0].label = name
            continue
        keys = sorted({k for s in group for k in s.params})
        differing = [k for k in keys if len({repr(s.params.get(k, "<default>")) for s in group}) > 1]
        for spec in group:
            shown = [f"{'lr' if k == 'learning_rate' else k}={_short(spec.params.get(k, 'default'))}"
                     for k in differing]
            spec.label = f"{name} {' '.join(shown)}" if shown else name
    seen: dict[str, int] = {}
    for spec in specs:  # identical specs given twice: number them
        n = seen.get(spec.label, 0)
        seen[spec.label] = n + 1
        if n:
            spec.label = f"{spec.label} #{n + 1}"


# ------------------------------------------------------------------------------------------ argument types
def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return value


def lr_list(text: str) -> list[float]:
    """``--lr 0.1,0.01`` (commas or repeated values): each a finite number > 0."""
    values = [positive_float(part) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} holds no learning rate")
    return values


# ------------------------------------------------------------------------------------------ files
def prepare_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Creates the folder and proves it is writable (before any work), else a one-line CLIError."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".optzoo-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise CLIError(f"{option} {str(path)!r} is not a writable folder: {reason}") from None
    return out


def jsonable(value):
    """Strict JSON: non-finite floats become None, tuples lists, other objects their repr."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return repr(value)


def write_json_atomic(path: Path, payload) -> None:
    write_atomic(path, json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n")
