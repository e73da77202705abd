"""optzoo against real MXNet: identical gradient sequences, many steps, weights and every state compared.

For each table row: MXNet's own hyperparameter grid (spec 10.3, sampled to cover every value of every
axis plus random combinations), then lr_mult/wd_mult through param_dict, begin_num_update, a scheduler
with warmup, set_learning_rate mid-run, tiny and huge gradients, float16 with multi_precision, and
row-sparse gradients (lazy and standard). All MXNet runs happen in one subprocess per MXNet version.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest
from optimizer_table import ROWS, Row
from oracle import run_optimizer_cases
from trajectory import grid_cases, make_case, run_case

ARRAYS: dict[str, np.ndarray] = {}
CASES: dict[str, tuple[Row, dict]] = {}


def _add(row: Row, suffix: str, kwargs: dict, **options) -> None:
    if suffix in row.skip_features:
        return
    cid = f"{row.name}-{suffix}"
    case = make_case(cid, row.name, kwargs, steps=row.steps, seed=len(CASES), arrays=ARRAYS, **options)
    CASES[cid] = (row, case)


def _build_cases() -> None:
    for row in ROWS:
        if row.oracle is None:
            continue
        axes = [axis for axis in row.grid if not any("multi_precision" in v for v in axis)]
        for n, kwargs in enumerate(grid_cases(axes, row.n_random, seed=zlib.crc32(row.name.encode()) % 1000)):
            _add(row, f"grid{n}", kwargs)
        feature = dict(row.feature_kwargs)
        lr = {"learning_rate": 0.05} if row.name not in ("adadelta",) else {}
        _add(row, "mults", {**feature, "wd": 0.05}, lr_mult={0: 0.5, 2: 2.0}, wd_mult={1: 0.0, 2: 3.0})
        _add(row, "begin5", {**feature, "begin_num_update": 5})
        sched = {"type": "FactorScheduler", "kwargs": {"step": 15, "factor": 0.7, "base_lr": 0.02,
                                                       "warmup_steps": 10, "warmup_begin_lr": 0.001}}
        _add(row, "sched", {**feature, "learning_rate": 0.02}, scheduler=sched)
        _add(row, "setlr", {**feature, **lr}, set_lr={30: 0.003, 60: 0.03})
        _add(row, "tiny", dict(feature), grad_scale=1e-4)
        _add(row, "huge", {**feature, "clip_gradient": 5.0}, grad_scale=30.0)
        if row.multi_precision:
            for n, kwargs in enumerate(grid_cases(axes, 3, seed=7)[:6]):
                _add(row, f"fp16mp{n}", {**kwargs, "multi_precision": True}, dtype="float16")
        if row.sparse_kwargs is not None:
            sparse_variants = row.sparse_kwargs
        elif row.sparse == "lazy":
            sparse_variants = [{"wd": 0.03, "lazy_update": True}, {"wd": 0.03, "lazy_update": False}]
        elif row.sparse == "dense":
            sparse_variants = [{"wd": 0.03}]
        else:
            sparse_variants = []
        for n, kwargs in enumerate(sparse_variants):
            _add(row, f"sparse{n}", {**feature, **kwargs}, sparse=(0, 1))
        for extra in row.extra_cases:
            options = dict(extra)
            _add(row, options.pop("suffix"), options.pop("kwargs"), **options)


_build_cases()


@functools.cache
def _mxnet_results(version: str, name: str):
    """MXNet's trajectories for one row's cases (one MXNet process per row, so ``-k <name>`` runs only that
    row). A failure is cached too: one broken row must not rerun its MXNet batch for every case."""
    try:
        return _run_row(version, name)
    except Exception as err:
        return err


def _run_row(version: str, name: str):
    cases = [dict(case, kwargs={k: v for k, v in case["kwargs"].items() if k not in row.optzoo_only})
             for row, case in CASES.values() if row.oracle == version and row.name == name]
    prefixes = tuple(f"{case['id']}/" for case in cases)
    arrays = {k: v for k, v in ARRAYS.items() if k.startswith(prefixes)}
    return run_optimizer_cases(cases, arrays, version=version)


@pytest.mark.oracle
@pytest.mark.parametrize("cid", sorted(CASES))
def test_matches_mxnet(cid):
    row, case = CASES[cid]
    outcome = _mxnet_results(row.oracle, row.name)
    if isinstance(outcome, BaseException):
        raise outcome
    expected, results = outcome
    actual = run_case(case, ARRAYS)
    keys = sorted(k for k in expected if k.startswith(cid + "/"))
    state_keys = [k for k in keys if "/s/" in k]
    assert keys and any("/w/" in k for k in keys)
    assert sorted(k for k in actual if "/s/" in k) == state_keys, "state layout differs from MXNet's"
    fp16_case = any(expected[k].dtype == np.float16 for k in keys)
    for key in keys:
        # float16 cases: the float16 weight is one rounding of the master copy (float16 tolerance); the float32
        # master copy and states must match MXNet as closely as any float32 run (a broken master copy shows)
        if expected[key].dtype == np.float16:
            tol = row.tol["float16"]
        else:
            tol = row.tol.get("float16_master", row.tol["float32"]) if fp16_case else row.tol["float32"]
        want = expected[key].astype(np.float32)
        # Rounding errors scale with the size of the numbers a tensor's update combines, not with each
        # element: an element near 0 in a tensor of magnitude 15 carries the tensor's absolute error.
        atol = tol.atol * max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(actual[key], want, rtol=tol.rtol, atol=atol,
                                   err_msg=f"{key} ({tol.reason}); case kwargs {case['kwargs']}")
    assert int(actual[f"{cid}/num_update"]) == results[cid]["num_update"]
