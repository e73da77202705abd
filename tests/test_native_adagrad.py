"""The AdaGrad family's native kernels (optzoo/native/src/rules_adagrad.cpp) against the readable reference path:
AdaGrad, GroupAdaGrad (per-row history), RMSProp (plain and centered, clip_weights) and
AdaDelta; float32, multi-precision float16/bfloat16 and the lazy sparse updates of AdaGrad and GroupAdaGrad."""

from __future__ import annotations

import pytest
import torch
from native_support import refuse, require_native

from optzoo import optimizer as opt
from optzoo.optimizer.base import _leaves

RTOL, ATOL = 1e-5, 1e-6
# (5, 3): tiny; 7 and (7, 17): not multiples of 16; (33, 1001): 33033 elements, several chunks (kChunk = 32768);
# GroupAdaGrad: (50, 20) short rows summed 8 or 16 at once, (3, 40000) rows longer than a chunk, 1-D (rows of one
# element), 3-D (rows of 6*5) and 0-d (one row)
SHAPES = [(5, 3), (7,), (7, 17), (33, 1001)]
GROUP_SHAPES = [(5, 3), (50, 20), (7, 17), (33, 1001), (3, 40000), (9,), (4, 6, 5), ()]
STEPS = 50

CONFIGS = {
    "adagrad": [{}, {"epsilon": 1e-8, "wd": 0.03}, {"clip_gradient": 0.4, "rescale_grad": 0.14, "wd": 0.05},
                {"learning_rate": 0.1}],
    "groupadagrad": [{}, {"epsilon": 1e-8}, {"clip_gradient": 0.4, "rescale_grad": 0.14}, {"learning_rate": 0.1},
                     {"epsilon": 0.0}],
    "rmsprop": [{}, {"rho": 0.5, "wd": 0.03}, {"clip_weights": 0.3, "clip_gradient": 0.4, "rescale_grad": 0.14,
                                               "wd": 0.05},
                {"centered": True}, {"centered": True, "momentum": 0.0, "rho": 0.5, "wd": 0.03},
                {"centered": True, "clip_weights": 0.3, "epsilon": 1e-6, "learning_rate": 0.01,
                 "clip_gradient": 0.4}],
    "adadelta": [{}, {"rho": 0.5, "wd": 0.03}, {"epsilon": 1e-8, "clip_gradient": 0.4, "rescale_grad": 0.14},
                 {"learning_rate": 0.5, "rho": 0.95}],
}
CASES = [(name, i, cfg) for name, cfgs in CONFIGS.items() for i, cfg in enumerate(cfgs)]
IDS = [f"{name}-{i}" for name, i, _ in CASES]


def _grads(gen, weights, dtype=None):
    return [(torch.randn(w.shape, generator=gen) * 0.5).to(dtype or w.dtype) for w in weights]


def _weights(name, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype) for s in (GROUP_SHAPES if name == "groupadagrad" else SHAPES)]


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


def _exact_states(name, cfg, state):
    """The state tensors that do not depend on the weight nor on a square root: the kernel rounds them exactly as
    the reference (the rest differ by torch's float32 sqrt, which is not correctly rounded on every CPU)."""
    if cfg.get("wd"):
        return []
    if name == "adagrad" or (name == "rmsprop" and not cfg.get("centered")):
        return [state]
    if name == "rmsprop":
        return [state.mean, state.var]
    return [state.acc_g] if name == "adadelta" else []


# ------------------------------------------------------------------------------------------ float32
@pytest.mark.parametrize("name,i,cfg", CASES, ids=IDS)
def test_native_matches_reference(name, i, cfg, no_foreach):
    require_native()
    weights = _weights(name)
    o, ws, states = _run(name, "native", weights, seed=i, **cfg)
    assert o.impl == "native"
    r, rws, rstates = _run(name, "reference", weights, seed=i, **cfg)
    _assert_close_all(ws, rws)
    _assert_close_all([t for s in states for t in _leaves(s)], [t for s in rstates for t in _leaves(s)])
    for a, b in zip(states, rstates):
        for x, y in zip(_exact_states(name, cfg, a), _exact_states(name, cfg, b)):
            assert torch.equal(x, y)
    if cfg.get("clip_weights"):
        assert all(w.abs().max() <= cfg["clip_weights"] for w in ws)
    assert o.num_update == r.num_update == STEPS and o._index_update_count == r._index_update_count


@pytest.mark.parametrize("name,kwargs", [("adagrad", {}), ("rmsprop", {}), ("rmsprop", {"centered": True}),
                                         ("adadelta", {})], ids=["adagrad", "rmsprop", "rmsprop-centered", "adadelta"])
def test_per_tensor_rates_and_decays(name, kwargs, no_foreach):
    """lr_mult/wd_mult give each tensor its own scalars; one tensor has no decay at all (the reference's `if wd`)."""
    require_native()
    weights = _weights(name)
    _, ws, states = _run(name, "native", weights, mults=True, wd=0.02, **kwargs)
    _, rws, rstates = _run(name, "reference", weights, mults=True, wd=0.02, **kwargs)
    _assert_close_all(ws + [t for s in states for t in _leaves(s)], rws + [t for s in rstates for t in _leaves(s)])


def test_group_adagrad_lr_mult(no_foreach):
    require_native()
    weights = _weights("groupadagrad")
    _, ws, states = _run("groupadagrad", "native", weights, mults=True)
    _, rws, rstates = _run("groupadagrad", "reference", weights, mults=True)
    _assert_close_all(ws + states, rws + rstates)


# ------------------------------------------------------------------------------------------ GroupAdaGrad
def test_group_adagrad_rows_of_every_length(no_foreach):
    """Rows shorter and longer than the kernel's 16 partial sums, and longer than a chunk: the history (the row
    means of g^2, summed in another order than torch's) and the weights stay within float32 rounding."""
    require_native()
    cols = [*range(1, 40), 127, 128, 129, 1000, 4099, 40000]
    weights = [torch.randn(70 if c <= 256 else 3, c, generator=torch.Generator().manual_seed(c)) for c in cols]
    _, ws, states = _run("groupadagrad", "native", weights, steps=3, clip_gradient=0.9, rescale_grad=1.3)
    _, rws, rstates = _run("groupadagrad", "reference", weights, steps=3, clip_gradient=0.9, rescale_grad=1.3)
    _assert_close_all(states, rstates)
    _assert_close_all(ws, rws)


def test_group_adagrad_weight_decay_is_refused_before_writing():
    """wd set after construction: the kernel raises the Python paths' ValueError and writes nothing."""
    require_native()
    o = opt.create("groupadagrad", impl="native")
    o.wd = 0.1
    w = torch.ones(3, 2)
    state = o.create_state(0, w)
    with pytest.raises(ValueError, match="weight decay"):
        o.update([0], [w], [torch.ones(3, 2)], [state])
    with pytest.raises(ValueError, match="weight decay"):
        o.update([0], [w], [torch.ones(3, 2).to_sparse()], [state])
    assert torch.equal(w, torch.ones(3, 2)) and not state.any()


@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), ()])
def test_group_adagrad_takes_every_rank(shape, monkeypatch):
    """The kernel runs (no torch fallback) on weights of any rank, rows along the first dimension."""
    require_native()
    o = opt.create("groupadagrad", impl="native")
    monkeypatch.setattr(type(o), "_foreach_rule", refuse)
    w = torch.ones(shape)
    state = o.create_state(0, w)
    o.update([0], [w], [torch.full(shape, 2.0)], [state])
    assert state.shape == ((shape[0] if shape else 1), 1) and torch.equal(state, torch.full_like(state, 4.0))
    torch.testing.assert_close(w, torch.full(shape, 1.0 - 0.01 * 2.0 / (2.0 + 1e-6)))


# ------------------------------------------------------------------------------------------ RMSProp
def test_rmsprop_centered_switch_after_construction(no_foreach):
    """`centered` picks the kernel at each step (plain and centered states differ), also when changed later."""
    require_native()
    o = opt.create("rmsprop", impl="native")
    r = opt.create("rmsprop", impl="reference")
    w = torch.randn(40)
    rw = w.clone()
    for centered in (False, True, False):
        o.centered = r.centered = centered
        s, rs = o.create_state(0, w), r.create_state(0, rw)
        gen = torch.Generator().manual_seed(int(centered))
        for _ in range(10):
            g = torch.randn(40, generator=gen)
            o.update([0], [w], [g], [s])
            r.update([0], [rw], [g.clone()], [rs])
        assert o.impl == "native"
        _assert_close_all([w, *_leaves(s)], [rw, *_leaves(rs)])


def test_hyperparameters_reach_the_kernel():
    assert opt.create("adagrad", epsilon=1e-7, rescale_grad=0.5)._native_hyper() == [1e-7, 0.5, -1.0]
    assert opt.create("adagrad", clip_gradient=0.3)._native_hyper()[2] == 0.3
    assert opt.create("groupadagrad", epsilon=1e-7)._native_hyper()[:3] == [1e-7, 1.0, -1.0]
    plain = opt.create("rmsprop", rho=0.8, epsilon=1e-7, clip_weights=2.0)
    assert plain._native_hyper() == [0.8, 1e-7, 1.0, -1.0, 2.0]
    centered = opt.create("rmsprop", rho=0.8, momentum=0.7, centered=True, clip_gradient=0.5)
    assert centered._native_hyper() == [0.8, 0.7, 1e-8, 1.0, 0.5, -1.0]
    assert opt.create("adadelta", rho=0.8, epsilon=1e-5)._native_hyper() == [0.8, 1e-5, 1.0, -1.0]


# ------------------------------------------------------------------------------------------ multi-precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name,cfg", [("adagrad", {"wd": 0.01}), ("groupadagrad", {}), ("rmsprop", {"wd": 0.01}),
                                      ("rmsprop", {"centered": True, "wd": 0.01, "clip_weights": 1.5}),
                                      ("adadelta", {"wd": 0.01})],
                         ids=["adagrad", "groupadagrad", "rmsprop", "rmsprop-centered", "adadelta"])
def test_multi_precision(name, cfg, dtype, no_foreach):
    require_native()
    weights = _weights(name, dtype)
    cfg = {"multi_precision": True, "clip_gradient": 1.0, **cfg}
    o, ws, states = _run(name, "native", weights, **cfg)
    assert o.impl == "native"
    _, rws, rstates = _run(name, "reference", weights, **cfg)
    for w, (master, _) in zip(ws, states):
        assert w.dtype == dtype and torch.equal(w, master.to(dtype))
    _assert_close_all([s[0] for s in states], [s[0] for s in rstates])
    _assert_close_all([t for s in states for t in _leaves(s[1])], [t for s in rstates for t in _leaves(s[1])])
    for w, rw in zip(ws, rws):  # the rounded weights differ by at most one low-precision step
        torch.testing.assert_close(w.float(), rw.float(), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------------------------------ lazy sparse
def _sparse_rows(rows, values, shape):
    idx = torch.tensor([rows], dtype=torch.int64)
    return torch.sparse_coo_tensor(idx, values, shape, check_invariants=True)


@pytest.mark.parametrize("name,shape,wd", [("adagrad", (40, 900), 0.0), ("adagrad", (40, 900), 0.02),
                                           ("groupadagrad", (40, 900), 0.0), ("groupadagrad", (8, 40000), 0.0),
                                           ("groupadagrad", (40, 30, 30), 0.0), ("groupadagrad", (400,), 0.0)],
                         ids=["adagrad", "adagrad-wd", "groupadagrad", "groupadagrad-long-rows", "groupadagrad-3d",
                              "groupadagrad-1d"])
def test_lazy_sparse(name, shape, wd, monkeypatch):
    """Only the rows present change; they match the reference (rows of 40000 elements span two chunks)."""
    require_native()
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(shape, generator=gen)
    n_rows = shape[0] - 3  # the last three rows are never touched
    touched, schedule = set(), []
    for _ in range(STEPS):
        rows = sorted(torch.randperm(n_rows, generator=gen)[:max(2, n_rows // 6)].tolist())
        touched.update(rows)
        schedule.append((rows, torch.randn(len(rows), *shape[1:], generator=gen)))
    out = {}
    for impl in ("native", "reference"):
        o = opt.create(name, impl=impl, lazy_update=True, wd=wd, learning_rate=0.05)
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
    assert untouched and torch.equal(w[untouched], w0[untouched]) and not state[untouched].any()
    _assert_close_all([w, state], [rw, rstate])
    if wd == 0.0 and name == "adagrad":  # GroupAdaGrad's row means are summed in another order
        assert torch.equal(state, rstate)


@pytest.mark.parametrize("name", ["adagrad", "groupadagrad"])
def test_lazy_sparse_multi_precision(name):
    require_native()
    gen = torch.Generator().manual_seed(4)
    shape = (12, 50)
    w0 = torch.randn(shape, generator=gen).to(torch.bfloat16)
    schedule = [([1, 4, 7], torch.randn(3, shape[1], generator=gen).to(torch.bfloat16)) for _ in range(20)]
    out = {}
    for impl in ("native", "reference"):
        o = opt.create(name, impl=impl, lazy_update=True, multi_precision=True, learning_rate=0.01)
        w = w0.clone()
        state = o.create_state_multi_precision(0, w)
        for rows, values in schedule:
            o.update_multi_precision([0], [w], [_sparse_rows(rows, values, shape)], [state])
        out[impl] = (w, state)
    (w, (master, st)), (rw, (rmaster, rst)) = out["native"], out["reference"]
    assert torch.equal(w, master.to(torch.bfloat16)) and torch.equal(w[[0, 2, 11]], w0[[0, 2, 11]])
    _assert_close_all([master, st], [rmaster, rst])
    torch.testing.assert_close(w.float(), rw.float(), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------------------------------ declined input
@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adadelta"])
def test_float64_weights_take_the_torch_path(name):
    """float64 weights keep float64 states, which the kernels do not take: the foreach path runs instead."""
    require_native()
    out = {}
    for impl in ("native", "foreach"):
        o = opt.create(name, impl=impl, wd=0.01)
        w = torch.linspace(-1, 1, 30, dtype=torch.float64)
        s = o.create_state(0, w)
        for k in range(5):
            o.update([0], [w], [torch.cos(w * (k + 1))], [s])
        out[impl] = [w, *_leaves(s)]
    assert all(torch.equal(a, b) for a, b in zip(out["native"], out["foreach"]))
