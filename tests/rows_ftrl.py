"""Table rows of the follow-the-regularized-leader family: Ftrl and FTML (optzoo/optimizer/ftrl.py)."""

from __future__ import annotations

import math

from optimizer_table import AGG, B1, B2, CG, MP2, RG, WD, Row, beta_errors

_ZERO_LR = ({"learning_rate": 0.0}, ValueError, "learning_rate must be > 0")

ROWS = [
    Row("ftrl",
        configs=[{}, {"lamda1": 0.1, "wd": 0.03}, {"beta": 0.5, "clip_gradient": 0.4, "rescale_grad": 0.5},
                 {"lamda1": 0.0, "learning_rate": 0.5, "lazy_update": True}],
        errors=[({"lamda1": -0.1}, ValueError, "lamda1"), ({"lamda1": math.nan}, ValueError, "lamda1"),
                ({"lamda1": math.inf}, ValueError, "lamda1"), ({"lamda1": "0.1"}, TypeError, "lamda1"),
                ({"beta": 0.0}, ValueError, "beta"), ({"beta": -1.0}, ValueError, "beta"),
                ({"beta": math.nan}, ValueError, "beta"), ({"beta": None}, TypeError, "beta"),
                ({"lazy_update": 1}, TypeError, "lazy_update"), _ZERO_LR],
        grid=[[{"lamda1": 0.0}, {"lamda1": 0.1}], CG, RG, WD, MP2, AGG],
        sparse="lazy",
        optzoo_only=("lazy_update",),
        # MXNet 2.0 densifies a row-sparse gradient on a dense weight: optzoo's lazy_update=False path.
        # lazy_update=True (MXNet 1.9.1 row-sparse semantics) is tested in tests/test_ftrl_signum.py.
        sparse_kwargs=[{"wd": 0.03, "lazy_update": False}, {"lamda1": 0.1, "clip_gradient": 0.4}]),
    Row("ftml",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03},
                 {"epsilon": 1e-3, "clip_gradient": 0.4, "rescale_grad": 0.14}, {"learning_rate": 0.01}],
        errors=beta_errors("beta1", "beta2") + [
            ({"epsilon": 0.0}, ValueError, "epsilon"), ({"epsilon": -1e-8}, ValueError, "epsilon"),
            ({"epsilon": math.nan}, ValueError, "epsilon"), ({"epsilon": "1e-8"}, TypeError, "epsilon"),
            _ZERO_LR],
        grid=[B1, B2, CG, RG, WD, MP2, AGG],
        sparse="dense"),
]
