"""The Adam family's native kernels (optzoo/native/src/rules_adam.cpp) against the readable reference path:
Adam, AdamW, AdaBelief, Adamax and Nadam; float32, multi-precision float16/bfloat16, Adam's lazy sparse update,
AdamW/AdaBelief's single-tensor rounding (a call with a sparse gradient) and Nadam's shared momentum schedule."""

from __future__ import annotations

import pytest
import torch
from native_support import refuse, require_native

from optzoo import optimizer as opt
from optzoo.optimizer.base import _leaves

RTOL, ATOL = 1e-5, 1e-6
# (5, 3): tiny; 7: not a multiple of 16; (33, 1001): 33033 elements, several chunks (kChunk = 32768)
SHAPES = [(5, 3), (7,), (33, 1001)]
STEPS = 50

DECOUPLED = [{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"correct_bias": False, "wd": 0.1},
             {"epsilon": 1e-3, "clip_gradient": 0.4, "rescale_grad": 0.5, "wd": 0.05},
             {"learning_rate": 0.01, "wd": 0.01, "clip_gradient": 0.05}]
CONFIGS = {
    "adam": [{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"clip_gradient": 0.4, "rescale_grad": 0.5, "wd": 0.05},
             {"learning_rate": 0.01, "epsilon": 1e-3}],
    "adamw": DECOUPLED,
    "adabelief": DECOUPLED,
    "adamax": [{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"beta2": 1.0, "clip_gradient": 0.4},
               {"epsilon": 1e-3, "rescale_grad": 0.5, "wd": 0.05}, {"learning_rate": 0.02}],
    "nadam": [{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"schedule_decay": 0.008, "clip_gradient": 0.4},
              {"schedule_scope": "parameter", "wd": 0.05, "rescale_grad": 0.5},
              {"learning_rate": 0.01, "schedule_decay": 0.0}],
}
CASES = [(name, i, cfg) for name, cfgs in CONFIGS.items() for i, cfg in enumerate(cfgs)]
IDS = [f"{name}-{i}" for name, i, _ in CASES]


def _grads(gen, weights, dtype=None):
    return [(torch.randn(w.shape, generator=gen) * 0.5).to(dtype or w.dtype) for w in weights]


def _run(name, impl, weights, steps=STEPS, seed=0, mults=False, **kwargs):
    """`steps` updates of all weights through update_multi_precision; returns (optimizer, weights, states)."""
    o = opt.create(name, impl=impl, **kwargs)
    if mults:  # per-tensor learning rates and weight decays, one tensor without decay
        o.set_lr_mult({1: 0.5})
        o.set_wd_mult({0: 0.0, 2: 2.0})
    ws = [w.clone() for w in weights]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(ws)]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        o.update_multi_precision(list(range(len(ws))), ws, _grads(gen, ws), states)
    return o, ws, states


def _assert_close_all(a, b, rtol=RTOL, atol=ATOL):
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, k=k: f"tensor {k}: {m}")


def _weights(dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]


# ------------------------------------------------------------------------------------------ float32
@pytest.mark.parametrize("name,i,cfg", CASES, ids=IDS)
def test_native_matches_reference(name, i, cfg, no_foreach):
    require_native()
    weights = _weights()
    o, ws, states = _run(name, "native", weights, seed=i, **cfg)
    assert o.impl == "native"
    r, rws, rstates = _run(name, "reference", weights, seed=i, **cfg)
    _assert_close_all(ws, rws)
    _assert_close_all([t for s in states for t in _leaves(s)], [t for s in rstates for t in _leaves(s)])
    if name != "adam" and (not cfg.get("wd") or name == "adamw"):
        # the moments do not depend on the weight here: the kernel rounds them exactly as the reference (only the
        # weights differ, by torch's float32 sqrt, which is not correctly rounded on every CPU). Adam's reference
        # moments use torch's add(alpha=), a fused multiply-add in torch's vector kernels: close, not equal.
        for a, b in zip(states, rstates):
            assert all(torch.equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))
    if name == "adamax":  # no square root at all: bit for bit
        assert all(torch.equal(a, b) for a, b in zip(ws, rws))
    assert o.num_update == r.num_update == STEPS and o._index_update_count == r._index_update_count
    assert o.extra_state() == r.extra_state()  # Nadam: the shared m_schedule, exactly


@pytest.mark.parametrize("name", list(CONFIGS))
def test_per_tensor_rates_and_decays(name, no_foreach):
    """lr_mult/wd_mult give each tensor its own scalars; one tensor has no decay at all (the reference's `if wd`)."""
    require_native()
    weights = _weights()
    _, ws, states = _run(name, "native", weights, mults=True, wd=0.02)
    _, rws, rstates = _run(name, "reference", weights, mults=True, wd=0.02)
    _assert_close_all(ws + [t for s in states for t in _leaves(s)], rws + [t for s in rstates for t in _leaves(s)])


# ------------------------------------------------------------------------------------------ multi-precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_multi_precision(name, dtype, no_foreach):
    require_native()
    weights = _weights(dtype)
    cfg = {"multi_precision": True, "wd": 0.01, "clip_gradient": 1.0}
    o, ws, states = _run(name, "native", weights, **cfg)
    assert o.impl == "native"
    _, rws, rstates = _run(name, "reference", weights, **cfg)
    for w, (master, _) in zip(ws, states):
        assert w.dtype == dtype and torch.equal(w, master.to(dtype))
    _assert_close_all([s[0] for s in states], [s[0] for s in rstates])
    _assert_close_all([t for s in states for t in _leaves(s[1])], [t for s in rstates for t in _leaves(s[1])])
    for w, rw in zip(ws, rws):  # the rounded weights differ by at most one low-precision step
        torch.testing.assert_close(w.float(), rw.float(), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------------------------------ Adam: lazy sparse
def _sparse_rows(rows, values, shape):
    idx = torch.tensor([rows], dtype=torch.int64)
    return torch.sparse_coo_tensor(idx, values, shape, check_invariants=True)


@pytest.mark.parametrize("wd", [0.0, 0.02])
def test_adam_lazy_sparse(wd, monkeypatch):
    require_native()
    gen = torch.Generator().manual_seed(3)
    shape = (40, 900)  # 36000 elements
    w0 = torch.randn(shape, generator=gen)
    touched = set()
    schedule = []
    for _ in range(STEPS):
        rows = sorted(torch.randperm(30, generator=gen)[:5].tolist())  # rows 30..39 are never touched
        touched.update(rows)
        schedule.append((rows, torch.randn(len(rows), shape[1], generator=gen)))
    out = {}
    for impl in ("native", "reference"):
        o = opt.create("adam", impl=impl, lazy_update=True, wd=wd, learning_rate=0.01)
        if impl == "native":  # a fallback would run the reference rule on the gathered rows
            monkeypatch.setattr(type(o), "_reference_rule", refuse)
        w = w0.clone()
        state = o.create_state(0, w)
        for rows, values in schedule:
            o.update([0], [w], [_sparse_rows(rows, values, shape)], [state])
        monkeypatch.undo()
        out[impl] = (w, state)
    (w, state), (rw, rstate) = out["native"], out["reference"]
    untouched = sorted(set(range(shape[0])) - touched)
    assert untouched and torch.equal(w[untouched], w0[untouched])
    for s in state:
        assert torch.equal(s[untouched], torch.zeros(len(untouched), shape[1]))
    _assert_close_all([w, *state], [rw, *rstate])


def test_adam_lazy_sparse_multi_precision():
    require_native()
    gen = torch.Generator().manual_seed(4)
    shape = (12, 50)
    w0 = torch.randn(shape, generator=gen).to(torch.bfloat16)
    schedule = [([1, 4, 7], torch.randn(3, shape[1], generator=gen).to(torch.bfloat16)) for _ in range(20)]
    out = {}
    for impl in ("native", "reference"):
        o = opt.create("adam", impl=impl, lazy_update=True, multi_precision=True, learning_rate=0.01)
        w = w0.clone()
        state = o.create_state_multi_precision(0, w)
        for rows, values in schedule:
            o.update_multi_precision([0], [w], [_sparse_rows(rows, values, shape)], [state])
        out[impl] = (w, state)
    (w, (master, st)), (rw, (rmaster, rst)) = out["native"], out["reference"]
    assert torch.equal(w, master.to(torch.bfloat16)) and torch.equal(w[[0, 2, 11]], w0[[0, 2, 11]])
    _assert_close_all([master, *st], [rmaster, *rst])
    torch.testing.assert_close(w.float(), rw.float(), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------------------------------ AdamW/AdaBelief
@pytest.mark.parametrize("wd", [0.0, 0.02])
@pytest.mark.parametrize("name", ["adamw", "adabelief"])
def test_call_with_a_sparse_gradient_uses_single_tensor_rounding(name, wd, no_foreach):
    """A call holding a sparse gradient runs MXNet's single-tensor kernel (densified gradients, `aggregated`
    False): the native kernel takes that rounding too, for every tensor of the call."""
    require_native()
    weights = _weights()
    out = {}
    for impl in ("native", "reference"):
        o = opt.create(name, impl=impl, wd=wd, beta1=0.7, beta2=0.9)
        ws = [w.clone() for w in weights]
        states = [o.create_state(i, w) for i, w in enumerate(ws)]
        gen = torch.Generator().manual_seed(5)
        for _ in range(30):
            grads = _grads(gen, ws)
            grads[0] = grads[0].to_sparse()
            o.update(list(range(len(ws))), ws, grads, states)
        out[impl] = ws + [t for s in states for t in s]
        assert o._aggregated  # restored after every call
    _assert_close_all(out["native"], out["reference"])
    n = len(weights)
    if wd == 0.0 or name == "adamw":  # moments independent of the weight: exactly the reference's rounding
        assert all(torch.equal(a, b) for a, b in zip(out["native"][n:], out["reference"][n:]))
    # the two roundings do differ: the all-dense (aggregated) run is not the same trajectory
    _, dense_ws, dense_states = _run(name, "native", weights, steps=30, seed=5, wd=wd, beta1=0.7, beta2=0.9)
    dense = dense_ws + [t for s in dense_states for t in s]
    assert not all(torch.equal(a, b) for a, b in zip(dense[n:], out["native"][n:]))


@pytest.mark.parametrize("name", ["adamw", "adabelief"])
def test_hyperparameters_reach_the_kernel(name):
    o = opt.create(name, beta1=0.5, beta2=0.8, epsilon=1e-3, rescale_grad=0.25, correct_bias=False)
    assert o._native_hyper() == [0.5, 0.8, 1e-3, 0.25, -1.0, 0.0, 1.0]
    assert opt.create(name, clip_gradient=0.3)._native_hyper()[4] == 0.3


# ------------------------------------------------------------------------------------------ Adamax
def test_adamax_nan_propagates_through_the_infinity_norm():
    """torch.maximum returns NaN when either side is NaN; so does the kernel."""
    require_native()
    out = {}
    for impl in ("native", "reference"):
        o = opt.create("adamax", impl=impl)
        w = torch.ones(20)
        state = o.create_state(0, w)
        g = torch.full((20,), 0.5)
        g[3] = float("nan")
        o.update([0], [w], [g], [state])
        o.update([0], [w], [torch.full((20,), 0.5)], [state])
        out[impl] = (w, *state)
    for a, b in zip(out["native"], out["reference"]):
        assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.isnan(a[3])
        torch.testing.assert_close(a, b, equal_nan=True)


# ------------------------------------------------------------------------------------------ Nadam's schedule
def test_nadam_schedule_follows_the_reference_over_partial_and_mixed_calls(no_foreach):
    """The shared m_schedule advances once per tensor update in update order, whatever the call pattern."""
    require_native()
    weights = _weights()
    calls = [[0, 1, 2], [2], [1, 0], [0, 1, 2], [2, 0]] * 4
    out = {}
    for impl in ("native", "reference"):
        o = opt.create("nadam", impl=impl, wd=0.01)
        o.set_lr_mult({2: 0.5})
        ws = [w.clone() for w in weights]
        states = [o.create_state(i, w) for i, w in enumerate(ws)]
        gen = torch.Generator().manual_seed(6)
        schedules = []
        for idx in calls:
            grads = _grads(gen, ws)
            o.update(idx, [ws[i] for i in idx], [grads[i] for i in idx], [states[i] for i in idx])
            schedules.append(o.m_schedule)
        out[impl] = (ws + [t for s in states for t in s], schedules, o.extra_state(), dict(o._index_update_count))
    (nat, nsched, nextra, ncount), (ref, rsched, rextra, rcount) = out["native"], out["reference"]
    assert nsched == rsched and nextra == rextra and ncount == rcount  # exact float64 equality
    _assert_close_all(nat, ref)


def test_nadam_declined_call_advances_the_schedule_once():
    """A call the kernel declines (a non-contiguous weight) runs the torch path: m_schedule advances there,
    once per tensor, never also for the declined native attempt."""
    require_native()
    out = {}
    for impl in ("native", "reference"):
        o = opt.create("nadam", impl=impl)
        ws = [torch.ones(6), torch.ones(8, 4).t()]  # the second is not contiguous
        states = [o.create_state(i, w) for i, w in enumerate(ws)]
        for _ in range(3):
            o.update([0, 1], ws, [torch.full((6,), 0.1), torch.full((4, 8), 0.2)], states)
        out[impl] = (o.m_schedule, ws)
    assert out["native"][0] == out["reference"][0]
    _assert_close_all(out["native"][1], out["reference"][1])


def test_nadam_aux_leaves_the_schedule_alone_until_commit():
    o = opt.create("nadam")
    o.m_schedule = 0.5
    aux, commit = o._native_aux([0, 1], 0.001, [1, 1])
    assert o.m_schedule == 0.5 and len(aux) == 10
    mu1 = 0.9 * (1.0 - 0.5 * 0.96 ** 0.004)
    assert aux[2] == 0.5 * mu1 and aux[7] == 0.5 * mu1 * mu1
    commit()
    assert o.m_schedule == 0.5 * mu1 * mu1


def test_nadam_checkpoint_resumes_identically():
    require_native()
    weights = _weights()
    o, ws, states = _run("nadam", "native", weights, steps=10)
    resumed = opt.create("nadam", impl="native")
    resumed.load_extra_state(o.extra_state())
    resumed._index_update_count = dict(o._index_update_count)
    resumed.num_update = o.num_update
    ws2 = [w.clone() for w in ws]
    states2 = [tuple(t.clone() for t in s) for s in states]
    gen = torch.Generator().manual_seed(9)
    for _ in range(5):
        grads = _grads(gen, ws)
        o.update([0, 1, 2], ws, grads, states)
        resumed.update([0, 1, 2], ws2, [g.clone() for g in grads], states2)
    assert o.m_schedule == resumed.m_schedule
    for a, b in zip(ws, ws2):
        assert torch.equal(a, b)
