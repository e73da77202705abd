"""Timing inside the benchmark's own process: optzoo (``impl='auto'`` and ``'reference'``), torch.optim (each of
its implementations) and the SoL touch kernel over the very tensors optzoo just updated."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time

import torch

from .modern import MODERN_SPECS, REFERENCE_LABEL, make_reference
from .shapes import numel
from .sol import MAX_STATES, PassKernel, SolUnavailable, TouchKernel
from .timing import time_step

__all__ = ["SPECS", "DEFAULT_OPTIMIZERS", "MULTI_PASS", "TORCH_VARIANTS", "time_step", "make_grads",
           "peak_extra_bytes", "run_compiled", "run_optzoo", "run_torch", "run_torch_compiled", "torch_variants"]

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
    # MXNet 1.x's large-batch SGD with the per-layer lars ratio (MXNet 2.0 has no lbsgd: its column stays empty)
    "lbsgd": ({"learning_rate": 0.1, "momentum": 0.9, "warmup_strategy": "lars"}, None, {}),
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
#: Rules whose update needs per-tensor norms (or sums over all tensors) first: the passes of their multi-pass floor,
#: each as (lists written, lists only read[, "matrices"]), indices into [weights, grads, *full-size states];
#: "matrices": the pass covers the tensors of 2 or more dimensions only. Pass 1 reads what the norms need (LAMB and
#: LANS advance their moments there), the last pass moves the update's bytes; LANS first reads the gradient alone
#: for its norm (its moments need the normalised gradient). MARS: the norm of each matrix's corrected gradient
#: (g, g_prev), then the update (its 1-D tensors: a one-pass AdamW step); Prodigy: the moments, s and the d
#: estimate's sums (w, g, p0, s, m, v), then the weights with the new d (w, m, v).
MULTI_PASS = {
    "lars": [((), (0, 1)), ((0, 2), (1,))],
    "lbsgd": [((), (0, 1)), ((0, 2), (1,))],
    "lamb": [((2, 3), (0, 1)), ((0,), (2, 3))],
    "lans": [((), (1,)), ((2, 3), (0, 1)), ((0,), (1, 2, 3))],
    "mars": [((), (1, 4), "matrices"), ((0, 2, 3, 4), (1,))],
    "prodigy": [((3, 4, 5), (0, 1, 2)), ((0,), (4, 5))],
}


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


def _synced(step, device: torch.device):
    """``step`` that waits for the device, so that timing it measures the work (CUDA runs asynchronously)."""
    if device.type != "cuda":
        return step

    def synced():
        step()
        torch.cuda.synchronize(device)

    return synced


def peak_extra_bytes(step, device: torch.device | None = None) -> int:
    """Peak bytes held by torch's CPU allocator during one ``step()`` beyond what was held before it.

    Every allocation and free of the step is recorded by ``torch.profiler`` (``profile_memory=True``); the peak
    of their running sum is the step's temporary memory (0 for a purely in-place step). The state itself is
    created in the warm-up step, so it is not counted. On CUDA: the rise of the allocator's peak over one step."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
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


def make_grads(shapes, seed: int = 0, device="cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen) * 0.1).to(device) for shape in shapes]


def _weights(shapes, seed: int = 1, device="cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen) * 0.1).to(device) for shape in shapes]


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
    device = grads[0].device
    weights = _weights(shapes, device=device)
    opt = oo.create(name, impl=impl, **kwargs)
    indices = list(range(len(weights)))
    states = [opt.create_state_multi_precision(i, w) for i, w in zip(indices, weights)]

    def step():
        opt.update_multi_precision(indices, weights, grads, states)

    step = _synced(step, device)
    step()  # warm-up
    state_lists = _full_state_lists(states, weights)
    n_states = len(state_lists)
    params = sum(numel(s) for s in shapes)
    from .sol import bytes_per_param

    bpp = bytes_per_param(n_states)
    peak = peak_extra_bytes(step, device)
    seconds, samples = time_step(step, repeats, target_s)
    sol = None
    if with_sol and device.type == "cuda":
        bandwidth = device_bandwidth(device, repeats, target_s)
        sol = {"ms": params * bpp / bandwidth * 1e3, "gbps": bandwidth / 1e9, "bytes_per_param": bpp,
               "kernel": "a.add_(b) bandwidth"}
    elif with_sol:
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
                if name in MULTI_PASS:
                    sol.update(_floor(MULTI_PASS[name], [weights, grads, *state_lists], threads, repeats, target_s))
            except SolUnavailable as err:
                sol = {"error": str(err)}
    row = _result(seconds, samples, params, bpp, (sol or {}).get("ms", 0) / 1e3, peak)
    if (sol or {}).get("floor_ms"):
        row["pct_floor"] = 100.0 * sol["floor_ms"] / row["ms"]
    row["impl"] = opt.impl
    gc.collect()
    return row, n_states, sol


def device_bandwidth(device: torch.device, repeats: int, target_s: float, numel: int = 1 << 26) -> float:
    """Bytes per second of ``a.add_(b)`` on ``device`` (reads a and b, writes a: 12 bytes per float32 element): the
    speed of light of a step on a GPU, where optzoo has no kernels of its own to time."""
    a, b = torch.zeros(numel, device=device), torch.ones(numel, device=device)
    step = _synced(lambda: a.add_(b, alpha=1e-30), device)
    step()
    seconds, _ = time_step(step, max(repeats, 3), target_s)
    return 12 * numel / seconds


def _floor(passes, lists, threads, repeats, target_s) -> dict:
    """The multi-pass floor: the sum of the pass kernels' times over the step's own tensors (a "matrices" pass over
    those of 2 or more dimensions only: its bytes per parameter count in proportion)."""
    times, samples = [], []
    params = sum(w.numel() for w in lists[0])
    bytes_moved = 0.0
    for written, read, *which in passes:
        keep = [i for i, w in enumerate(lists[0]) if not which or w.dim() >= 2]
        if not keep:
            continue
        chosen = [[lst[i] for i in keep] for lst in lists]
        kernel = PassKernel([chosen[k] for k in written], [chosen[k] for k in read], threads)
        kernel()
        seconds, runs = time_step(kernel, max(repeats, 3), target_s)
        times.append(seconds)
        samples.append([x * 1e3 for x in runs])
        bytes_moved += 4 * (len(written) * 2 + len(read)) * sum(lists[0][i].numel() for i in keep) / params
    return {"floor_ms": sum(times) * 1e3, "floor_passes_ms": [t * 1e3 for t in times], "floor_samples_ms": samples,
            "floor_bytes_per_param": round(bytes_moved, 1) if bytes_moved % 1 else int(bytes_moved)}


def torch_variants(name) -> dict[str, dict]:
    _, cls, _ = SPECS[name]
    if name in MODERN_SPECS:
        return {REFERENCE_LABEL: {}}
    return {} if cls is None else dict(TORCH_VARIANTS)


def run_torch(name, variant, shapes, grads, repeats, target_s, bytes_per_param, sol_s):
    """Times ``torch.optim.<cls>(..., **TORCH_VARIANTS[variant]).step()``; None when torch lacks that variant."""
    _, cls, tkwargs = SPECS[name]
    device = grads[0].device
    params = [w.requires_grad_(True) for w in _weights(shapes, device=device)]
    for p, g in zip(params, grads):
        p.grad = g
    try:
        if variant == REFERENCE_LABEL:
            opt = make_reference(name, params)
        else:
            opt = getattr(torch.optim, cls)(params, **tkwargs, **TORCH_VARIANTS[variant])
        step = _synced(opt.step, device)
        step()  # warm-up; also where an unsupported fused variant raises
    except (RuntimeError, ValueError, TypeError, ImportError) as err:
        return {"unavailable": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    peak = peak_extra_bytes(step, device)
    seconds, samples = time_step(step, repeats, target_s)
    n = sum(numel(s) for s in shapes)
    del opt, params
    gc.collect()
    return _result(seconds, samples, n, bytes_per_param, sol_s, peak)


# ------------------------------------------------------------------------------------------ torch.compile
def _time_compiled(step, repeats, target_s, params, bytes_per_param, sol_s) -> dict:
    """Times a compiled ``step`` after its first call (the compile, reported as ``compile_s``) and a second one (any
    recompile for the steady state); a column that cannot be measured says why and the run goes on."""
    from torch._dynamo.utils import counters

    try:
        start = time.perf_counter()
        step()
        compile_s = time.perf_counter() - start
        step()
        graphs = counters["stats"]["unique_graphs"]
        seconds, samples = time_step(step, repeats, target_s)
        if counters["stats"]["unique_graphs"] != graphs:
            return {"error": "recompiled while timed"}
    except Exception as err:  # torch.compile can fail in many ways (no C++ compiler, an unsupported op, ...)
        return {"error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"}
    finally:
        torch._dynamo.reset()
        gc.collect()
    out = _result(seconds, samples, params, bytes_per_param, sol_s, 0)
    out.pop("peak_extra_mb")
    out["compile_s"] = compile_s
    return out


def run_compiled(name, shapes, grads, repeats, target_s, bytes_per_param, sol_s) -> dict:
    """What a user compiles of optzoo's rule: :class:`optzoo.optimizer.traced.TracedStep`, ``torch.compile`` of the
    foreach arithmetic with the per-step scalars as tensors. The whole ``update`` is timed: bookkeeping, update
    counts advancing, the scalars handed over (no recompilation). A rule that does not split so (LAMB, FTML, ...)
    has no compiled form to time: under ``torch.compile`` :class:`optzoo.TorchOptimizer` runs its eager step as one
    opaque operator, which is the optzoo column."""
    import optzoo.optimizer as oo
    from optzoo.optimizer.traced import TracedStep, supports_tracing

    kwargs, _, _ = SPECS[name]
    weights = _weights(shapes, device=grads[0].device)
    opt = oo.create(name, impl="foreach", **kwargs)
    if not supports_tracing(opt):
        return {"unavailable": "no traced step: under torch.compile this rule runs its eager step (the optzoo column)"}
    indices = list(range(len(weights)))
    states = [opt.create_state(i, w) for i, w in zip(indices, weights)]
    traced = TracedStep(opt)
    step = _synced(lambda: traced.update(indices, weights, grads, states), grads[0].device)
    return _time_compiled(step, repeats, target_s, sum(numel(s) for s in shapes), bytes_per_param, sol_s)


#: ``torch.compile`` of torch.optim's step traces one graph over all tensors; its compile time grows with their number
#: (about 35 minutes a rule for the 2,000 tensors of ``many-small`` on this project's 2 cores), so larger sets are
#: not timed
TORCH_COMPILED_MAX_TENSORS = 500


def run_torch_compiled(name, shapes, grads, repeats, target_s, bytes_per_param, sol_s) -> dict:
    """``torch.compile`` of ``torch.optim.<cls>.step`` (the way PyTorch's tutorial compiles an optimizer step)."""
    _, cls, tkwargs = SPECS[name]
    if cls is None:  # the optimizers torch.optim lacks (Lion, ADOPT, ...: their SPECS entries have no class)
        return {"unavailable": "torch.optim has no such optimizer"}
    if len(shapes) > TORCH_COMPILED_MAX_TENSORS:
        return {"unavailable": f"not measured over {len(shapes):,} tensors: torch.compile of torch.optim's step "
                               f"compiles one graph over all of them (about 35 min a rule for 2,000 here)"}
    params = [w.requires_grad_(True) for w in _weights(shapes, device=grads[0].device)]
    for p, g in zip(params, grads):
        p.grad = g
    opt = getattr(torch.optim, cls)(params, **tkwargs)
    step = _synced(torch.compile(opt.step), grads[0].device)
    return _time_compiled(step, repeats, target_s, sum(numel(s) for s in shapes), bytes_per_param, sol_s)
