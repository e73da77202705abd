"""LARS, LAMB and LANS beyond the generic table: the formulas against independent float64 NumPy references,
LARS's name rule and lazy update, zero norms, bounds, update counting, the master copy's norm, and the
places where optzoo deliberately differs from MXNet (checked against the MXNet oracle where it exists)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optzoo import optimizer as opt
from optzoo.optimizer.trust_ratio import uses_lars

IMPLS = ["reference", "foreach"]
SHAPES = [(4, 3), (5,)]


def _data(steps, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return weights, grads


def _run(name, weights, grads, **kwargs):
    """optzoo through an Updater; returns the final weights (float64 numpy) and the updater."""
    optimizer = opt.create(name, **kwargs)
    updater = opt.get_updater(optimizer)
    ws = [torch.from_numpy(w.copy()) for w in weights]
    for step in grads:
        updater(list(range(len(ws))), [torch.from_numpy(g.copy()) for g in step], ws)
    return [w.double().numpy() for w in ws], updater


def _ratio(r1, r2):
    return 1.0 if r1 == 0 or r2 == 0 else r1 / r2


def _clamp(x, lower, upper):
    if lower is not None:
        x = max(x, lower)
    if upper is not None:
        x = min(x, upper)
    return x


# ------------------------------------------------------------------------------------------- NumPy references
def np_lars(w, grads, *, lr, momentum=0.0, eta=0.001, epsilon=1e-8, wd=0.0, rescale_grad=1.0,
            clip_gradient=None, trust=True):
    w = w.astype(np.float64)
    mom = np.zeros_like(w)
    for g in grads:
        g = g.astype(np.float64)
        wn, gn = np.linalg.norm(w), np.linalg.norm(g) * abs(rescale_grad)
        ratio = eta * wn / (gn + wd * wn + epsilon) if trust and wn > 0 and gn > 0 else 1.0
        d = rescale_grad * g
        if clip_gradient is not None:
            d = np.clip(d, -clip_gradient, clip_gradient)
        mom = momentum * mom - lr * ratio * (d + wd * w)
        w = w + mom
    return w, mom


def np_lamb(w, grads, *, lr, beta1=0.9, beta2=0.999, epsilon=1e-6, wd=0.0, bias_correction=True,
            lower_bound=None, upper_bound=None, rescale_grad=1.0, clip_gradient=None, t_step=1):
    w = w.astype(np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for k, g in enumerate(grads):
        t = (k + 1) * t_step
        g = rescale_grad * g.astype(np.float64)
        if clip_gradient is not None:
            g = np.clip(g, -clip_gradient, clip_gradient)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        mh, vh = (m / (1 - beta1**t), v / (1 - beta2**t)) if bias_correction else (m, v)
        u = mh / (np.sqrt(vh) + epsilon) + wd * w
        r1 = _clamp(np.linalg.norm(w), lower_bound, upper_bound)
        w = w - lr * _ratio(r1, np.linalg.norm(u)) * u
    return w, m, v


def np_lans(w, grads, *, lr, beta1=0.9, beta2=0.999, epsilon=1e-6, wd=0.0, lower_bound=None, upper_bound=None,
            rescale_grad=1.0, clip_gradient=None, readable=False):
    """MXNet's fused LANS kernel; ``readable=True`` is MXNet's step() (second half on the updated weight)."""
    w = w.astype(np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for k, g in enumerate(grads):
        t = k + 1
        g = rescale_grad * g.astype(np.float64)
        norm = np.linalg.norm(g)
        g = g / norm if norm > 0 else g
        if clip_gradient is not None:
            g = np.clip(g, -clip_gradient, clip_gradient)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        d = np.sqrt(v / (1 - beta2**t)) + epsilon
        r1 = _clamp(np.linalg.norm(w), lower_bound, upper_bound)
        u_m = m / (1 - beta1**t) / d + wd * w
        first = lr * beta1 * _ratio(r1, np.linalg.norm(u_m)) * u_m
        base = w - first if readable else w
        u_g = g / d + wd * base
        w = w - first - lr * (1 - beta1) * _ratio(r1, np.linalg.norm(u_g)) * u_g
    return w, m, v


# ------------------------------------------------------------------------------------------- LARS
LARS_KW = {"learning_rate": 0.2, "momentum": 0.9, "eta": 0.3, "epsilon": 1e-8, "wd": 0.01,
           "rescale_grad": 0.5, "clip_gradient": 0.1}


@pytest.mark.parametrize("impl", IMPLS)
def test_lars_matches_numpy_and_ratio_ignores_clipping(impl):
    """The ratio uses ||rescale_grad * raw grad||: clip_gradient=0.1 clips almost every entry, yet the ratio
    follows the unclipped norm (a clipped-norm ratio would differ by ~5x)."""
    weights, grads = _data(6, seed=1)
    got, updater = _run("lars", weights, grads, impl=impl, **LARS_KW)
    np_kw = {k: v for k, v in LARS_KW.items() if k != "learning_rate"}
    for i, w in enumerate(weights):
        expected, mom = np_lars(w, [g[i] for g in grads], lr=0.2, **np_kw)
        np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(updater.states[i].numpy(), mom, rtol=1e-5, atol=1e-7)


def test_lars_name_rule():
    # MXNet's literal rule: name.endswith(('gamma', 'beta', 'bias')), no separator required.
    excluded = ["fc1_bias", "bn0_gamma", "bn0_beta", "0.bias", "features.3.gamma", "layernorm.beta",
                "alphabeta", "bias"]
    included = ["fc1_weight", "0.weight", "bn0_running_mean", "bias_weight", "embedding", "gamma_scale", "3"]
    assert [uses_lars(n) for n in excluded] == [False] * len(excluded)
    assert [uses_lars(n) for n in included] == [True] * len(included)
    named = opt.create("lars", param_idx2name={0: "fc_bias", 1: "fc_weight"})
    assert not named.uses_trust_ratio(0) and named.uses_trust_ratio(1)
    # Unnamed indices use str(index): a Gluon Trainer passes no names, so every parameter is LARS-scaled ...
    assert opt.create("lars").uses_trust_ratio(0)
    # ... unless the index itself is the name (string keys, as a kvstore uses).
    assert not opt.create("lars").uses_trust_ratio("dense0_bias")


@pytest.mark.parametrize("impl", IMPLS)
def test_lars_excluded_names_take_plain_sgd_steps(impl):
    weights, grads = _data(5, seed=2, shapes=[(4, 3), (4,), (4,), (3, 2)])
    names = {0: "conv0_weight", 1: "conv0_bias", 2: "bn0_gamma", 3: "bn0_beta"}
    kwargs = {"learning_rate": 0.05, "momentum": 0.9, "wd": 0.01}
    lars, _ = _run("lars", weights, grads, impl=impl, eta=0.5, param_idx2name=names, **kwargs)
    sgd, _ = _run("sgd", weights, grads, impl=impl, **kwargs)
    for i in (1, 2, 3):
        np.testing.assert_array_equal(lars[i], sgd[i])
    assert np.abs(lars[0] - sgd[0]).max() > 1e-3
    expected, _ = np_lars(weights[0], [g[0] for g in grads], lr=0.05, momentum=0.9, eta=0.5, wd=0.01)
    np.testing.assert_allclose(lars[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
@pytest.mark.parametrize("aggregate_num", [1, 4])
def test_lars_names_match_mxnet(aggregate_num):
    """MXNet's per-tensor (aggregate_num=1) and multi-tensor (reordering) paths, with names as given by a
    Module (1.x style) and by 2.0 structured Gluon names."""
    from oracle import run_mxnet

    names = {0: "conv0_weight", 1: "conv0_bias", 2: "bn0_gamma", 3: "bn0_beta", 4: "dense0.weight",
             5: "dense0.bias"}
    shapes = [(4, 3), (4,), (4,), (4,), (5, 2), (5,)]
    weights, grads = _data(20, seed=3, shapes=shapes)
    kwargs = {"learning_rate": 0.1, "momentum": 0.9, "eta": 0.5, "wd": 0.01, "aggregate_num": aggregate_num}
    inputs = {f"w{i}": w for i, w in enumerate(weights)}
    inputs.update({f"g{k}_{i}": g for k, step in enumerate(grads) for i, g in enumerate(step)})
    code = """
names = {int(k): v for k, v in params["names"].items()}
n = len(names)
optimizer = mx.optimizer.create("lars", param_idx2name=names, **params["kwargs"])
updater = mx.optimizer.get_updater(optimizer)
ws = [mx.nd.array(inputs[f"w{i}"]) for i in range(n)]
for k in range(params["steps"]):
    updater(list(range(n)), [mx.nd.array(inputs[f"g{k}_{i}"]) for i in range(n)], ws)
for i in range(n):
    outputs[f"w{i}"] = ws[i].asnumpy()
"""
    out, _ = run_mxnet(code, inputs, params={"names": {str(k): v for k, v in names.items()}, "kwargs": kwargs,
                                             "steps": len(grads)})
    for impl in IMPLS:
        got, _ = _run("lars", weights, grads, impl=impl, param_idx2name=names, **kwargs)
        for i in range(len(shapes)):
            np.testing.assert_allclose(got[i], out[f"w{i}"], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{impl} {names[i]}")


@pytest.mark.parametrize("impl", IMPLS)
def test_lars_zero_norms_give_ratio_one(impl):
    lr, wd, rg = 0.1, 0.02, 0.5
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    optimizer = opt.create("lars", learning_rate=lr, wd=wd, rescale_grad=rg, eta=0.001, impl=impl)
    zero_w, zero_g = torch.zeros(2, 2), torch.zeros(3)
    w_zero_g = torch.tensor([1.0, -2.0, 4.0])
    optimizer.update([0, 1], [zero_w, w_zero_g], [g, zero_g], [None, None])
    # ||w|| = 0: a plain SGD step; ||g|| = 0: the weight decay alone at the full learning rate.
    torch.testing.assert_close(zero_w, -lr * rg * g, rtol=1e-6, atol=0)
    torch.testing.assert_close(w_zero_g, torch.tensor([1.0, -2.0, 4.0]) * (1 - lr * wd), rtol=1e-6, atol=0)
    # rescale_grad = 0 makes the rescaled gradient's norm 0 as well.
    frozen = opt.create("lars", learning_rate=lr, wd=wd, rescale_grad=0.0, impl=impl)
    w2 = w.clone()
    frozen.update([0], [w2], [g], [None])
    torch.testing.assert_close(w2, w * (1 - lr * wd), rtol=1e-6, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_lars_lazy_update_uses_the_whole_weight_norm(impl):
    """A row-sparse gradient: the ratio trusts the whole layer's norm; lazy_update then touches only the
    gradient's rows, the standard update decays every row (the same ratio in both)."""
    lr, eta, wd, rg, momentum = 0.1, 0.5, 0.05, 0.8, 0.9
    w0 = torch.linspace(-1.0, 2.0, 18).reshape(6, 3)
    rows, values = torch.tensor([1, 4]), torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    grad = torch.sparse_coo_tensor(rows[None], values, (6, 3))
    ratio = eta * w0.double().norm() / (rg * values.double().norm() + wd * w0.double().norm() + 1e-8)
    dense_g = torch.zeros(6, 3, dtype=torch.float64).index_copy(0, rows, values.double())
    for lazy in (True, False):
        optimizer = opt.create("lars", learning_rate=lr, eta=eta, wd=wd, rescale_grad=rg, momentum=momentum,
                               lazy_update=lazy, impl=impl)
        w, mom = w0.clone(), torch.zeros(6, 3)
        optimizer.update([0], [w], [grad], [mom])
        expected_mom = -lr * ratio * (rg * dense_g + wd * w0.double())
        if lazy:
            untouched = [0, 2, 3, 5]
            expected_mom[untouched] = 0.0
        torch.testing.assert_close(mom.double(), expected_mom, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(w.double(), w0.double() + expected_mom, rtol=1e-5, atol=1e-7)
        if lazy:
            assert torch.equal(w[untouched], w0[untouched])


@pytest.mark.parametrize("impl", IMPLS)
def test_lars_lazy_update_keeps_the_name_rule(impl):
    optimizer = opt.create("lars", learning_rate=0.1, eta=0.5, lazy_update=True, impl=impl,
                           param_idx2name={0: "embed_bias"})
    w = torch.ones(4, 2)
    grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.ones(1, 2), (4, 2))
    optimizer.update([0], [w], [grad], [None])
    assert torch.equal(w[2], torch.full((2,), 0.9)) and torch.equal(w[[0, 1, 3]], torch.ones(3, 2))


# ------------------------------------------------------------------------------------------- master copies
def _master_copy_case(name, kwargs):
    """A float16 weight whose float32 master copy is NOT the float16 value (1 + 4.5e-4 rounds to 1.0), so a
    ratio computed from the float16 weight differs by ~4.5e-4 relative from the master copy's."""
    torch.manual_seed(0)
    w32 = 1.00045 + 0.5 * torch.rand(4, 3)
    g16 = torch.randn(4, 3).half()
    mp = opt.create(name, multi_precision=True, **kwargs)
    w16 = w32.half()
    state = mp.create_state_multi_precision(0, w16)
    state[0].copy_(w32)
    mp.update_multi_precision([0], [w16], [g16], [state])
    ref = opt.create(name, **kwargs)
    w_ref = w32.clone()
    ref.update([0], [w_ref], [g16.float()], [ref.create_state(0, w_ref)])
    return w16, state[0], w_ref


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,kwargs", [("lars", {"eta": 0.5, "momentum": 0.9, "wd": 0.01}),
                                         ("lamb", {"learning_rate": 0.01, "wd": 0.01}),
                                         ("lans", {"learning_rate": 0.01, "wd": 0.01})])
def test_multi_precision_ratio_uses_the_master_copy(name, kwargs, impl):
    w16, master, w_ref = _master_copy_case(name, {**kwargs, "impl": impl})
    assert torch.equal(master, w_ref)
    assert torch.equal(w16, w_ref.half())


# ------------------------------------------------------------------------------------------- LAMB
LAMB_CASES = [
    {"learning_rate": 0.01},
    {"learning_rate": 0.01, "beta1": 0.5, "beta2": 0.8, "wd": 0.1, "epsilon": 1e-3, "rescale_grad": 0.7,
     "clip_gradient": 0.8},
    {"learning_rate": 0.02, "bias_correction": False, "wd": 0.05, "lower_bound": 1.5, "upper_bound": 2.0},
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(LAMB_CASES)))
def test_lamb_matches_numpy(case, impl):
    kwargs = LAMB_CASES[case]
    weights, grads = _data(8, seed=4 + case)
    got, updater = _run("lamb", weights, grads, impl=impl, **kwargs)
    np_kw = {k: v for k, v in kwargs.items() if k != "learning_rate"}
    for i, w in enumerate(weights):
        expected, m, v = np_lamb(w, [g[i] for g in grads], lr=kwargs["learning_rate"], **np_kw)
        np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(updater.states[i].mean.numpy(), m, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(updater.states[i].var.numpy(), v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("aggregate_num", [0, 1, 4, math.inf])
def test_lamb_counts_each_update_once(aggregate_num, impl):
    """MXNet's aggregate_num <= 1 path counts t twice per step (its scheduler sees 1, 2, 2, 2, 3, 4, ...)."""
    seen = []

    def schedule(num_update):
        seen.append(num_update)
        return 0.01

    # wd and a large epsilon keep the bias correction from cancelling in the trust ratio, so t shows.
    kwargs = {"wd": 0.1, "epsilon": 1e-2, "aggregate_num": aggregate_num, "impl": impl}
    weights, grads = _data(3, seed=7)
    got, updater = _run("lamb", weights, grads, lr_scheduler=schedule, **kwargs)
    assert seen == [1, 2, 3]
    assert updater.optimizer.num_update == 3
    assert updater.optimizer._index_update_count == {0: 3, 1: 3}
    once = [np_lamb(w, [g[i] for g in grads], lr=0.01, wd=0.1, epsilon=1e-2)[0]
            for i, w in enumerate(weights)]
    twice = [np_lamb(w, [g[i] for g in grads], lr=0.01, wd=0.1, epsilon=1e-2, t_step=2)[0]
             for i, w in enumerate(weights)]
    for i in range(2):
        np.testing.assert_allclose(got[i], once[i], rtol=1e-5, atol=1e-6)
        assert np.abs(got[i] - twice[i]).max() > 1e-4  # the double count would be visible
    # one parameter per call (MXNet's aggregate_num=1 call shape): every parameter still counts once per step
    seen.clear()
    optimizer = opt.create("lamb", lr_scheduler=schedule, **kwargs)
    ws = [torch.from_numpy(w.copy()) for w in weights]
    states = [optimizer.create_state(i, w) for i, w in enumerate(ws)]
    for step in grads:
        for i in range(2):
            optimizer.update([i], [ws[i]], [torch.from_numpy(step[i].copy())], [states[i]])
    assert seen == [1, 1, 2, 2, 3, 3]
    for i in range(2):
        np.testing.assert_allclose(ws[i].double().numpy(), once[i], rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
def test_lamb_aggregate_num_one_matches_mxnet_multi_tensor_path():
    """optzoo's aggregate_num=1 follows MXNet's aggregate_num=4 (multi_lamb_update) trajectory; MXNet's own
    aggregate_num=1 run has counted 6 updates after 3 steps."""
    from oracle import run_mxnet

    weights, grads = _data(30, seed=8)
    kwargs = {"learning_rate": 0.01, "wd": 0.1, "epsilon": 1e-2}
    inputs = {f"w{i}": w for i, w in enumerate(weights)}
    inputs.update({f"g{k}_{i}": g for k, step in enumerate(grads) for i, g in enumerate(step)})
    code = """
for agg in (4, 1):
    optimizer = mx.optimizer.create("lamb", aggregate_num=agg, **params["kwargs"])
    updater = mx.optimizer.get_updater(optimizer)
    ws = [mx.nd.array(inputs[f"w{i}"]) for i in range(2)]
    for k in range(params["steps"]):
        updater([0, 1], [mx.nd.array(inputs[f"g{k}_{i}"]) for i in range(2)], ws)
        if k == 2:
            results[f"num_update_after_3_{agg}"] = optimizer.num_update
    for i in range(2):
        outputs[f"agg{agg}/w{i}"] = ws[i].asnumpy()
"""
    out, results = run_mxnet(code, inputs, params={"kwargs": kwargs, "steps": len(grads)})
    assert results["num_update_after_3_4"] == 3
    assert results["num_update_after_3_1"] == 6  # MXNet's double count (spec 11.18), not reproduced
    for impl in IMPLS:
        got, updater = _run("lamb", weights, grads, impl=impl, aggregate_num=1, **kwargs)
        assert updater.optimizer.num_update == 30
        for i in range(2):
            np.testing.assert_allclose(got[i], out[f"agg4/w{i}"], rtol=1e-5, atol=1e-6)
            assert np.abs(got[i] - out[f"agg1/w{i}"]).max() > 1e-4


@pytest.mark.parametrize("name", ["lamb", "lans"])
@pytest.mark.parametrize("impl", IMPLS)
def test_bounds_fix_the_step_length(name, impl):
    """At the first step LAMB's step is ``lr * r1 * u/||u||``: its length is lr * clamp(||w||, lower, upper).
    For LANS both halves share u's direction at t=1, so the same holds."""
    lr = 0.01
    w0 = torch.tensor([[3.0, -4.0], [0.0, 0.0]])  # ||w|| = 5
    g = torch.tensor([[0.5, 1.0], [-2.0, 0.25]])
    for bounds, length in [({}, 5.0), ({"lower_bound": 0.0}, 5.0), ({"upper_bound": 2.0}, 2.0),
                           ({"lower_bound": 7.0}, 7.0), ({"lower_bound": 1.0, "upper_bound": 10.0}, 5.0)]:
        optimizer = opt.create(name, learning_rate=lr, impl=impl, **bounds)
        w = w0.clone()
        optimizer.update([0], [w], [g], [optimizer.create_state(0, w)])
        assert float((w - w0).norm()) == pytest.approx(lr * length, rel=1e-5), bounds


@pytest.mark.parametrize("name", ["lamb", "lans"])
def test_bound_arguments_are_unambiguous(name):
    with pytest.raises(ValueError, match="upper_bound"):
        opt.create(name, upper_bound=0.0)  # MXNet: ignored by the fused path, ||w|| := 0 in step()
    with pytest.raises(ValueError, match="lower_bound"):
        opt.create(name, lower_bound=-1.0)
    with pytest.raises(ValueError, match="must not exceed"):
        opt.create(name, lower_bound=3.0, upper_bound=2.0)
    assert opt.create(name, lower_bound=0.0).lower_bound == 0.0


@pytest.mark.parametrize("name", ["lamb", "lans"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_states_are_float32(name, dtype):
    optimizer = opt.create(name, wd=0.01)
    w = torch.randn(3, 2).to(dtype)
    state = optimizer.create_state(0, w)
    assert state.mean.dtype == state.var.dtype == torch.float32
    if dtype == torch.float64:  # (float16 weights without a master copy warn; covered by the generic tests)
        optimizer.update([0], [w], [torch.randn(3, 2).to(dtype)], [state])
        assert w.dtype == torch.float64 and torch.isfinite(w).all()


@pytest.mark.parametrize("name", ["lamb", "lans"])
@pytest.mark.parametrize("impl", IMPLS)
def test_sparse_gradient_equals_its_dense_form(name, impl):
    torch.manual_seed(3)
    w0 = torch.randn(5, 3)
    values = torch.randn(2, 3)
    sparse = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), values, (5, 3))
    results = []
    for grad in (sparse, sparse.to_dense()):
        optimizer = opt.create(name, wd=0.03, impl=impl)
        w = w0.clone()
        state = optimizer.create_state(0, w)
        for _ in range(3):
            optimizer.update([0], [w], [grad], [state])
        results.append(w)
    assert torch.equal(results[0], results[1])


# ------------------------------------------------------------------------------------------- LANS
LANS_CASES = [
    {"learning_rate": 0.01},
    {"learning_rate": 0.01, "beta1": 0.5, "beta2": 0.8, "wd": 0.1, "epsilon": 1e-3, "rescale_grad": 0.7,
     "clip_gradient": 0.2},
    {"learning_rate": 0.02, "wd": 0.05, "lower_bound": 1.5, "upper_bound": 2.0, "clip_gradient": 0.3},
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(LANS_CASES)))
def test_lans_matches_numpy_fused_kernel(case, impl):
    kwargs = LANS_CASES[case]
    weights, grads = _data(8, seed=10 + case)
    got, updater = _run("lans", weights, grads, impl=impl, **kwargs)
    np_kw = {k: v for k, v in kwargs.items() if k != "learning_rate"}
    for i, w in enumerate(weights):
        gs = [g[i] for g in grads]
        expected, m, v = np_lans(w, gs, lr=kwargs["learning_rate"], **np_kw)
        np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(updater.states[i].mean.numpy(), m, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(updater.states[i].var.numpy(), v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_lans_both_halves_use_the_original_weight(impl):
    """MXNet's fused kernel (followed here) against its readable step(), whose second half decays the already
    updated weight. (At t=1 both halves point the same way and the rules agree; from t=2 on they differ,
    by ~1e-2 after 4 steps with this large lr * wd.)"""
    kwargs = {"beta1": 0.7, "wd": 0.5}
    weights, grads = _data(4, seed=13)
    got, _ = _run("lans", weights, grads, impl=impl, learning_rate=0.5, **kwargs)
    for i, w in enumerate(weights):
        gs = [g[i] for g in grads]
        fused, _, _ = np_lans(w, gs, lr=0.5, **kwargs)
        readable, _, _ = np_lans(w, gs, lr=0.5, readable=True, **kwargs)
        np.testing.assert_allclose(got[i], fused, rtol=1e-5, atol=1e-6)
        assert np.abs(got[i] - readable).max() > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_lans_normalises_before_clipping(impl):
    """The gradient is divided by its norm before clipping, so scaling it (by 1e-3 or 1e3) changes nothing,
    even though clip_gradient=0.1 binds; clipping first would make the three runs differ."""
    weights, grads = _data(5, seed=12)
    runs = [_run("lans", weights, [[g * s for g in step] for step in grads], impl=impl, learning_rate=0.01,
                 clip_gradient=0.1, wd=0.01)[0] for s in (np.float32(1e-3), np.float32(1.0), np.float32(1e3))]
    for other in (runs[0], runs[2]):
        for a, b in zip(other, runs[1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.abs(g).max() for step in grads for g in step) * 1e-3 < 0.1 < min(
        np.abs(g / np.linalg.norm(g)).max() for step in grads for g in step)


@pytest.mark.parametrize("impl", IMPLS)
def test_lans_zero_gradient_is_finite(impl):
    """An all-zero gradient normalises to zero (MXNet: 0/0 = NaN weights). At t=1 the moments stay 0, both
    directions are wd*w with trust ratio 1/wd, so w1 = (1 - lr) * w0; without weight decay nothing moves."""
    lr = 0.05
    w0 = [torch.tensor([[0.5, -1.0], [2.0, 0.25]]), torch.tensor([1.0, -3.0, 0.5])]
    g1 = torch.tensor([0.3, 0.1, -0.2])
    optimizer = opt.create("lans", learning_rate=lr, wd=0.1, impl=impl)
    ws = [w.clone() for w in w0]
    states = [optimizer.create_state(i, w) for i, w in enumerate(ws)]
    optimizer.update([0, 1], ws, [torch.zeros(2, 2), g1], states)
    torch.testing.assert_close(ws[0], w0[0] * (1 - lr), rtol=1e-6, atol=1e-7)
    assert torch.isfinite(ws[1]).all() and not torch.equal(ws[1], w0[1])
    assert torch.equal(states[0].mean, torch.zeros(2, 2)) and torch.equal(states[0].var, torch.zeros(2, 2))
    still = opt.create("lans", learning_rate=lr, impl=impl)
    w = w0[0].clone()
    state = still.create_state(0, w)
    for _ in range(3):
        still.update([0], [w], [torch.zeros(2, 2)], [state])
    assert torch.equal(w, w0[0])


@pytest.mark.oracle
def test_lans_zero_gradient_is_nan_in_mxnet():
    """Documents the deviation: MXNet's multi_lans_update divides the zero gradient by its zero norm."""
    from oracle import run_mxnet

    code = """
optimizer = mx.optimizer.create("lans", wd=0.1)
updater = mx.optimizer.get_updater(optimizer)
ws = [mx.nd.ones((2, 2)), mx.nd.ones((3,))]
updater([0, 1], [mx.nd.zeros((2, 2)), mx.nd.array([0.3, 0.1, -0.2])], ws)
outputs["w0"] = ws[0].asnumpy()
outputs["w1"] = ws[1].asnumpy()
"""
    out, _ = run_mxnet(code)
    assert np.isnan(out["w0"]).all() and np.isfinite(out["w1"]).all()
