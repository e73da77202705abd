"""Timing inside the benchmark's own process: optzoo (``impl='auto'`` and ``'reference'``), torch.optim (each of
its implementations) and the SoL touch kernel over the very tensors optzoo just updated."""

from __future__ import annotations

import contextlib
import gc
import os
import sys

import torch

from .modern import MODERN_SPECS, REFERENCE_LABEL, make_reference
from .shapes import numel
from .sol import MAX_STATES, SolUnavailable, TouchKernel
from .timing import time_step

__all__ = ["SPECS", "DEFAULT_OPTIMIZERS", "TORCH_VARIANTS", "time_step", "make_grads", "peak_extra_bytes",
           "run_optzoo", "run_torch", "torch_variants"]

#: optimizer -> (optzoo/MXNet keyword arguments, torch.optim class name or None, torch keyword arguments).
#: The same hyperparameters go to MXNet (optzoo uses MXNet 2.0's argument names).
SPECS = {
    "sgd": ({"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4}, "SGD",
            {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}),
    "adam": ({"learning_rate": 1e-3}, "Adam", {"lr": 1e-3}),
    # torch scales the decoupled decay by lr, MXNet's AdamW does not; the memory traffic is the same
    "adamw": ({"learning_rate": 1e-3, "wd": 1e-2}, "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),
    "adagrad": ({"learning_rate": 0.01}, "Adagrad", {"lr": 0.01}),
    "rmsprop": ({"learning_rate": 0.01}, "RMSprop", {"lr": 0.01, "alpha": 0.9}),
    "adadelta": ({"learning_rate": 1.0}, "Adadelta", {"lr": 1.0, "rho": 0.9, "eps": 1e-6}),
    "adamax": ({"learning_rate": 2e-3}, "Adamax", {"lr": 2e-3}),
    "nadam": ({"learning_rate": 2e-3}, "NAdam", {"lr": 2e-3}),
    "nag": ({"learning_rate": 0.01, "momentum": 0.9}, None, {}),
    "signum": ({"learning_rate": 0.01, "momentum": 0.9}, None, {}),
    "lamb": ({"learning_rate": 1e-3}, None, {}),
    "lans": ({"learning_rate": 1e-3}, None, {}),
    "lars": ({"learning_rate": 0.1, "momentum": 0.9}, None, {}),
    "ftrl": ({"learning_rate": 0.1}, None, {}),
    "ftml": ({"learning_rate": 2.5e-3}, None, {}),
    "adabelief": ({"learning_rate": 1e-3}, None, {}),
    "dcasgd": ({"learning_rate": 0.01, "momentum": 0.9}, None, {}),
    "sgld": ({"learning_rate": 1e-3}, None, {}),
}
DEFAULT_OPTIMIZERS = tuple(SPECS)
# the optimizers that came after MXNet, timed against their reference packages; opt-in (--optimizers lion,...)
SPECS.update({name: (kwargs, None, {}) for name, (kwargs, _, _) in MODERN_SPECS.items()})
#: torch.optim implementations: label -> constructor keyword arguments
TORCH_VARIANTS = {"torch for-loop": {"foreach": False}, "torch foreach": {"foreach": True},
                  "torch fused": {"fused": True}}


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2 (the profiler's C++ side prints two log lines per use)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(step) -> int:
    """Peak bytes held by torch's CPU allocator during one ``step()`` beyond what was held before it.

    Every allocation and free of the step is recorded by ``torch.profiler`` (``profile_memory=True``); the peak
    of their running sum is the step's temporary memory (0 for a purely in-place step). The state itself is
    created in the warm-up step, so it is not counted."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def make_grads(shapes, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * 0.1 for shape in shapes]


def _weights(shapes, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * 0.1 for shape in shapes]


def _full_state_lists(states, weights):
    """The state tensors of each weight that have the weight's size (the ones a step must stream)."""
    from optzoo.optimizer.base import _leaves

    per_weight = [[leaf for leaf in _leaves(s) if leaf.numel() == w.numel()] for s, w in zip(states, weights)]
    counts = {len(x) for x in per_weight}
    if len(counts) != 1:
        raise ValueError(f"tensors of one optimizer carry different numbers of states: {sorted(counts)}")
    n = counts.pop()
    return [[x[k] for x in per_weight] for k in range(n)]


def _result(seconds, samples, params, bytes_per_param, sol_s, peak):
    out = {"ms": seconds * 1e3, "samples_ms": [s * 1e3 for s in samples],
           "gbps": params * bytes_per_param / seconds / 1e9 if bytes_per_param else None,
           "pct_sol": 100.0 * sol_s / seconds if sol_s else None, "peak_extra_mb": peak / 2**20}
    return out


def run_optzoo(name, shapes, grads, impl, repeats, target_s, threads, with_sol):
    """Times optzoo's ``name`` through ``create`` + ``update_multi_precision``; with ``with_sol`` also the touch
    kernel over its tensors. Returns (row, n_states, sol dict or None)."""
    import optzoo.optimizer as oo

    kwargs, _, _ = SPECS[name]
    weights = _weights(shapes)
    opt = oo.create(name, impl=impl, **kwargs)
    indices = list(range(len(weights)))
    states = [opt.create_state_multi_precision(i, w) for i, w in zip(indices, weights)]

    def step():
        opt.update_multi_precision(indices, weights, grads, states)

    step()  # warm-up
    state_lists = _full_state_lists(states, weights)
    n_states = len(state_lists)
    params = sum(numel(s) for s in shapes)
    from .sol import bytes_per_param

    bpp = bytes_per_param(n_states)
    peak = peak_extra_bytes(step)
    seconds, samples = time_step(step, repeats, target_s)
    sol = None
    if with_sol:
        if n_states > MAX_STATES:
            sol = {"error": f"{n_states} state tensors: no touch kernel"}
        else:
            try:
                kernel = TouchKernel(weights, grads, state_lists, threads)
                kernel()
                sol_s, sol_samples = time_step(kernel, max(repeats, 3), target_s)
                sol = {"ms": sol_s * 1e3, "samples_ms": [s * 1e3 for s in sol_samples],
                       "gbps": params * bpp / sol_s / 1e9, "kernel": f"touch_s{n_states}",
                       "bytes_per_param": bpp}
            except SolUnavailable as err:
                sol = {"error": str(err)}
    row = _result(seconds, samples, params, bpp, (sol or {}).get("ms", 0) / 1e3, peak)
    row["impl"] = opt.impl
    gc.collect()
    return row, n_states, sol


def torch_variants(name) -> dict[str, dict]:
    _, cls, _ = SPECS[name]
    if name in MODERN_SPECS:
        return {REFERENCE_LABEL: {}}
    return {} if cls is None else dict(TORCH_VARIANTS)


def run_torch(name, variant, shapes, grads, repeats, target_s, bytes_per_param, sol_s):
    """Times ``torch.optim.<cls>(..., **TORCH_VARIANTS[variant]).step()``; None when torch lacks that variant."""
    _, cls, tkwargs = SPECS[name]
    params = [w.requires_grad_(True) for w in _weights(shapes)]
    for p, g in zip(params, grads):
        p.grad = g
    try:
        if variant == REFERENCE_LABEL:
            opt = make_reference(name, params)
        else:
            opt = getattr(torch.optim, cls)(params, **tkwargs, **TORCH_VARIANTS[variant])
        opt.step()  # warm-up; also where an unsupported fused variant raises
    except (RuntimeError, ValueError, TypeError, ImportError) as err:
        return {"unavailable": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    peak = peak_extra_bytes(opt.step)
    seconds, samples = time_step(opt.step, repeats, target_s)
    n = sum(numel(s) for s in shapes)
    del opt, params
    gc.collect()
    return _result(seconds, samples, n, bytes_per_param, sol_s, peak)
