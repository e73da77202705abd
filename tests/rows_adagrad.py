"""Test-table rows of the AdaGrad family: AdaGrad, GroupAdaGrad, RMSProp and AdaDelta."""

from __future__ import annotations

from optimizer_table import AGG, CG, MP2, RG, WD, Row, _nan, _neg, beta_errors
from trajectory import grid_cases

EPS = [{}, {"epsilon": 1e-8}]
SCHED = {
    "type": "FactorScheduler",
    "kwargs": {"step": 15, "factor": 0.7, "base_lr": 0.02, "warmup_steps": 10, "warmup_begin_lr": 0.001},
}


def _epsilon_errors(low_open=False):
    out = [_neg("epsilon"), _nan("epsilon"), ({"epsilon": "1e-6"}, TypeError, "epsilon")]
    if low_open:
        out.append(({"epsilon": 0.0}, ValueError, "epsilon"))
    return out


# MXNet's GroupAdaGrad takes 2-D weights only (optzoo takes any rank) and no weight decay, so the generic MXNet
# feature cases (3-D/1-D shapes, wd 0.05) cannot run for it; these are the same features on MXNet's own shapes.
GROUP_SHAPES = [(3, 4), (5, 6), (10, 4)]
GROUP_SKIPS = ("grid0", "mults", "begin5", "sched", "setlr", "tiny", "huge", "fp16mp0")


def _group_cases() -> list[dict]:
    axes = [EPS, CG, RG, AGG]
    cases = [
        {"suffix": f"2d-grid{n}", "kwargs": kwargs} for n, kwargs in enumerate(grid_cases(axes, 8, seed=11))
    ]
    cases += [
        {
            "suffix": "2d-mults",
            "kwargs": {"learning_rate": 0.05},
            "lr_mult": {0: 0.5, 2: 2.0},
            "wd_mult": {1: 0.0, 2: 3.0},
        },
        {"suffix": "2d-begin5", "kwargs": {"begin_num_update": 5}},
        {"suffix": "2d-sched", "kwargs": {"learning_rate": 0.02}, "scheduler": SCHED},
        {"suffix": "2d-setlr", "kwargs": {"learning_rate": 0.05}, "set_lr": {30: 0.003, 60: 0.03}},
        {"suffix": "2d-tiny", "kwargs": {}, "grad_scale": 1e-4},
        {"suffix": "2d-huge", "kwargs": {"clip_gradient": 5.0}, "grad_scale": 30.0},
        {"suffix": "2d-fp16mp0", "kwargs": {"multi_precision": True}, "dtype": "float16"},
        {
            "suffix": "2d-fp16mp1",
            "kwargs": {"multi_precision": True, "clip_gradient": 0.4, "rescale_grad": 0.8},
            "dtype": "float16",
        },
        {"suffix": "2d-sparse0", "kwargs": {"lazy_update": True}, "sparse": (0, 1)},
        {"suffix": "2d-sparse1", "kwargs": {"lazy_update": False}, "sparse": (0, 1)},
        {
            "suffix": "2d-sparse2",
            "kwargs": {"clip_gradient": 0.4, "rescale_grad": 0.8, "epsilon": 1e-8},
            "sparse": (0, 2),
        },
    ]
    for case in cases:
        case["shapes"] = GROUP_SHAPES
    return cases


ROWS = [
    Row(
        "adagrad",
        configs=[
            {},
            {"epsilon": 1e-8, "wd": 0.03},
            {"clip_gradient": 0.4, "rescale_grad": 0.14, "wd": 0.05},
            {"learning_rate": 0.1, "lazy_update": False},
        ],
        errors=_epsilon_errors()
        + [
            ({"lazy_update": 1}, TypeError, "lazy_update"),
            ({"eps": 1e-3, "epsilon": 1e-4}, TypeError, "epsilon"),
        ],
        grid=[EPS, CG, RG, WD, MP2, AGG],
        sparse="lazy",
        optzoo_only=("lazy_update",),
        # MXNet's sparse adagrad_update refuses wd != 0 (optzoo decays the present rows;
        # see test_adagrad_family)
        sparse_kwargs=[
            {"lazy_update": True},
            {"lazy_update": False},
            {"lazy_update": True, "clip_gradient": 0.4, "rescale_grad": 0.8, "epsilon": 1e-8},
        ],
    ),
    Row(
        "groupadagrad",
        configs=[{}, {"epsilon": 1e-8}, {"clip_gradient": 0.4, "rescale_grad": 0.14}, {"learning_rate": 0.1}],
        errors=_epsilon_errors()
        + [
            ({"lazy_update": "yes"}, TypeError, "lazy_update"),
            ({"wd": 0.01}, ValueError, "weight decay"),
            ({"eps": 1e-3, "epsilon": 1e-4}, TypeError, "epsilon"),
        ],
        grid=[],
        sparse="lazy",
        optzoo_only=("lazy_update",),
        sparse_kwargs=[],
        skip_features=GROUP_SKIPS,
        extra_cases=_group_cases(),
        supports_wd=False,
        notes="wd must be 0; MXNet parity runs on 2-D GROUP_SHAPES (MXNet's only rank) through extra_cases",
    ),
    Row(
        "rmsprop",
        configs=[
            {},
            {"centered": True},
            {"centered": True, "momentum": 0.0, "rho": 0.5, "wd": 0.03},
            {"clip_weights": 0.3, "clip_gradient": 0.4, "rescale_grad": 0.14, "wd": 0.05},
            {"centered": True, "clip_weights": 0.3, "epsilon": 1e-6, "learning_rate": 0.01},
        ],
        errors=beta_errors("rho", "momentum")
        + _epsilon_errors()
        + [
            ({"centered": 1}, TypeError, "centered"),
            ({"clip_weights": 0.0}, ValueError, "clip_weights"),
            ({"clip_weights": -1.0}, ValueError, "clip_weights"),
            _nan("clip_weights"),
            ({"clip_weights": "1"}, TypeError, "clip_weights"),
            ({"gamma1": 0.9}, TypeError, "rho"),
            ({"gamma2": 0.9}, TypeError, "momentum"),
        ],
        grid=[
            [{}, {"rho": 0.5}],
            CG,
            [{}, {"clip_weights": 0.01}],
            [{"centered": False}, {"centered": True}],
            RG,
            [{}, {"wd": 0.03}],
            [{"momentum": 0.0}, {"momentum": 0.9}],
            MP2,
            AGG,
        ],
        n_random=16,
        sparse="dense",
        feature_kwargs={"centered": True},
        extra_cases=[
            {
                "suffix": "plain-mults",
                "kwargs": {"wd": 0.05},
                "lr_mult": {0: 0.5, 2: 2.0},
                "wd_mult": {1: 0.0, 2: 3.0},
            },
            {"suffix": "plain-tiny", "kwargs": {}, "grad_scale": 1e-4},
            {
                "suffix": "plain-huge",
                "kwargs": {"clip_gradient": 5.0, "clip_weights": 2.0},
                "grad_scale": 30.0,
            },
            {"suffix": "plain-sparse", "kwargs": {"wd": 0.03}, "sparse": (0, 1)},
            {"suffix": "plain-fp16mp", "kwargs": {"multi_precision": True, "wd": 0.03}, "dtype": "float16"},
        ],
    ),
    Row(
        "adadelta",
        configs=[
            {},
            {"rho": 0.5, "wd": 0.03},
            {"epsilon": 1e-8, "clip_gradient": 0.4, "rescale_grad": 0.14},
            {"learning_rate": 0.5, "rho": 0.95},
        ],
        errors=beta_errors("rho") + _epsilon_errors(low_open=True),
        grid=[[{"rho": 0.9}, {"rho": 0.5}], EPS, CG, RG, WD, MP2, AGG],
        sparse="dense",
    ),
]
