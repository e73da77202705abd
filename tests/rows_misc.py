"""Table rows of the one-off optimizers: SGLD, DCASGD and MXNet's Test optimizer."""

from __future__ import annotations

import math

import torch
from optimizer_table import AGG, CG, MP2, RG, WD, Row, _nan, _neg

#: MXNet's DCASGD grid axes (spec 10.3)
LAMDA = [{}, {"lamda": 0.01}, {"lamda": 0.1}]
DCASGD_MOM = [{}, {"momentum": 0.0}, {"momentum": 0.9}]

ROWS = [
    # Every config carries a seed so that both paths (and the two optimizers of the adapter and round-trip
    # tests) draw the same noise from private generators.
    Row("sgld",
        # the defaults take small steps (trust ratio eta / lr) or add large noise (SGLD) for 150 steps
        train_kwargs={"learning_rate": 1e-3, "rescale_grad": 256.0},  # posterior of the summed loss
        configs=[{"seed": 0}, {"seed": 1, "wd": 0.03, "clip_gradient": 0.4, "rescale_grad": 0.8},
                 {"seed": 2, "learning_rate": 0.01, "wd": 0.05}],
        errors=[({"seed": -1}, ValueError, "seed"), ({"seed": 2**64}, ValueError, "seed"),
                ({"seed": 1.5}, TypeError, "seed"), ({"seed": "0"}, TypeError, "seed"),
                ({"seed": None, "generator": 0}, TypeError, "generator"),
                ({"seed": None, "generator": "cpu"}, TypeError, "generator"),
                ({"seed": 3, "generator": torch.Generator()}, ValueError, "either generator or seed")],
        grid=[CG, WD, MP2, AGG], sparse="dense", feature_kwargs={"seed": 0},
        # MXNet's noise comes from MXNet's generator: the generic trajectory comparison cannot apply.
        # tests/test_sgld_dcasgd.py runs the same feature cases with MXNet's noise injected instead.
        oracle=None, optzoo_only=("seed", "generator"),
        notes="MXNet parity with MXNet's extracted noise: tests/test_sgld_dcasgd.py"),
    Row("dcasgd",
        configs=[{}, {"momentum": 0.9}, {"momentum": 0.5, "lamda": 0.1, "wd": 0.01, "clip_gradient": 0.5,
                                         "rescale_grad": 0.5},
                 {"learning_rate": 0.5, "lamda": 0.0}],
        errors=[({"momentum": 1.0}, ValueError, "momentum"), _neg("momentum"), _nan("momentum"),
                ({"momentum": "0.9"}, TypeError, "momentum"), _neg("lamda"), _nan("lamda"),
                ({"lamda": math.inf}, ValueError, "lamda"), ({"lamda": None}, TypeError, "lamda")],
        grid=[LAMDA, DCASGD_MOM, CG, RG, WD, MP2, AGG], sparse="dense", feature_kwargs={"momentum": 0.9}),
    # MXNet 2.0's Test ignores clip_gradient; optzoo clips (reported deviation, tested in
    # tests/test_sgld_dcasgd.py), so clipping stays out of the grid and the clipped "huge" case is replaced.
    Row("test",
        configs=[{}, {"wd": 0.03, "rescale_grad": 0.8}, {"learning_rate": 0.5, "clip_gradient": 0.4}],
        grid=[RG, WD, MP2, AGG], sparse="dense", skip_features=("huge",),
        extra_cases=[{"suffix": "huge_noclip", "kwargs": {}, "grad_scale": 30.0}]),
]
