"""Builds optimizer trajectory cases and runs them in optzoo; the same cases run in MXNet through
tests/oracle/optimizer_driver.py, so the two trajectories can be compared step for step."""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch

from optzoo import optimizer as opt

SHAPES = [(3, 4, 5), (10, 4), (7,)]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _Param:
    def __init__(self, lr_mult=1.0, wd_mult=1.0):
        self.lr_mult = lr_mult
        self.wd_mult = wd_mult


def grid_cases(axes: list[list[dict]], n_random: int, seed: int) -> list[dict]:
    """A covering sample of a hyperparameter grid: the all-default case, every value of every axis once,
    and ``n_random`` random full combinations (the full product is thousands of runs)."""
    out = [{}]
    for axis in axes:
        for value in axis:
            if value and value not in out:
                out.append(dict(value))
    rng = random.Random(seed)
    combos = list(itertools.product(*axes))
    for combo in rng.sample(combos, min(n_random, len(combos))):
        merged = {}
        for part in combo:
            merged.update(part)
        if merged not in out:
            out.append(merged)
    return out


def make_case(cid: str, name: str, kwargs: dict, *, steps: int = 100, dtype: str = "float32", seed: int = 0,
              shapes=SHAPES, sparse=(), lr_mult=None, wd_mult=None, scheduler=None, set_lr=None,
              record=(10, 50), grad_scale: float = 1.0, arrays: dict | None = None, noise_seed=None) -> dict:
    """A case dict (JSON) whose numpy inputs are written into ``arrays``."""
    rng = np.random.default_rng(seed)
    np_dtype = np.float32 if dtype != "float16" else np.float16
    for i, shape in enumerate(shapes):
        arrays[f"{cid}/w0/{i}"] = rng.uniform(-1, 1, shape).astype(np_dtype)
    for k in range(steps):
        for i, shape in enumerate(shapes):
            g = (rng.standard_normal(shape) * grad_scale).astype(np_dtype)
            if i in sparse:
                rows = np.sort(rng.choice(shape[0], size=max(1, shape[0] // 2), replace=False)).astype(np.int64)
                arrays[f"{cid}/gv/{k}/{i}"] = g[rows]
                arrays[f"{cid}/gr/{k}/{i}"] = rows
            else:
                arrays[f"{cid}/g/{k}/{i}"] = g
    case = {"id": cid, "name": name, "kwargs": kwargs, "dtype": dtype, "ntensors": len(shapes),
            "steps": steps, "sparse": list(sparse), "record": list(record)}
    if lr_mult:
        case["lr_mult"] = {str(k): v for k, v in lr_mult.items()}
    if wd_mult:
        case["wd_mult"] = {str(k): v for k, v in wd_mult.items()}
    if scheduler:
        case["scheduler"] = scheduler
    if set_lr:
        case["set_lr"] = {str(k): v for k, v in set_lr.items()}
    if noise_seed is not None:
        case["seed"] = noise_seed
    return case


def flatten_state(state) -> list[torch.Tensor]:
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [leaf for item in state for leaf in flatten_state(item)]


def _kwargs(raw: dict) -> dict:
    return {k: (np.inf if v == "inf" else v) for k, v in raw.items()}


def build_optimizer(case: dict, **overrides) -> opt.Optimizer:
    from optzoo import lr_scheduler

    kwargs = _kwargs(case["kwargs"])
    kwargs.update(overrides)
    n = case["ntensors"]
    lr_mult = {int(k): v for k, v in case.get("lr_mult", {}).items()}
    wd_mult = {int(k): v for k, v in case.get("wd_mult", {}).items()}
    if lr_mult or wd_mult:
        kwargs["param_dict"] = {i: _Param(lr_mult.get(i, 1.0), wd_mult.get(i, 1.0)) for i in range(n)}
    sched = case.get("scheduler")
    if sched:
        kwargs["lr_scheduler"] = getattr(lr_scheduler, sched["type"])(**sched["kwargs"])
    return opt.create(case["name"], **kwargs)


def gradient(case: dict, arrays: dict, k: int, i: int, shape, dtype: torch.dtype) -> torch.Tensor:
    cid = case["id"]
    if i in case.get("sparse", []):
        values = torch.from_numpy(arrays[f"{cid}/gv/{k}/{i}"]).to(dtype)
        rows = torch.from_numpy(arrays[f"{cid}/gr/{k}/{i}"])
        return torch.sparse_coo_tensor(rows[None, :], values, shape)
    return torch.from_numpy(arrays[f"{cid}/g/{k}/{i}"]).to(dtype)


def run_case(case: dict, arrays: dict, **overrides) -> dict[str, np.ndarray]:
    """Runs a case through optzoo's Updater; returns the same keys as the MXNet driver."""
    cid, n = case["id"], case["ntensors"]
    dtype = DTYPES[case.get("dtype", "float32")]
    optimizer = build_optimizer(case, **overrides)
    updater = opt.get_updater(optimizer)
    weights = [torch.from_numpy(arrays[f"{cid}/w0/{i}"].copy()).to(dtype) for i in range(n)]
    set_lr = {int(k): v for k, v in case.get("set_lr", {}).items()}
    record = set(case.get("record", []))
    generator = None
    if "seed" in case:
        generator = torch.Generator().manual_seed(case["seed"])
    out = {}
    for k in range(case["steps"]):
        if k in set_lr:
            optimizer.set_learning_rate(set_lr[k])
        grads = [gradient(case, arrays, k, i, weights[i].shape, dtype) for i in range(n)]
        if generator is not None:
            optimizer.generator = generator
        updater(list(range(n)), grads, weights)
        if k + 1 in record:
            for i in range(n):
                out[f"{cid}/w@{k + 1}/{i}"] = weights[i].float().numpy().copy()
    for i in range(n):
        out[f"{cid}/w/{i}"] = weights[i].float().numpy()
        for j, leaf in enumerate(flatten_state(updater.states[i])):
            out[f"{cid}/s/{i}/{j}"] = leaf.float().numpy()
    out[f"{cid}/num_update"] = np.array(optimizer.num_update)
    return out
