"""Test-table rows of the MXNet 1.x legacy optimizers (optzoo/optimizer/legacy.py), compared with MXNet 1.9.1.

Cases the generic parity test cannot express (multi-precision states in 1.9.1's order for ccSGD, LBSGD's
gradient accumulation and warmup with ``batch_scale > 1``) are in tests/test_legacy.py.
"""

from __future__ import annotations

import math

from optimizer_table import CG, MOM, RG, WD, Row

_FP16MP = tuple(f"fp16mp{n}" for n in range(6))

_SCHED = {
    "type": "FactorScheduler",
    "kwargs": {"step": 15, "factor": 0.7, "base_lr": 0.02, "warmup_steps": 10, "warmup_begin_lr": 0.001},
}


def _errors(name, bad_values):
    return [({name: value}, exc, name) for value, exc in bad_values]


_MOMENTUM_ERRORS = _errors(
    "momentum", [(1.0, ValueError), (-0.1, ValueError), (math.nan, ValueError), ("0.9", TypeError)]
)

ROWS = [
    Row(
        "ccsgd",
        configs=[
            {},
            {"momentum": 0.9},
            {"momentum": 0.9, "wd": 0.01, "clip_gradient": 0.5, "rescale_grad": 0.5},
            {"learning_rate": 0.5, "momentum": 0.5},
            {"wd": 0.02, "rescale_grad": 0.3},
        ],
        errors=_MOMENTUM_ERRORS + _errors("lazy_update", [(1, TypeError), ("yes", TypeError)]),
        grid=[MOM, CG, RG, WD],
        sparse="lazy",
        oracle="1.9",
        feature_kwargs={"momentum": 0.9},
        # MXNet 1.9.1 SGD keeps multi-precision state as (mom, weight32), optzoo as (weight32, mom):
        # compared with the order mapped in tests/test_legacy.py
        skip_features=_FP16MP,
    ),
    Row(
        "lbsgd",
        configs=[
            {},
            {"momentum": 0.9},
            {
                "momentum": 0.9,
                "batch_scale": 3,
                "warmup_epochs": 1,
                "updates_per_epoch": 8,
                "wd": 0.01,
                "clip_gradient": 0.5,
            },
            {
                "batch_scale": 2,
                "warmup_strategy": "power2",
                "warmup_epochs": 2,
                "updates_per_epoch": 5,
                "begin_epoch": 1,
                "wd": 0.02,
            },
            {
                "batch_scale": 4,
                "warmup_strategy": "sqrt",
                "momentum": 0.5,
                "updates_per_epoch": 4,
                "rescale_grad": 0.5,
            },
            {"warmup_strategy": "lars", "momentum": 0.9, "wd": 0.01, "batch_scale": 2},
            {"warmup_strategy": "lars", "wd": 0.05, "learning_rate": 0.1},
            {"learning_rate": 0.5, "momentum": 0.5},
        ],
        errors=(
            _MOMENTUM_ERRORS
            + _errors("warmup_strategy", [("cosine", ValueError), ("LARS", ValueError), (1, TypeError)])
            + _errors("warmup_epochs", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
            + _errors("batch_scale", [(0, ValueError), (-2, ValueError), (2.0, TypeError)])
            + _errors("updates_per_epoch", [(0, ValueError), ("32", TypeError)])
            + _errors("begin_epoch", [(-1, ValueError), (0.5, TypeError)])
            + _errors("num_epochs", [(-1, ValueError), ("60", TypeError)])
            + _errors("lazy_update", [("yes", TypeError)])
        ),
        # MXNet's batch_scale=1 grid; with batch_scale=1 only 'lars' changes the learning rate. Accumulation
        # and the warmup ramps (batch_scale > 1) are compared in tests/test_legacy.py.
        grid=[MOM, CG, RG, WD, [{}, {"warmup_strategy": "lars"}, {"warmup_strategy": "sqrt"}]],
        sparse="lazy",
        oracle="1.9",
        feature_kwargs={"momentum": 0.9},
        optzoo_only=("lazy_update",),
        # MXNet 1.9.1 LBSGD always updates row-sparse gradients lazily (there is no switch)
        sparse_kwargs=[{"wd": 0.03}, {"wd": 0.03, "warmup_strategy": "lars"}],
        extra_cases=[
            {
                "suffix": "lars-sched",
                "kwargs": {"momentum": 0.9, "warmup_strategy": "lars", "wd": 0.01, "learning_rate": 0.02},
                "scheduler": _SCHED,
            },
            {
                "suffix": "lars-mults",
                "kwargs": {"warmup_strategy": "lars", "wd": 0.05, "learning_rate": 0.05},
                "lr_mult": {0: 0.5, 2: 2.0},
                "wd_mult": {1: 0.0, 2: 3.0},
            },
        ],
    ),
]
