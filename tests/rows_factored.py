"""Table rows of the factored-moment family: Adafactor, CAME (optzoo/optimizer/factored.py).

No MXNet counterpart (``oracle=None``): tests/test_factored.py compares them with torch.optim.Adafactor and
came-pytorch.
"""

from __future__ import annotations

import math

from optimizer_table import Row


def _errors(name, bad_values):
    return [({name: value}, TypeError if isinstance(value, str) else ValueError, name) for value in bad_values]


_ALIAS_ERRORS = [({"lr": 0.1, "learning_rate": 0.1}, ValueError, "not both"),
                 ({"weight_decay": 0.1, "wd": 0.1}, ValueError, "not both")]

ROWS = [
    Row("adafactor",
        configs=[{}, {"wd": 0.03, "clip_threshold": 2.0}, {"beta2_decay": -0.5, "epsilon1": 1e-20, "epsilon2": 1e-2},
                 {"learning_rate": 0.1, "clip_gradient": 0.4, "rescale_grad": 0.5, "wd": 0.01},
                 {"lr": 0.05, "eps": (None, 1e-3), "d": 1.5, "weight_decay": 0.02}],
        errors=(_errors("beta2_decay", [0.5, math.nan, "-0.8"]) + _errors("epsilon1", [-1e-30, math.nan])
                + _errors("epsilon2", [-1e-3, math.inf]) + _errors("clip_threshold", [0.5, math.nan])
                + _ALIAS_ERRORS + [({"eps": 1e-3}, TypeError, "eps")]),
        oracle=None, train_kwargs={"learning_rate": 0.1}),
    Row("came",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "beta3": 0.9, "wd": 0.03},
                 {"epsilon1": 1e-20, "epsilon2": 1e-10, "clip_threshold": 0.5, "clip_gradient": 0.4},
                 {"learning_rate": 0.01, "rescale_grad": 0.5, "wd": 0.01},
                 {"lr": 0.003, "betas": (0.9, 0.99, 0.999), "eps": (1e-30, 1e-16), "weight_decay": 0.01}],
        errors=(_errors("beta1", [1.5, -0.1, math.nan, "0.9"]) + _errors("beta3", [2.0])
                + _errors("epsilon1", [-1.0, math.nan]) + _errors("clip_threshold", [0.0, -1.0])
                + _ALIAS_ERRORS + [({"betas": (0.9, 0.999)}, ValueError, "betas")]),
        oracle=None, train_kwargs={"learning_rate": 0.02}),
]
