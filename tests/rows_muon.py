"""Table row of Muon (optzoo/optimizer/muon.py): 2-D weights orthogonalised, the rest on its AdamW side.

No MXNet counterpart (``oracle=None``): tests/test_muon.py compares it with torch.optim.Muon and torch.optim.AdamW.
"""

from __future__ import annotations

import math

from optimizer_table import Row, Tol


def _errors(name, bad_values):
    return [({name: value}, TypeError if isinstance(value, str) else ValueError, name) for value in bad_values]


ROWS = [
    Row("muon",
        configs=[{}, {"momentum": 0.9, "nesterov": False, "wd": 0.0},
                 {"adjust_lr_fn": "match_rms_adamw", "clip_gradient": 0.4, "rescale_grad": 0.5, "ns_steps": 3},
                 {"learning_rate": 0.02, "adamw_lr_ratio": 0.05, "adamw_beta2": 0.95, "adamw_epsilon": 1e-10},
                 {"lr": 0.01, "weight_decay": 0.05, "eps": 1e-6, "adamw_params": [1]}],
        errors=(_errors("momentum", [1.0, -0.1, math.nan, "0.9"]) + _errors("ns_steps", [100, -1, "5"])
                + _errors("epsilon", [-1e-7]) + [({"adjust_lr_fn": "rms"}, ValueError, "adjust_lr_fn")]
                + _errors("adamw_beta1", [1.0]) + _errors("adamw_lr_ratio", [-1.0])
                + [({"ns_coefficients": (1.0, 2.0)}, TypeError, "ns_coefficients"),
                   ({"nesterov": 1}, TypeError, "nesterov"),
                   ({"adamw_params": "embed"}, TypeError, "adamw_params"),
                   ({"lr": 0.1, "learning_rate": 0.1}, ValueError, "not both")]),
        # both paths make torch's operations on the same operands (the fast one into workspace buffers): bit for bit
        impl_tol=Tol(0.0, 0.0, "bit-identical"), sparse="none", oracle=None, train_kwargs={"learning_rate": 0.02}),
]
