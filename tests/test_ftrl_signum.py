"""What the generic table cannot say about Ftrl, FTML and Signum: Ftrl's lazy row updates (against an
independent float64 rule and against MXNet 1.9.1's row-sparse kernel), MXNet 2.0's dense handling of
row-sparse gradients, the learning-rate-0 policy, FTML's per-index step counts, and signSGD's use of the
raw gradient's sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import run_mxnet
from trajectory import flatten_state

from optzoo import optimizer as opt
from optzoo.optimizer.ftrl import exact_sqrt, exact_sqrt_foreach

IMPLS = ["reference", "foreach"]


# ---------------------------------------------------------------------------------------- independent rules
def ftrl_f64(w, g, z, n, *, learning_rate, wd=0.0, lamda1=0.01, beta=1.0, rescale_grad=1.0,
             clip_gradient=None):
    """Ftrl in float64, from MXNet 1.9.1's docstring: ``w = (sign(z)*lamda1 - z) / ... * (|z| > lamda1)``."""
    lr = learning_rate
    g = g * rescale_grad
    if clip_gradient is not None:
        g = np.clip(g, -clip_gradient, clip_gradient)
    z = z + g - (np.sqrt(n + g * g) - np.sqrt(n)) * w / lr
    n = n + g * g
    w = (np.sign(z) * lamda1 - z) / ((beta + np.sqrt(n)) / lr + wd) * (np.abs(z) > lamda1)
    return w, z, n


def ftml_f64(w, g, d, v, z, *, learning_rate, t, wd=0.0, beta1=0.6, beta2=0.999, epsilon=1e-8):
    lr = learning_rate
    g = g + wd * w
    v = beta2 * v + (1 - beta2) * g * g
    d_t = (1 - beta1**t) / lr * (np.sqrt(v / (1 - beta2**t)) + epsilon)
    z = beta1 * z + (1 - beta1) * g - (d_t - beta1 * d) * w
    return -z / d_t, d_t, v, z


def _sparse(rows, values, shape):
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape)


def _f64(t):
    return t.double().numpy()


# ---------------------------------------------------------------------------------------- Ftrl: lazy rows
@pytest.mark.parametrize("impl", IMPLS)
def test_ftrl_lazy_update_touches_only_gradient_rows_and_follows_the_dense_rule(impl):
    rng = np.random.default_rng(3)
    kwargs = {"learning_rate": 0.3, "lamda1": 0.05, "beta": 0.7, "wd": 0.02, "rescale_grad": 0.5,
              "clip_gradient": 1.5}
    optimizer = opt.create("ftrl", lazy_update=True, impl=impl, **kwargs)
    w = torch.from_numpy(rng.uniform(-1, 1, (8, 3)).astype(np.float32))
    state = optimizer.create_state(0, w)
    ew, ez, en = _f64(w), np.zeros((8, 3)), np.zeros((8, 3))
    steps = [[1, 4, 4, 6], [0, 1], [7], [2, 5, 2, 2], [1, 4, 6]]  # duplicates are summed
    for rows in steps:
        values = torch.from_numpy(rng.standard_normal((len(rows), 3)).astype(np.float32) * 2)
        before = [w.clone()] + [s.clone() for s in state]
        optimizer.update([0], [w], [_sparse(rows, values, (8, 3))], [state])
        touched = sorted(set(rows))
        untouched = [r for r in range(8) if r not in touched]
        for new, old in zip([w, *state], before):
            assert torch.equal(new[untouched], old[untouched])  # bit for bit
        summed = np.zeros((8, 3))
        np.add.at(summed, rows, _f64(values))
        tw, tz, tn = ftrl_f64(ew[touched], summed[touched], ez[touched], en[touched], **kwargs)
        ew[touched], ez[touched], en[touched] = tw, tz, tn
        np.testing.assert_allclose(_f64(w), ew, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_f64(state.z), ez, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_f64(state.n), en, rtol=1e-5, atol=1e-6)
    assert torch.equal(w[3], before[0][3])  # never in a gradient: the initial weight, not 0


@pytest.mark.parametrize("impl", IMPLS)
def test_ftrl_without_lazy_update_densifies_so_every_row_is_recomputed(impl):
    torch.manual_seed(0)
    w0 = torch.rand(6, 2) + 0.5
    grad = _sparse([1, 3], torch.randn(2, 2), (6, 2))
    results = []
    for g in (grad, grad.to_dense()):
        optimizer = opt.create("ftrl", impl=impl, wd=0.01)
        assert optimizer.lazy_update is False
        w = w0.clone()
        state = optimizer.create_state(0, w)
        optimizer.update([0], [w], [g], [state])
        results.append([w, *state])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    w = results[0][0]
    assert torch.equal(w[[0, 2, 4, 5]], torch.zeros(4, 2))  # z = 0 there: the closed form gives 0
    assert (w[[1, 3]] != 0).any()


def test_ftrl_large_lamda1_gives_exact_zeros():
    optimizer = opt.create("ftrl", learning_rate=0.1, lamda1=100.0)
    w = torch.randn(5, 4)
    state = optimizer.create_state(0, w)
    for _ in range(3):
        optimizer.update([0], [w], [torch.randn(5, 4)], [state])
    assert torch.equal(w, torch.zeros(5, 4))
    assert (state.z != 0).all()


@pytest.mark.oracle
def test_ftrl_lazy_update_matches_mxnet_191_row_sparse_kernel():
    """MXNet 1.9.1 updates only the present rows when weight, state and gradient are all row-sparse."""
    rng = np.random.default_rng(7)
    w0 = rng.uniform(0.1, 1.0, (10, 4)).astype(np.float32)  # no zero rows: all rows stay stored
    row_sets = [np.sort(rng.choice(10, size=k, replace=False)).astype(np.int64)
                for k in (3, 5, 2, 4, 6, 1, 3, 5)]
    inputs = {"w0": w0}
    for k, rows in enumerate(row_sets):
        inputs[f"r{k}"] = rows
        inputs[f"v{k}"] = (rng.standard_normal((len(rows), 4)) * 2).astype(np.float32)
    kwargs = {"learning_rate": 0.2, "lamda1": 0.05, "beta": 1.5, "wd": 0.03, "rescale_grad": 0.7,
              "clip_gradient": 1.2}
    code = """
opt = mx.optimizer.create("ftrl", **params["kwargs"])
updater = mx.optimizer.get_updater(opt)
w = mx.nd.array(inputs["w0"]).tostype("row_sparse")
for k in range(params["steps"]):
    values = mx.nd.array(inputs["v%d" % k])
    rows = mx.nd.array(inputs["r%d" % k], dtype="int64")
    g = mx.nd.sparse.row_sparse_array((values, rows), shape=w.shape)
    updater(0, g, w)
outputs["w"] = w.asnumpy()
outputs["z"], outputs["n"] = (s.asnumpy() for s in updater.states[0])
results["stypes"] = [w.stype] + [s.stype for s in updater.states[0]]
"""
    out, results = run_mxnet(code, inputs, params={"kwargs": kwargs, "steps": len(row_sets)}, version="1.9")
    assert results["stypes"] == ["row_sparse"] * 3
    optimizer = opt.create("ftrl", lazy_update=True, **kwargs)
    w = torch.from_numpy(w0.copy())
    state = optimizer.create_state(0, w)
    for k in range(len(row_sets)):
        rows, values = torch.from_numpy(inputs[f"r{k}"]), torch.from_numpy(inputs[f"v{k}"])
        grad = torch.sparse_coo_tensor(rows[None], values, (10, 4))
        optimizer.update([0], [w], [grad], [state])
    np.testing.assert_allclose(w.numpy(), out["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.z.numpy(), out["z"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.n.numpy(), out["n"], rtol=1e-6, atol=1e-7)
    never = sorted(set(range(10)) - set(np.concatenate(row_sets).tolist()))
    assert never and np.array_equal(out["w"][never], w0[never])


@pytest.mark.oracle
def test_mxnet_2_handles_row_sparse_gradients_densely():
    """Why optzoo's defaults densify: MXNet 2.0 gives the same result for a row-sparse gradient and its dense
    copy (Ftrl, FTML, Signum, signSGD); Ftrl's rows without gradient become 0; states stay dense.
    Also pins MXNet's NaN at learning_rate=0 for Ftrl and FTML, which optzoo rejects."""
    code = """
w0 = inputs["w0"]
rows, values = inputs["rows"], inputs["values"]
cases = {"ftrl": {"wd": 0.02}, "ftml": {"wd": 0.02}, "signum": {"wd": 0.02, "wd_lh": 0.01},
         "signsgd": {"momentum": 0.0, "wd": 0.02, "wd_lh": 0.01}}
for label, kw in cases.items():
    for kind in ("rsp", "dense"):
        o = mx.optimizer.create("signum" if label.startswith("sign") else label, **kw)
        up = mx.optimizer.get_updater(o)
        w = mx.nd.array(w0)
        for _ in range(3):
            data = (mx.nd.array(values), mx.nd.array(rows, dtype="int64"))
            g = mx.nd.sparse.row_sparse_array(data, shape=w.shape)
            up(0, g if kind == "rsp" else g.tostype("default"), w)
        outputs[label + kind] = w.asnumpy()
        state = up.states[0]
        leaves = [] if state is None else (list(state) if isinstance(state, (tuple, list)) else [state])
        results[label + kind] = [s.stype for s in leaves]
for name in ("ftrl", "ftml"):
    o = mx.optimizer.create(name, learning_rate=0.0)
    up = mx.optimizer.get_updater(o)
    w = mx.nd.array(w0)
    up(0, mx.nd.array(np.ones_like(w0)), w)
    outputs[name + "_lr0"] = w.asnumpy()
"""
    rng = np.random.default_rng(1)
    inputs = {"w0": rng.uniform(-1, 1, (6, 3)).astype(np.float32), "rows": np.array([1, 4], dtype=np.int64),
              "values": rng.standard_normal((2, 3)).astype(np.float32)}
    out, results = run_mxnet(code, inputs)
    for label in ("ftrl", "ftml", "signum", "signsgd"):
        np.testing.assert_array_equal(out[label + "rsp"], out[label + "dense"])
        assert all(stype == "default" for stype in results[label + "rsp"])
    assert np.array_equal(out["ftrlrsp"][[0, 2, 3, 5]], np.zeros((4, 3), np.float32))
    assert np.isnan(out["ftrl_lr0"]).all() and np.isnan(out["ftml_lr0"]).all()
    # optzoo's defaults reproduce the dense results
    grad = _sparse([1, 4], torch.from_numpy(inputs["values"]), (6, 3))
    for label, name, kw in [("ftrl", "ftrl", {"wd": 0.02}), ("ftml", "ftml", {"wd": 0.02}),
                            ("signum", "signum", {"wd": 0.02, "wd_lh": 0.01}),
                            ("signsgd", "signum", {"momentum": 0.0, "wd": 0.02, "wd_lh": 0.01})]:
        optimizer = opt.create(name, **kw)
        w = torch.from_numpy(inputs["w0"].copy())
        state = optimizer.create_state(0, w)
        for _ in range(3):
            optimizer.update([0], [w], [grad], [state])
        np.testing.assert_array_equal(w.numpy(), out[label + "rsp"])


# ---------------------------------------------------------------------------------------- learning rate 0
@pytest.mark.parametrize("name", ["ftrl", "ftml"])
def test_zero_learning_rate_is_rejected_clearly(name):
    with pytest.raises(ValueError, match="learning_rate must be > 0.*divides by the learning rate"):
        opt.create(name, learning_rate=0.0)
    optimizer = opt.create(name)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        optimizer.set_learning_rate(0.0)
    with pytest.raises(ValueError, match="learning_rate"):
        optimizer.set_learning_rate(-1.0)
    optimizer.set_learning_rate(0.5)
    assert optimizer.learning_rate == 0.5


@pytest.mark.parametrize("name", ["ftrl", "ftml"])
@pytest.mark.parametrize("impl", IMPLS)
def test_a_schedule_reaching_zero_and_lr_mult_zero_leave_the_tensor_untouched(name, impl):
    torch.manual_seed(0)

    def schedule(num_update):
        return 0.05 if num_update <= 3 else 0.0

    optimizer = opt.create(name, impl=impl, wd=0.01, lr_scheduler=schedule)
    optimizer.set_lr_mult({1: 0.0})  # lr_mult=0 freezes parameter 1 from the start
    weights = [torch.randn(4, 3), torch.randn(5)]
    frozen = weights[1].clone()
    states = [optimizer.create_state(i, w) for i, w in enumerate(weights)]
    for _ in range(3):
        optimizer.update([0, 1], weights, [torch.randn(4, 3), torch.randn(5)], states)
    assert torch.isfinite(weights[0]).all()
    assert torch.equal(weights[1], frozen)
    assert all(torch.equal(s, torch.zeros_like(s)) for s in flatten_state(states[1]))
    before = [weights[0].clone()] + [s.clone() for s in flatten_state(states[0])]
    for _ in range(2):  # the schedule is now at 0
        optimizer.update([0, 1], weights, [torch.randn(4, 3), torch.randn(5)], states)
    for a, b in zip([weights[0], *flatten_state(states[0])], before):
        assert torch.equal(a, b)
    assert optimizer.num_update == 5


# ---------------------------------------------------------------------------------------- FTML
@pytest.mark.parametrize("impl", IMPLS)
def test_ftml_uses_each_parameters_own_step_count(impl):
    rng = np.random.default_rng(5)
    kwargs = {"learning_rate": 0.01, "beta1": 0.5, "beta2": 0.9, "epsilon": 1e-6, "wd": 0.03}
    optimizer = opt.create("ftml", impl=impl, begin_num_update=4, **kwargs)
    weights = [torch.from_numpy(rng.uniform(-1, 1, s).astype(np.float32)) for s in [(3, 2), (4,)]]
    states = [optimizer.create_state(i, w) for i, w in enumerate(weights)]
    expected = [[_f64(w), np.zeros(w.shape), np.zeros(w.shape), np.zeros(w.shape)] for w in weights]
    counts = [4, 4]
    for step in range(9):
        indices = [0, 1] if step % 3 == 0 else [0]  # parameter 1 is updated a third as often
        grads = [torch.from_numpy(rng.standard_normal(weights[i].shape).astype(np.float32)) for i in indices]
        optimizer.update(indices, [weights[i] for i in indices], grads, [states[i] for i in indices])
        for i, g in zip(indices, grads):
            counts[i] += 1
            expected[i] = list(ftml_f64(*expected[i][:1], _f64(g), *expected[i][1:], t=counts[i], **kwargs))
    assert counts == [13, 7] and optimizer.num_update == 13
    for w, s, e in zip(weights, states, expected):
        np.testing.assert_allclose(_f64(w), e[0], rtol=1e-5, atol=1e-6)
        for got, want in zip(s, e[1:]):
            np.testing.assert_allclose(_f64(got), want, rtol=1e-5, atol=1e-6)


def test_state_dtypes_follow_mxnet():
    half = torch.zeros(3, dtype=torch.float16)
    assert all(s.dtype == torch.float32 for s in opt.create("ftrl").create_state(0, half))
    assert all(s.dtype == torch.float16 for s in opt.create("ftml").create_state(0, half))
    assert opt.create("signum").create_state(0, half).dtype == torch.float16
    assert opt.create("signum", momentum=0.0).create_state(0, half) is None


# ---------------------------------------------------------------------------------------- Signum
@pytest.mark.parametrize("impl", IMPLS)
def test_signsgd_steps_along_the_raw_gradient_sign(impl):
    w0 = torch.tensor([0.5, -0.25, 1.0, 0.0, -2.0])
    g = torch.tensor([3.0, -1e-30, 0.0, 0.0, 20.0])  # 1e-20 * -1e-30 would round to -0 in float32
    lr, wd, wd_lh = 0.1, 0.2, 0.05
    results = []
    for extra in ({}, {"rescale_grad": 1e-20, "clip_gradient": 1e-4}):
        optimizer = opt.create("signum", momentum=0.0, learning_rate=lr, wd=wd, wd_lh=wd_lh, impl=impl,
                               **extra)
        w = w0.clone()
        optimizer.update([0], [w], [g], [optimizer.create_state(0, w)])
        results.append(w)
    assert torch.equal(results[0], results[1])  # rescale_grad and clip_gradient are not applied
    expected = (1 - lr * (wd + wd_lh)) * _f64(w0) - lr * np.sign(_f64(g))
    np.testing.assert_allclose(_f64(results[0]), expected, rtol=1e-6, atol=1e-7)
    assert results[0][3] == 0.0  # sign(0) = 0 and 0 * decay = 0
    assert abs(results[0][2].item() - (1 - lr * (wd + wd_lh))) < 1e-7  # only the decay


@pytest.mark.parametrize("impl", IMPLS)
def test_signum_momentum_rule_with_decoupled_decay_and_zero_sign(impl):
    lr, wd, wd_lh, mu, rg, cg = 0.1, 0.5, 0.05, 0.8, 0.5, 1.0
    optimizer = opt.create("signum", learning_rate=lr, momentum=mu, wd=wd, wd_lh=wd_lh, rescale_grad=rg,
                           clip_gradient=cg, impl=impl)
    w = torch.tensor([1.0, -1.0, 0.0, 0.25, 2.0])
    g = torch.tensor([-1.0, 0.5, 0.0, -0.25, 10.0])  # coordinate 3: clip(rg*g) + wd*w == 0 exactly
    mom = optimizer.create_state(0, w)
    ew, em = _f64(w), np.zeros(5)
    for step in range(3):
        optimizer.update([0], [w], [g], [mom])
        d = np.clip(rg * _f64(g), -cg, cg) + wd * ew
        em = mu * em - (1 - mu) * d
        ew = (1 - lr * wd_lh) * ew + lr * np.sign(em)
        np.testing.assert_allclose(_f64(mom), em, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(_f64(w), ew, rtol=1e-6, atol=1e-7)
        if step == 0:  # zero momentum: no signed step, only the decoupled decay
            assert mom[3] == 0 and abs(w[3].item() - (1 - lr * wd_lh) * 0.25) < 1e-8
        assert mom[2] == 0 and w[2] == 0


def test_signum_with_momentum_needs_its_state():
    optimizer = opt.create("signum")
    with pytest.raises(ValueError, match="create_state"):
        optimizer.update([0], [torch.ones(3)], [torch.ones(3)], [None])


# ---------------------------------------------------------------------------------------- exact square root
def test_exact_sqrt_is_correctly_rounded():
    x = np.abs(np.random.default_rng(0).standard_normal(50_000).astype(np.float32)) * 50
    x[:4] = [0.0, 1.0, 4.0, 1e-30]
    want = np.sqrt(x)  # numpy's float32 sqrt is IEEE (correctly rounded), as is C's sqrtf used by MXNet
    assert np.array_equal(exact_sqrt(torch.from_numpy(x)).numpy(), want)
    got = exact_sqrt_foreach([torch.from_numpy(x), torch.from_numpy(x[:7])])
    assert np.array_equal(got[0].numpy(), want) and np.array_equal(got[1].numpy(), want[:7])
    assert exact_sqrt(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
