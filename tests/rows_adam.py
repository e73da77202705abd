"""Table rows of the Adam family beyond Adam: AdamW, Adamax, Nadam, AdaBelief (MXNet 2.0 grids, spec 10.3)."""

from __future__ import annotations

import math

from optimizer_table import AGG, B1, B2, CG, MP2, RG, WD, Row, beta_errors

CORRECT_BIAS = [{"correct_bias": True}, {"correct_bias": False}]


def _real_errors(name, bad_low):
    """Out of range, NaN and a string must all be rejected, naming the argument."""
    return [({name: bad_low}, ValueError, name), ({name: math.nan}, ValueError, name),
            ({name: math.inf}, ValueError, name), ({name: "1e-8"}, TypeError, name)]


def _decoupled_row(name: str) -> Row:
    return Row(name,
               configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"correct_bias": False, "wd": 0.1},
                        {"epsilon": 1e-3, "clip_gradient": 0.4, "rescale_grad": 0.5, "wd": 0.05},
                        {"learning_rate": 0.1, "wd": 0.01}],
               errors=beta_errors("beta1", "beta2") + _real_errors("epsilon", -1e-8)
               + [({"correct_bias": 1}, TypeError, "correct_bias")],
               grid=[B1, B2, CG, RG, WD, MP2, AGG, CORRECT_BIAS], sparse="dense")


ROWS = [
    _decoupled_row("adamw"),
    _decoupled_row("adabelief"),
    Row("adamax",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"beta2": 1.0, "clip_gradient": 0.4},
                 {"epsilon": 1e-3, "rescale_grad": 0.5, "wd": 0.05}, {"learning_rate": 0.1}],
        errors=beta_errors("beta1") + _real_errors("epsilon", -1.0)
        + [({"beta2": 1.5}, ValueError, "beta2"), ({"beta2": -0.1}, ValueError, "beta2"),
           ({"beta2": math.nan}, ValueError, "beta2"), ({"beta2": "0.9"}, TypeError, "beta2")],
        grid=[B1, B2, CG, RG, WD, MP2, AGG], sparse="dense"),
    Row("nadam",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03},
                 {"schedule_decay": 0.008, "clip_gradient": 0.4},
                 {"schedule_scope": "parameter", "wd": 0.05, "rescale_grad": 0.5},
                 {"learning_rate": 0.05, "schedule_decay": 0.0}],
        errors=beta_errors("beta1", "beta2") + _real_errors("epsilon", -1.0)
        + _real_errors("schedule_decay", -0.004)
        + [({"schedule_scope": "global"}, ValueError, "schedule_scope"),
           ({"schedule_scope": None}, ValueError, "schedule_scope")],
        grid=[[{}, {"beta1": 0.5}], [{}, {"beta2": 0.8}], CG, [{}, {"schedule_decay": 0.008}], RG,
              [{}, {"wd": 0.03}, {"wd": 0.05}], MP2, AGG],
        sparse="dense", optzoo_only=("schedule_scope",),
        # with one parameter the paper's per-parameter schedule is MXNet's shared one
        extra_cases=[{"suffix": "scope1", "kwargs": {"schedule_scope": "parameter", "wd": 0.03},
                      "shapes": [(10, 4)]}]),
]
