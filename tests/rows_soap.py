"""Table row of SOAP (optzoo/optimizer/soap.py).

No MXNet counterpart (``oracle=None``): tests/test_soap.py compares it with pytorch-optimizer's SOAP.
"""

from __future__ import annotations

import math

from optimizer_table import Row, Tol


def _errors(name, bad_values):
    return [({name: value}, TypeError if isinstance(value, str) else ValueError, name) for value in bad_values]


ROWS = [
    Row("soap",
        configs=[{}, {"beta1": 0.9, "beta2": 0.99, "shampoo_beta": 0.9, "wd": 0.0, "precondition_frequency": 3},
                 {"precondition_1d": True, "max_precondition_dim": 6, "clip_gradient": 0.4, "rescale_grad": 0.5},
                 {"merge_dims": True, "max_precondition_dim": 12, "correct_bias": False, "normalize_gradient": True},
                 {"lr": 0.01, "betas": (0.9, 0.95), "eps": 1e-6, "weight_decay": 0.05}],
        errors=(_errors("beta1", [1.0, -0.1, math.nan, "0.9"]) + _errors("shampoo_beta", [1.5])
                + _errors("precondition_frequency", [0, "10"]) + _errors("max_precondition_dim", [0])
                + _errors("epsilon", [-1e-8]) + [({"merge_dims": 1}, TypeError, "merge_dims"),
                                                  ({"betas": (0.9,)}, ValueError, "betas")]),
        first_step_still="SOAP's first update of a tensor only accumulates L_i and computes its eigenbasis Q_i",
        # both paths make the package's operations on the same operands (the fast one gets its QR from the same two
        # LAPACK calls, geqrf + householder_product, without R)
        impl_tol=Tol(0.0, 0.0, "bit-identical"), sparse="none", oracle=None, train_kwargs={"learning_rate": 0.01}),
]
