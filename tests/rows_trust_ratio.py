"""Table rows of the trust-ratio family: LARS, LAMB, LANS (optzoo/optimizer/trust_ratio.py).

Special behaviour (LARS names, zero norms, LAMB's update count, LANS's zero gradient, bounds) is tested in
tests/test_trust_ratio.py.
"""

from __future__ import annotations

import math

from optimizer_table import F16_MP, F32, MP2, Row, Tol, beta_errors


def _errors(name, bad_values):
    return [({name: value}, TypeError if isinstance(value, str) else ValueError, name)
            for value in bad_values]


# MXNet 2.0's test_lars axes (spec 10.3); eta 0.5 added so the trust ratio moves the weights visibly
# (with eta 0.001 and lr 0.1 a step is ~1e-4 of the weight).
_LARS_GRID = [[{}, {"eta": 0.002}, {"eta": 0.01}, {"eta": 0.5}], [{"momentum": 0.0}, {"momentum": 0.9}],
              [{}, {"clip_gradient": 0.4}], [{}, {"rescale_grad": 0.14}], [{}, {"wd": 0.03}, {"wd": 0.05}],
              MP2, [{"aggregate_num": n} for n in (0, 1, 4, "inf")]]

# MXNet 2.0's test_lamb/test_lans axes; bounds of 2.0 added: the test weights' norms are ~4.5, ~3.7 and
# ~1.5, so 2.0 clamps every tensor from one side (1e-3 and 10 never bind).
_LOWER = [{"lower_bound": None}, {"lower_bound": 1e-3}, {"lower_bound": 2.0}]
_UPPER = [{"upper_bound": None}, {"upper_bound": 10}, {"upper_bound": 2.0}]
_ADAM_AXES = [[{}, {"beta1": 0.5}], [{}, {"beta2": 0.8}], [{}, {"clip_gradient": 0.4}],
              [{}, {"rescale_grad": 0.14}], [{}, {"wd": 0.03}]]
# LANS clips the normalised gradient (entries ~0.1-0.4 here): 0.1 added so clipping binds often.
_LANS_AXES = [*_ADAM_AXES[:2], [{}, {"clip_gradient": 0.4}, {"clip_gradient": 0.1}], *_ADAM_AXES[3:]]
# The native kernels sum each norm's squares in another order than torch (float32 blocks joined in float64): the
# trust ratios, and through them the weights, differ from the readable path's by float32 rounding of the norms.
_NORM_TOL = Tol(5e-5, 5e-6, "per-tensor norms summed in another order than torch's")
_BOUND_ERRORS = (_errors("lower_bound", [-0.1, math.nan, math.inf, "1"])
                 + _errors("upper_bound", [0.0, -1.0, math.nan, math.inf, "1"])
                 + [({"lower_bound": 2.0, "upper_bound": 1.0}, ValueError, "lower_bound")])

ROWS = [
    Row("lars",
        # the defaults take small steps (trust ratio eta / lr) or add large noise (SGLD) for 150 steps
        train_kwargs={"eta": 0.05, "momentum": 0.9},
        configs=[{}, {"momentum": 0.9},
                 {"momentum": 0.9, "wd": 0.01, "clip_gradient": 0.5, "rescale_grad": 0.5, "eta": 0.01},
                 {"momentum": 0.9, "eta": 0.5, "wd": 0.01,
                  "param_idx2name": {0: "fc_weight", 1: "fc_bias", 2: "bn_gamma"}},
                 {"learning_rate": 0.5, "momentum": 0.5, "eta": 1.0, "epsilon": 1e-3}],
        errors=(_errors("momentum", [1.0, -0.1, math.nan, "0.9"])
                + _errors("eta", [0.0, -0.1, math.nan, math.inf, "1"])
                + _errors("epsilon", [-1e-8, math.nan]) + [({"lazy_update": 1}, TypeError, "lazy_update")]),
        grid=_LARS_GRID, sparse="lazy", feature_kwargs={"momentum": 0.9, "eta": 0.2}, impl_tol=_NORM_TOL,
        # float32 master copy and momentum of float16 runs: 6e-4 relative from MXNet's in one case (eta=0.5) since
        # the stricter master-copy check; not yet explained (the float32 runs agree at 1e-5): a known gap
        tol={"float32": F32, "float16": F16_MP,
             "float16_master": Tol(1e-3, 1e-4, "LARS multi_precision: master copy 6e-4 from MXNet (open)")}),
    Row("lamb",
        # the defaults take small steps (trust ratio eta / lr) or add large noise (SGLD) for 150 steps
        train_kwargs={"learning_rate": 0.05},
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03},
                 {"epsilon": 1e-3, "clip_gradient": 0.4, "bias_correction": False},
                 {"lower_bound": 1e-3, "upper_bound": 2.0, "wd": 0.01, "rescale_grad": 0.3},
                 {"learning_rate": 0.1, "lower_bound": 2.0, "aggregate_num": 1}],
        errors=(beta_errors("beta1", "beta2") + _errors("epsilon", [-1e-6, math.nan]) + _BOUND_ERRORS
                + [({"bias_correction": 1}, TypeError, "bias_correction")]),
        # MXNet's aggregate_num 0/1 path counts t twice per step (spec 11.18): only its multi-tensor path is
        # compared; optzoo's aggregate_num=1 is checked against it in tests/test_trust_ratio.py.
        grid=[*_ADAM_AXES, [{"bias_correction": False}, {"bias_correction": True}], _LOWER, _UPPER, MP2,
              [{}, {"aggregate_num": 2}]],
        sparse="dense",
        # MXNet runs a row-sparse gradient through that same double-counting path: no sparse parity case;
        # tests/test_trust_ratio.py checks that a sparse gradient equals its dense form.
        sparse_kwargs=[]),
    Row("lans",
        # the defaults take small steps (trust ratio eta / lr) or add large noise (SGLD) for 150 steps
        train_kwargs={"learning_rate": 0.05},
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"epsilon": 1e-3, "clip_gradient": 0.1},
                 {"lower_bound": 1e-3, "upper_bound": 2.0, "wd": 0.01, "rescale_grad": 0.3},
                 {"learning_rate": 0.1, "lower_bound": 2.0, "aggregate_num": 1}],
        errors=beta_errors("beta1", "beta2") + _errors("epsilon", [-1e-6, math.nan]) + _BOUND_ERRORS,
        grid=[*_LANS_AXES, _LOWER, _UPPER, MP2,
              [{"aggregate_num": 0}, {"aggregate_num": 1}, {"aggregate_num": 4}]],
        sparse="dense"),
]
