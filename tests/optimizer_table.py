"""The optimizer test table: one row per registered optimizer. Every generic test iterates it, so
adding an optimizer means adding one row here (tests/test_table_complete.py checks that)."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# MXNet's own hyperparameter axes (spec section 10.2/10.3).
CG = [{}, {"clip_gradient": 0.4}, {"clip_gradient": 0.5}]
RG = [{}, {"rescale_grad": 0.14}, {"rescale_grad": 0.8}]
WD = [{}, {"wd": 0.03}, {"wd": 0.05}, {"wd": 0.07}]
MOM = [{}, {"momentum": 0.9}]
MP2 = [{"multi_precision": False}, {"multi_precision": True}]
AGG = [{"aggregate_num": 0}, {"aggregate_num": 1}, {"aggregate_num": 4}, {"aggregate_num": "inf"}]
B1 = [{}, {"beta1": 0.5}, {"beta1": 0.7}]
B2 = [{}, {"beta2": 0.8}, {"beta2": 0.9}]


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float
    reason: str = "float32 rounding"


F32 = Tol(1e-5, 1e-6)
#: float16 weights with a float32 master copy: the weight is the rounded master copy, so one fp16 ulp.
F16_MP = Tol(1e-3, 1e-3, "float16 rounding of the float32 master copy")


@dataclass
class Row:
    name: str
    #: constructor cases for the generic tests (impl parity, state round trip, ...)
    configs: list[dict]
    #: (kwargs, exception, message regex) that must be rejected at construction
    errors: list[tuple[dict, type, str]] = field(default_factory=list)
    #: MXNet hyperparameter axes (spec 10.3); sampled by tests/trajectory.grid_cases
    grid: list[list[dict]] = field(default_factory=list)
    tol: dict[str, Tol] = field(default_factory=lambda: {"float32": F32, "float16": F16_MP})
    #: reference vs fast path after many steps (the two paths may round differently)
    impl_tol: Tol = Tol(1e-5, 1e-6)
    sparse: str = "dense"  # "lazy" (lazy_update supported), "dense" (densified) or "none"
    multi_precision: bool = True
    oracle: str | None = "2.0"  # MXNet version to compare with; None = no MXNet counterpart
    n_random: int = 12
    steps: int = 100
    #: kwargs that make every feature case well defined (e.g. a momentum so the state is not None)
    feature_kwargs: dict = field(default_factory=dict)
    #: arguments only optzoo knows (removed before running MXNet)
    optzoo_only: tuple[str, ...] = ()
    #: kwargs variants for the row-sparse parity cases (default: lazy_update True/False for "lazy" rows)
    sparse_kwargs: list[dict] | None = None
    #: feature parity cases to leave out, by suffix ("mults", "begin5", "sched", "setlr", "tiny", "huge", ...)
    skip_features: tuple[str, ...] = ()
    #: more parity cases: dicts with "suffix", "kwargs" and any tests/trajectory.make_case options
    extra_cases: list[dict] = field(default_factory=list)
    #: constructor arguments for the "trains a small model" test (default: the optimizer's own defaults)
    train_kwargs: dict = field(default_factory=dict)
    #: the rule has no weight decay (wd must be 0): generic tests use wd=0
    supports_wd: bool = True
    #: kwargs besides wd=0 that turn off every weight decay (e.g. MARS's own decay of 1-D tensors, wd_1d)
    no_decay_kwargs: dict = field(default_factory=dict)
    #: why a tensor's first update moves no weight, if it does not (e.g. ADOPT: it only initialises the state)
    first_step_still: str = ""
    #: why one step couples every parameter, if it does (Prodigy's one d estimate): a param group then is not a
    #: separate optimizer, and groups may differ in lr and wd only
    joint_step: str = ""
    notes: str = ""

    def wd(self, value: float) -> float:
        return value if self.supports_wd else 0.0


def _neg(name):
    return ({name: -0.1}, ValueError, name)


def _nan(name):
    return ({name: math.nan}, ValueError, name)


def beta_errors(*names):
    out = []
    for name in names:
        out += [({name: 1.0}, ValueError, name), ({name: -0.5}, ValueError, name), _nan(name),
                ({name: "0.9"}, TypeError, name)]
    return out


ROWS: list[Row] = [
    Row("sgd",
        configs=[{}, {"momentum": 0.9}, {"momentum": 0.9, "wd": 0.01, "clip_gradient": 0.5, "rescale_grad": 0.5},
                 {"learning_rate": 0.5, "momentum": 0.5}],
        errors=[({"momentum": 1.0}, ValueError, "momentum"), _neg("momentum"), _nan("momentum"),
                ({"lazy_update": 1}, TypeError, "lazy_update")],
        grid=[MOM, CG, RG, WD, MP2, AGG], sparse="lazy", feature_kwargs={"momentum": 0.9}),
    Row("nag",
        configs=[{}, {"momentum": 0.0}, {"momentum": 0.5, "wd": 0.01, "clip_gradient": 0.5}],
        errors=[({"momentum": 1.5}, ValueError, "momentum"), _nan("momentum")],
        grid=[MOM, CG, RG, [{}, {"wd": 0.03}, {"wd": 0.05}], MP2, AGG], sparse="dense",
        tol={"float32": Tol(1e-5, 1e-6), "float16": F16_MP}),
    Row("adam",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"epsilon": 1e-3, "clip_gradient": 0.4},
                 {"learning_rate": 0.1}],
        errors=beta_errors("beta1", "beta2") + [_neg("epsilon"), ({"lazy_update": "no"}, TypeError, "lazy_update")],
        grid=[B1, B2, CG, RG, WD, MP2, AGG], sparse="lazy",
        tol={"float32": Tol(1e-5, 1e-6), "float16": F16_MP}),
]

#: errors every optimizer must raise for the shared base arguments
BASE_ERRORS: list[tuple[dict, type, str]] = [
    ({"learning_rate": -0.1}, ValueError, "learning_rate"),
    ({"learning_rate": math.nan}, ValueError, "learning_rate"),
    ({"learning_rate": "0.1"}, TypeError, "learning_rate"),
    ({"wd": -1.0}, ValueError, "wd"),
    ({"wd": math.inf}, ValueError, "wd"),
    ({"rescale_grad": math.nan}, ValueError, "rescale_grad"),
    ({"clip_gradient": 0.0}, ValueError, "clip_gradient"),
    ({"clip_gradient": -1.0}, ValueError, "clip_gradient"),
    ({"begin_num_update": -1}, ValueError, "begin_num_update"),
    ({"begin_num_update": 1.5}, TypeError, "begin_num_update"),
    ({"multi_precision": "yes"}, TypeError, "multi_precision"),
    ({"impl": "fastest"}, ValueError, "impl"),
    ({"aggregate_num": -2}, ValueError, "aggregate_num"),
    ({"param_dict": [1, 2]}, TypeError, "param_dict"),
    ({"lr_scheduler": 0.1}, TypeError, "lr_scheduler"),
    ({"learning_rat": 0.1}, TypeError, "did you mean 'learning_rate'"),
]

# Each optimizer family adds its rows in a tests/rows_<family>.py module (one ROWS list each).
for _path in sorted(Path(__file__).parent.glob("rows_*.py")):
    ROWS += importlib.import_module(_path.stem).ROWS

ROW_BY_NAME = {row.name: row for row in ROWS}


def rows(predicate=lambda row: True) -> list[Row]:
    return [row for row in ROWS if predicate(row)]


def random_state(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
