"""Table row of Signum / signSGD (optzoo/optimizer/signum.py)."""

from __future__ import annotations

import math

from optimizer_table import AGG, CG, MP2, RG, WD, Row

# MXNet's own MOM axis ({} / 0.9) never leaves Signum's default momentum 0.9; add signSGD and a third value.
_MOM = [{}, {"momentum": 0.0}, {"momentum": 0.5}]
_SIGNSGD = {"momentum": 0.0, "wd_lh": 0.01}

ROWS = [
    Row("signum",
        configs=[{}, {"momentum": 0.0},
                 {"momentum": 0.0, "wd": 0.03, "wd_lh": 0.01, "clip_gradient": 0.3, "rescale_grad": 0.5},
                 {"momentum": 0.5, "wd": 0.03, "wd_lh": 0.015, "clip_gradient": 0.4},
                 {"learning_rate": 0.05}],
        errors=[({"momentum": 1.0}, ValueError, "momentum"), ({"momentum": -0.1}, ValueError, "momentum"),
                ({"momentum": math.nan}, ValueError, "momentum"),
                ({"momentum": "0.9"}, TypeError, "momentum"),
                ({"wd_lh": -0.1}, ValueError, "wd_lh"), ({"wd_lh": math.nan}, ValueError, "wd_lh"),
                ({"wd_lh": math.inf}, ValueError, "wd_lh"), ({"wd_lh": [0.1]}, TypeError, "wd_lh")],
        grid=[CG, RG, WD, [{}, {"wd_lh": 0.015}, {"wd_lh": 0.0}], _MOM,
              [{"learning_rate": 0.05}, {"learning_rate": 0.01}], MP2, AGG],
        sparse="dense",
        # MXNet 2.0 has no row-sparse kernel for signum_update/signsgd_update: the gradient is densified.
        sparse_kwargs=[{"wd": 0.03}, {"wd": 0.03, **_SIGNSGD}],
        extra_cases=[
            {"suffix": "signsgd-mults", "kwargs": {**_SIGNSGD, "wd": 0.05, "learning_rate": 0.05},
             "lr_mult": {0: 0.5, 2: 2.0}, "wd_mult": {1: 0.0, 2: 3.0}},
            {"suffix": "signsgd-sched", "kwargs": {**_SIGNSGD, "learning_rate": 0.02},
             "scheduler": {"type": "FactorScheduler",
                           "kwargs": {"step": 15, "factor": 0.7, "base_lr": 0.02, "warmup_steps": 10,
                                      "warmup_begin_lr": 0.001}}},
            {"suffix": "signsgd-tiny", "kwargs": {**_SIGNSGD, "rescale_grad": 0.3, "clip_gradient": 0.1},
             "grad_scale": 1e-4},
            {"suffix": "signsgd-fp16mp", "kwargs": {**_SIGNSGD, "wd": 0.03, "multi_precision": True},
             "dtype": "float16"},
        ]),
]
