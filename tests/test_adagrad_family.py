"""What the generic table cannot say about AdaGrad, GroupAdaGrad, RMSProp and AdaDelta: closed-form first
steps (epsilon placement), MXNet's names and refusals, state dtypes and layouts, and GroupAdaGrad's
rows for weights of every rank and its refusal of weight decay."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from native_support import require_native
from trajectory import flatten_state

from optzoo import native
from optzoo import optimizer as opt
from optzoo.optimizer.adagrad import AdaDeltaState, RMSPropState

FAMILY = ["adagrad", "groupadagrad", "rmsprop", "adadelta"]


def _one_step(name, w0, g, **kwargs):
    optimizer = opt.create(name, **kwargs)
    w = w0.clone()
    state = optimizer.create_state(0, w)
    optimizer.update([0], [w], [g], [state])
    return w, state


def _sparse(rows, values, shape):
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape)


# ----------------------------------------------------------------------------- closed-form first steps
def test_adagrad_first_step_puts_epsilon_outside_the_root():
    w0, g = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, -4.0, 0.0])
    w, h = _one_step("adagrad", w0, g, learning_rate=0.1, epsilon=0.5, wd=0.2)
    d = g + 0.2 * w0  # the decay is part of the gradient that enters the history
    torch.testing.assert_close(h, d * d)
    torch.testing.assert_close(w, w0 - 0.1 * d / (d.abs() + 0.5))


def test_group_adagrad_first_step_uses_the_row_mean():
    w0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    w, h = _one_step("groupadagrad", w0, g, learning_rate=0.1, epsilon=0.5)
    torch.testing.assert_close(h, torch.tensor([[12.5], [0.0]]))
    torch.testing.assert_close(w, w0 - 0.1 * g / (math.sqrt(12.5) + 0.5))


def test_rmsprop_first_steps_epsilon_outside_plain_inside_centered():
    w0, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    w, var = _one_step("rmsprop", w0, g, learning_rate=0.1, rho=0.8, epsilon=0.5)
    torch.testing.assert_close(var, 0.2 * g * g)
    torch.testing.assert_close(w, w0 - 0.1 * g / ((0.2 * g * g).sqrt() + 0.5))
    w, state = _one_step(
        "rmsprop", w0, g, learning_rate=0.1, rho=0.8, epsilon=0.5, centered=True, momentum=0.7
    )
    mean, var = 0.2 * g, 0.2 * g * g
    mom = -0.1 * g / (var - mean * mean + 0.5).sqrt()
    torch.testing.assert_close(state.mean, mean)
    torch.testing.assert_close(state.var, var)
    torch.testing.assert_close(state.mom, mom)
    torch.testing.assert_close(w, w0 + mom)


def test_adadelta_first_step_uses_learning_rate_and_decayed_gradient():
    w0, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    w, state = _one_step("adadelta", w0, g, learning_rate=0.5, rho=0.9, epsilon=1e-2, wd=0.1)
    d = g + 0.1 * w0
    acc_g = 0.1 * d * d
    delta = math.sqrt(1e-2) / (acc_g + 1e-2).sqrt() * d
    torch.testing.assert_close(state.acc_g, acc_g)
    torch.testing.assert_close(state.acc_delta, 0.1 * delta * delta)
    torch.testing.assert_close(w, w0 - 0.5 * delta)
    w, _ = _one_step("adadelta", w0, g, learning_rate=0.0)
    assert torch.equal(w, w0)


def test_rmsprop_momentum_only_matters_when_centered():
    w0, g = torch.randn(5), torch.randn(5)
    a, _ = _one_step("rmsprop", w0, g, momentum=0.0)
    b, _ = _one_step("rmsprop", w0, g, momentum=0.9)
    assert torch.equal(a, b)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_rmsprop_clip_weights_bounds_every_update(centered, impl):
    optimizer = opt.create("rmsprop", learning_rate=0.5, clip_weights=0.3, centered=centered, impl=impl)
    w = torch.linspace(-1, 1, 12).reshape(3, 4)
    state = optimizer.create_state(0, w)
    for _ in range(5):
        optimizer.update([0], [w], [torch.randn(3, 4) * 10], [state])
        assert w.abs().max() <= np.float32(0.3)
    assert (w.abs() == np.float32(0.3)).any()


# ------------------------------------------------------------------------------ names, layouts, dtypes
def test_adagrad_eps_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="epsilon"):
        a = opt.create("adagrad", eps=1e-3)
    assert a.epsilon == 1e-3 and "eps" not in a.get_config()
    with pytest.warns(DeprecationWarning):
        assert opt.create("groupadagrad", eps=1e-4).epsilon == 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert opt.create("adagrad", eps=None).epsilon == 1e-6  # MXNet ignores eps=None too
    with pytest.raises(TypeError, match="only epsilon"):
        opt.create("adagrad", eps=1e-3, epsilon=1e-4)


@pytest.mark.parametrize("old,new", [("gamma1", "rho"), ("gamma2", "momentum")])
def test_rmsprop_old_gamma_names_point_to_the_new_ones(old, new):
    with pytest.raises(TypeError, match=f"{old}.*renamed.*{new}"):
        opt.create("rmsprop", **{old: 0.9})


def test_defaults_are_mxnet_2():
    a = opt.create("adagrad")
    assert (a.learning_rate, a.epsilon, a.lazy_update) == (0.01, 1e-6, True)
    assert a.impl == ("native" if native.load() is not None else "foreach")
    g = opt.create("groupadagrad")
    assert (g.learning_rate, g.epsilon, g.lazy_update, g.wd) == (0.01, 1e-6, True, 0.0)
    r = opt.create("rmsprop")
    assert (r.learning_rate, r.rho, r.momentum, r.epsilon, r.centered, r.clip_weights) == (
        0.001,
        0.9,
        0.9,
        1e-8,
        False,
        None,
    )
    d = opt.create("adadelta")
    assert (d.learning_rate, d.rho, d.epsilon) == (1.0, 0.9, 1e-6)


def test_state_layouts():
    w = torch.zeros(4, 3)
    assert isinstance(opt.create("rmsprop").create_state(0, w), torch.Tensor)
    centered = opt.create("rmsprop", centered=True).create_state(0, w)
    assert isinstance(centered, RMSPropState) and centered._fields == ("mean", "var", "mom")
    state = opt.create("adadelta").create_state(0, w)
    assert isinstance(state, AdaDeltaState) and state._fields == ("acc_g", "acc_delta")
    assert opt.create("groupadagrad").create_state(0, w).shape == (4, 1)
    assert opt.create("adagrad").create_state(0, w).shape == (4, 3)


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize(
    "dtype,state_dtype",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_states_are_float32_or_float64(name, dtype, state_dtype):
    optimizer = opt.create(name, centered=True) if name == "rmsprop" else opt.create(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low precision without master copy warns
        state = optimizer.create_state_multi_precision(0, torch.zeros(4, 3, dtype=dtype))
    assert all(s.dtype == state_dtype for s in flatten_state(state))


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_float64_weights_follow_float32(name, impl):
    """MXNet cannot update float64 weights (float32 states); optzoo keeps float64 states for them."""
    shapes = [(6, 3), (4, 5)]
    torch.manual_seed(0)
    w32 = [torch.randn(s) for s in shapes]
    w64 = [w.double() for w in w32]
    kwargs = {"centered": True} if name == "rmsprop" else {}
    runs = []
    for weights in (w32, w64):
        optimizer = opt.create(name, impl=impl, **kwargs)
        updater = opt.get_updater(optimizer)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            updater([0, 1], [torch.randn(s, generator=gen).to(weights[0].dtype) for s in shapes], weights)
        runs.append(updater)
    for i in range(2):
        assert all(s.dtype == torch.float64 for s in flatten_state(runs[1].states[i]))
        torch.testing.assert_close(w64[i].float(), w32[i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILY)
def test_low_precision_without_master_copy_updates_from_float32(name):
    """Without multi_precision the float32 state is kept and the float16 weight is rounded once per step."""
    kwargs = {"centered": True} if name == "rmsprop" else {}
    results = {}
    for dtype in (torch.float16, torch.float32):
        optimizer = opt.create(name, **kwargs)
        w = torch.linspace(-1, 1, 12).reshape(4, 3).to(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = optimizer.create_state_multi_precision(0, w)
        optimizer.update([0], [w], [torch.linspace(1, -2, 12).reshape(4, 3).to(dtype)], [state])
        results[dtype] = w
    assert results[torch.float16].dtype == torch.float16
    torch.testing.assert_close(results[torch.float16].float(), results[torch.float32], rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------ sparse gradients
def test_adagrad_is_lazy_by_default_and_densifies_on_request():
    w0 = torch.linspace(-1, 1, 12).reshape(4, 3)
    grad = _sparse([1, 3], torch.ones(2, 3), (4, 3))
    lazy, _ = _one_step("adagrad", w0, grad, wd=0.1)
    assert torch.equal(lazy[[0, 2]], w0[[0, 2]])
    dense, _ = _one_step("adagrad", w0, grad, wd=0.1, lazy_update=False)
    assert not torch.equal(dense[[0, 2]], w0[[0, 2]])  # absent rows decay
    torch.testing.assert_close(dense[[1, 3]], lazy[[1, 3]])


@pytest.mark.parametrize("shape", [(6, 3), (6,), (6, 2, 3)])
@pytest.mark.parametrize("name", ["adagrad", "groupadagrad"])
def test_lazy_rows_equal_the_dense_rule_on_those_rows(name, shape):
    kwargs = {"wd": 0.1} if name == "adagrad" else {}
    torch.manual_seed(3)
    w = torch.randn(shape)
    rows = [0, 4, 5]
    values = torch.randn(3, *shape[1:])
    lazy, lazy_state = _one_step(name, w, _sparse(rows, values, shape), **kwargs)
    sub, sub_state = _one_step(name, w[rows], values, **kwargs)
    assert torch.equal(lazy[rows], sub) and torch.equal(lazy_state[rows], sub_state)


@pytest.mark.parametrize("name", ["rmsprop", "adadelta"])
def test_rmsprop_and_adadelta_densify_sparse_gradients(name):
    w0 = torch.linspace(-1, 1, 12).reshape(4, 3)
    grad = _sparse([1, 3], torch.ones(2, 3), (4, 3))
    a, _ = _one_step(name, w0, grad, wd=0.1)
    b, _ = _one_step(name, w0, grad.to_dense(), wd=0.1)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------- GroupAdaGrad's ranks
IMPLS = ["reference", "foreach", "native"]


def _steps(name, impl, w0, grads, **kwargs):
    if impl == "native":
        require_native()
    optimizer = opt.create(name, impl=impl, **kwargs)
    w = w0.clone()
    state = optimizer.create_state(0, w)
    for g in grads:
        optimizer.update([0], [w], [g], [state])
    return w, state


def _weight_and_grads(shape, steps=20):
    gen = torch.Generator().manual_seed(len(shape))
    return torch.randn(shape, generator=gen), [torch.randn(shape, generator=gen) for _ in range(steps)]


@pytest.mark.parametrize("shape", [(37,), ()])
@pytest.mark.parametrize("impl", IMPLS)
def test_group_adagrad_1d_weight_is_per_entry_adagrad(impl, shape):
    """A 1-D weight of n entries is n rows of one element (a 0-d weight one row): exactly AdaGrad, epsilon outside
    the square root (on the same path), with the history in shape (rows, 1)."""
    kwargs = {"learning_rate": 0.1, "epsilon": 0.3, "clip_gradient": 0.8, "rescale_grad": 1.5}
    w0, grads = _weight_and_grads(shape)
    w, history = _steps("groupadagrad", impl, w0, grads, **kwargs)
    aw, ah = _steps("adagrad", impl, w0, grads, **kwargs)
    assert history.shape == ((shape[0] if shape else 1), 1)
    assert torch.equal(w, aw) and torch.equal(history.view(ah.shape), ah)


@pytest.mark.parametrize("shape", [(6, 4, 5), (3, 2, 2, 7), (5, 1, 3)])
@pytest.mark.parametrize("impl", IMPLS)
def test_group_adagrad_nd_weight_is_the_2d_rule_on_its_rows(impl, shape):
    w0, grads = _weight_and_grads(shape)
    w, history = _steps("groupadagrad", impl, w0, grads, learning_rate=0.1)
    rows = (shape[0], -1)
    rw, rh = _steps("groupadagrad", impl, w0.reshape(rows), [g.reshape(rows) for g in grads], learning_rate=0.1)
    assert history.shape == (shape[0], 1)
    assert torch.equal(w.reshape(rows), rw) and torch.equal(history, rh)


@pytest.mark.parametrize("impl", IMPLS)
def test_group_adagrad_non_contiguous_weights(impl):
    """A permuted 3-D weight (the native core declines it: the foreach rule runs) equals the contiguous one."""
    w0, grads = _weight_and_grads((4, 3, 5))
    w, history = _steps("groupadagrad", "reference", w0, grads)
    optimizer = opt.create("groupadagrad", impl=impl)
    strided = torch.empty(5, 3, 4).permute(2, 1, 0).copy_(w0)
    state = optimizer.create_state(0, strided)
    for g in grads:
        optimizer.update([0], [strided], [g.transpose(0, 2).contiguous().transpose(0, 2)], [state])
    assert not strided.is_contiguous() and torch.equal(strided, w) and torch.equal(state, history)


def test_group_adagrad_rejects_weight_decay():
    with pytest.raises(ValueError, match="weight decay"):
        opt.create("groupadagrad", wd=1e-4)
    optimizer = opt.create("groupadagrad")
    optimizer.wd = 0.1  # changed after construction: refused at the update, before anything is written
    w = torch.ones(3, 2)
    state = optimizer.create_state(0, w)
    for impl in ("reference", "foreach"):
        optimizer.impl = impl
        with pytest.raises(ValueError, match="weight decay"):
            optimizer.update([0], [w], [torch.ones(3, 2)], [state])
    assert torch.equal(w, torch.ones(3, 2)) and not state.any()


# ------------------------------------------------------------------------------------ MXNet's refusals
@pytest.mark.oracle
def test_mxnet_refuses_what_optzoo_defines():
    """The cases where optzoo deviates on purpose: MXNet raises, optzoo does something defined."""
    from oracle import run_mxnet

    code = r"""
def attempt(name, fn):
    try:
        fn()
        results[name] = "ok"
    except Exception as err:
        results[name] = type(err).__name__

def sparse_adagrad_wd():
    o = mx.optimizer.create("adagrad", wd=0.1)
    w = mx.nd.ones((4, 2))
    g = mx.nd.sparse.row_sparse_array((mx.nd.ones((1, 2)), mx.nd.array([1], dtype="int64")), shape=(4, 2))
    mx.optimizer.get_updater(o)([0], [g], [w]); w.wait_to_read()

def float64(name):
    o = mx.optimizer.create(name)
    w = mx.nd.ones((4, 2), dtype="float64")
    mx.optimizer.get_updater(o)([0], [mx.nd.ones((4, 2), dtype="float64")], [w]); w.wait_to_read()

def group_wd():
    o = mx.optimizer.create("groupadagrad", wd=0.1)
    mx.optimizer.get_updater(o)([0], [mx.nd.ones((4, 2))], [mx.nd.ones((4, 2))])

attempt("sparse_adagrad_wd", sparse_adagrad_wd)
attempt("group_wd", group_wd)
attempt("group_1d", lambda: mx.optimizer.create("groupadagrad").create_state(0, mx.nd.ones((4,))))
attempt("adagrad_eps", lambda: mx.optimizer.create("adagrad", eps=1e-3))
attempt("rmsprop_gamma1", lambda: mx.optimizer.create("rmsprop", gamma1=0.9))
for name in ("adagrad", "rmsprop", "adadelta", "groupadagrad"):
    attempt("float64_" + name, lambda name=name: float64(name))
"""
    _, results = run_mxnet(code)
    assert results["sparse_adagrad_wd"] == "MXNetError"
    assert results["group_wd"] == results["group_1d"] == "AssertionError"
    assert results["adagrad_eps"] == results["rmsprop_gamma1"] == "DeprecationWarning"
    assert all(results[f"float64_{name}"] == "MXNetError" for name in FAMILY)
