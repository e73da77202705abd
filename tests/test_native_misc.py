"""Native kernels of Ftrl, FTML, Signum/signSGD, DCASGD, Test and the legacy ccSGD against the readable path.

Tolerances: Ftrl and FTML must stay bit-identical to the reference (which matches MXNet bit for bit, see
tests/test_mxnet_parity.py); the other rules are compared with rtol 1e-6 / atol 1e-7 (today they are exact too).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_support import require_native

from optzoo import optimizer as opt
from optzoo.optimizer.base import _leaves


@pytest.fixture(autouse=True)
def _native_required():
    """Skips without the kernels, fails under OPTZOO_REQUIRE_NATIVE=1 (a module-level skipif would not)."""
    require_native()


EXACT = ("ftrl", "ftml")
TOL = {"rtol": 1e-6, "atol": 1e-7}

#: every branch of every kernel: momentum on/off, clipping, rescaling, wd, wd_lh, lamda...
CASES = [
    ("ftrl", {}),
    ("ftrl", {"lamda1": 0.1, "wd": 0.03}),
    ("ftrl", {"beta": 0.5, "clip_gradient": 0.4, "rescale_grad": 0.5}),
    ("ftrl", {"lamda1": 0.0, "learning_rate": 0.5}),
    ("ftml", {}),
    ("ftml", {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}),
    ("ftml", {"epsilon": 1e-3, "clip_gradient": 0.4, "rescale_grad": 0.14, "begin_num_update": 1000}),
    ("signum", {}),
    ("signum", {"momentum": 0.5, "wd": 0.03, "wd_lh": 0.015, "clip_gradient": 0.4, "rescale_grad": 0.5}),
    ("signum", {"momentum": 0.0}),
    ("signum", {"momentum": 0.0, "wd": 0.03, "wd_lh": 0.01, "clip_gradient": 0.3, "rescale_grad": 0.5}),
    ("dcasgd", {}),
    ("dcasgd", {"lamda": 0.1, "wd": 0.01, "clip_gradient": 0.4}),
    ("dcasgd", {"momentum": 0.9}),
    ("dcasgd", {"momentum": 0.9, "wd": 0.03, "clip_gradient": 0.4, "rescale_grad": 0.5, "lamda": 0.1}),
    ("test", {}),
    ("test", {"wd": 0.03, "rescale_grad": 0.5}),
    ("test", {"clip_gradient": 0.3, "wd": 0.01}),
    ("ccsgd", {}),
    ("ccsgd", {"wd": 0.03, "rescale_grad": 0.5}),
    ("ccsgd", {"wd": 0.03, "clip_gradient": 0.2}),
    ("ccsgd", {"momentum": 0.9}),
    ("ccsgd", {"momentum": 0.9, "wd": 0.03, "clip_gradient": 0.4, "rescale_grad": 0.5}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]
#: a size that is not a multiple of 16, several small ones, and one split into several chunks (> 32768)
SHAPES = [(7,), (5, 13), (3, 4, 5), (300, 130)]


def _gradients(gen, shapes, dtype, step):
    scale = 2.0 if step % 7 == 3 else 0.1  # some steps large enough to clip
    return [(torch.randn(s, generator=gen) * scale).to(dtype) for s in shapes]


def _run(name, kwargs, impl, *, dtype=torch.float32, steps=60, shapes=SHAPES, lr_mult=None, seed=0):
    """``steps`` updates through ``update_multi_precision``, a learning-rate change half way; (optimizer,
    weights, states)."""
    mp = dtype != torch.float32
    o = opt.create(name, impl=impl, multi_precision=mp, **kwargs)
    o.set_lr_mult(lr_mult if lr_mult is not None else {1: 0.5})
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    indices = list(range(len(weights)))
    for step in range(steps):
        if step == steps // 2:
            o.set_learning_rate(0.5 * o.learning_rate)
        o.update_multi_precision(indices, weights, _gradients(gen, shapes, dtype, step), states)
    return o, weights, states


def _assert_match(name, got, want, what):
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what} #{k}"
        if name in EXACT:
            assert torch.equal(g, w), f"{what} #{k}: not bit-identical to the reference"
        else:
            np.testing.assert_allclose(g.float().numpy(), w.float().numpy(), err_msg=f"{what} #{k}", **TOL)


def _no_python_rule(monkeypatch, o):
    """Makes every Python rule of ``o`` raise: the update must run in the native kernel."""
    def boom(*args, **kwargs):
        raise AssertionError("the Python rule ran instead of the native kernel")

    for attr in ("_foreach_rule", "_reference_rule"):
        monkeypatch.setattr(o, attr, boom)


# ------------------------------------------------------------------------------------------- dense float32
@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_native_matches_reference(name, kwargs):
    o, w_nat, s_nat = _run(name, kwargs, "native")
    assert o.impl == "native"
    _, w_ref, s_ref = _run(name, kwargs, "reference")
    _assert_match(name, w_nat, w_ref, "weight")
    _assert_match(name, _leaves(s_nat), _leaves(s_ref), "state")


# ------------------------------------------------------------------------------------------- multi-precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_native_multi_precision_matches_reference(name, kwargs, dtype):
    _, w_nat, s_nat = _run(name, kwargs, "native", dtype=dtype, steps=50)
    _, w_ref, s_ref = _run(name, kwargs, "reference", dtype=dtype, steps=50)
    masters = [s[0] for s in s_nat]
    assert all(m.dtype == torch.float32 for m in masters)
    _assert_match(name, masters, [s[0] for s in s_ref], "master copy")
    _assert_match(name, _leaves([s[1] for s in s_nat]), _leaves([s[1] for s in s_ref]), "state")
    for w, m, w_r in zip(w_nat, masters, w_ref):
        assert w.dtype == dtype
        assert torch.equal(w, m.to(dtype)), "low-precision weight is not the rounded master copy"
        if name in EXACT:
            assert torch.equal(w, w_r)


# ------------------------------------------------------------------------------------------- the kernel ran
@pytest.mark.parametrize("mp", [False, True], ids=["float32", "float16-mp"])
@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_kernel_runs(monkeypatch, name, kwargs, mp):
    dtype = torch.float16 if mp else torch.float32
    o = opt.create(name, multi_precision=mp, **kwargs)
    assert o.impl == "native"
    _no_python_rule(monkeypatch, o)
    weights = [torch.randn(s).to(dtype) for s in SHAPES]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    before = [w.clone() for w in weights]
    for _ in range(3):
        o.update_multi_precision(list(range(len(weights))), weights, [torch.randn_like(w) for w in weights], states)
    assert any(not torch.equal(a, b) for a, b in zip(weights, before))
    assert o.num_update == 3 + kwargs.get("begin_num_update", 0)


def test_test_optimizer_accepts_a_none_state(monkeypatch):
    o = opt.create("test", wd=0.01)
    _no_python_rule(monkeypatch, o)
    w = torch.randn(40)
    g = torch.randn(40)
    expected = w.clone()
    opt.create("test", wd=0.01, impl="reference").update([0], [expected], [g], [None])
    o.update([0], [w], [g], [None])
    assert torch.equal(w, expected)


# ------------------------------------------------------------------------------------------- fallbacks
def test_weights_the_kernel_cannot_take_fall_back_to_torch():
    """A non-contiguous weight: the native call declines without writing, the torch path updates it."""
    results = []
    for impl in ("native", "reference"):
        o = opt.create("dcasgd", impl=impl, momentum=0.9, wd=0.01)
        gen = torch.Generator().manual_seed(1)
        w = torch.randn(9, 6, generator=gen).t()
        state = o.create_state(0, w)
        for _ in range(5):
            o.update([0], [w], [torch.randn(6, 9, generator=gen)], [state])
        results.append([w, *_leaves(state)])
    _assert_match("dcasgd", results[0], results[1], "non-contiguous")


def test_signum_momentum_without_state_still_raises():
    o = opt.create("signum", momentum=0.9)
    assert o.impl == "native"
    with pytest.raises(ValueError, match="needs the state"):
        o.update([0], [torch.randn(5)], [torch.randn(5)], [None])


# ------------------------------------------------------------------------------------------- Ftrl/FTML zero lr
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16-mp"])
@pytest.mark.parametrize("name", ["ftrl", "ftml"])
def test_zero_lr_tensor_is_frozen(monkeypatch, name, dtype):
    """lr_mult=0 freezes tensor 1 (weight and state); the others move exactly as on the reference path."""
    o, w_nat, s_nat = _run(name, {"wd": 0.01}, "native", dtype=dtype, steps=20, lr_mult={1: 0.0})
    _, w_ref, s_ref = _run(name, {"wd": 0.01}, "reference", dtype=dtype, steps=20, lr_mult={1: 0.0})
    _assert_match(name, w_nat, w_ref, "weight")
    _assert_match(name, _leaves(s_nat), _leaves(s_ref), "state")
    gen = torch.Generator().manual_seed(0)
    initial = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    assert torch.equal(w_nat[1], initial[1])
    frozen_state = s_nat[1][1] if dtype != torch.float32 else s_nat[1]
    assert all(not leaf.any() for leaf in _leaves(frozen_state))
    if dtype != torch.float32:
        # as update_multi_precision: the low-precision weight of a frozen tensor is rewritten from its master copy
        _no_python_rule(monkeypatch, o)
        w_nat[1].fill_(7.0)
        o.update_multi_precision([0, 1], w_nat[:2], [torch.randn(s).to(dtype) for s in SHAPES[:2]], s_nat[:2])
        assert torch.equal(w_nat[1], s_nat[1][0].to(dtype))


@pytest.mark.parametrize("name", ["ftrl", "ftml"])
def test_schedule_reaching_zero_freezes_everything(monkeypatch, name):
    o = opt.create(name, lr_scheduler=lambda n: 0.05 if n < 3 else 0.0)
    _no_python_rule(monkeypatch, o)
    weights = [torch.randn(s) for s in SHAPES]
    states = [o.create_state(i, w) for i, w in enumerate(weights)]
    indices = list(range(len(weights)))
    for _ in range(2):
        o.update(indices, weights, [torch.randn_like(w) for w in weights], states)
    snapshot = [t.clone() for t in [*weights, *_leaves(states)]]
    for _ in range(3):
        o.update(indices, weights, [torch.randn_like(w) for w in weights], states)
    assert all(torch.equal(a, b) for a, b in zip([*weights, *_leaves(states)], snapshot))


# ------------------------------------------------------------------------------------------- lazy sparse
LAZY_CASES = [
    ("ftrl", {"lazy_update": True}),
    ("ftrl", {"lazy_update": True, "lamda1": 0.1, "wd": 0.03, "clip_gradient": 0.4, "rescale_grad": 0.5}),
    ("ccsgd", {}),
    ("ccsgd", {"wd": 0.03, "clip_gradient": 0.3}),
    ("ccsgd", {"momentum": 0.9, "wd": 0.03, "rescale_grad": 0.5}),
]
LAZY_SHAPES = [(8, 5), (3000, 20), (6,)]


def _sparse_grad(gen, shape, rows):
    """A COO gradient on ``rows`` (with a duplicate row, summed by coalescing)."""
    idx = torch.tensor(rows + rows[:1])
    values = torch.randn((len(idx), *shape[1:]), generator=gen)
    return torch.sparse_coo_tensor(idx[None, :], values, shape)


def _run_lazy(name, kwargs, impl, monkeypatch=None, steps=30):
    o = opt.create(name, impl=impl, **kwargs)
    if monkeypatch is not None:
        _no_python_rule(monkeypatch, o)
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(s, generator=gen) for s in LAZY_SHAPES]
    initial = [w.clone() for w in weights]
    states = [o.create_state(i, w) for i, w in enumerate(weights)]
    rows = {0: [1, 4, 6], 1: [0, 17, 999, 2999] + list(range(1000, 2700)), 2: [2, 3]}
    for step in range(steps):
        grads = [_sparse_grad(gen, s, rows[k]) for k, s in enumerate(LAZY_SHAPES)]
        if step == steps // 2:
            o.set_learning_rate(0.5 * o.learning_rate)
        o.update(list(range(len(weights))), weights, grads, states)
    return weights, states, initial, rows


@pytest.mark.parametrize("name,kwargs", LAZY_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(LAZY_CASES)])
def test_lazy_sparse_update(monkeypatch, name, kwargs):
    w_nat, s_nat, initial, rows = _run_lazy(name, kwargs, "native", monkeypatch)
    w_ref, s_ref, _, _ = _run_lazy(name, kwargs, "reference")
    _assert_match(name, w_nat, w_ref, "weight")
    _assert_match(name, _leaves(s_nat), _leaves(s_ref), "state")
    for k, w in enumerate(w_nat):
        untouched = torch.ones(w.shape[0], dtype=torch.bool)
        untouched[rows[k]] = False
        assert untouched.any()
        assert torch.equal(w[untouched], initial[k][untouched]), "a row without gradient changed"
        for leaf in _leaves(s_nat[k]):
            assert not leaf[untouched].any()


def test_lazy_ftrl_with_zero_lr_leaves_rows_untouched(monkeypatch):
    o = opt.create("ftrl", lazy_update=True)
    o.set_lr_mult({0: 0.0})
    _no_python_rule(monkeypatch, o)
    w = torch.randn(10, 3)
    before = w.clone()
    state = o.create_state(0, w)
    o.update([0], [w], [_sparse_grad(torch.Generator().manual_seed(0), (10, 3), [2, 5])], [state])
    assert torch.equal(w, before) and not any(leaf.any() for leaf in _leaves(state))
