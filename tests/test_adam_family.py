"""What the generic table cannot say about AdamW, Adamax, Nadam and AdaBelief: closed-form first steps (decay
placement, epsilon placement), MXNet's self-disagreements (AdamW's readable step, the rescale_grad=0 skip of
the fused kernels) and Nadam's optimizer-wide momentum schedule against the paper's per-parameter one."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from optzoo import optimizer as opt
from optzoo.optimizer.adam import AdamaxState, AdamState

BETA1, BETA2 = 0.9, 0.999


def _one_step(name, w0, g, **kwargs):
    optimizer = opt.create(name, **kwargs)
    w = w0.clone()
    state = optimizer.create_state(0, w)
    optimizer.update([0], [w], [g], [state])
    return w, state


def _run(name, weights, grads, impl="auto", **kwargs):
    """Updates copies of ``weights`` with the gradient lists in ``grads``; returns them and the optimizer."""
    optimizer = opt.create(name, impl=impl, **kwargs)
    updater = opt.get_updater(optimizer)
    ws = [torch.from_numpy(w.copy()) for w in weights]
    for step in grads:
        updater(list(range(len(ws))), [torch.from_numpy(g) for g in step], ws)
    return [w.numpy() for w in ws], optimizer


# ------------------------------------------------------------------------------------ closed-form first steps
@pytest.mark.parametrize("correct_bias", [True, False])
def test_adamw_first_step_decays_the_old_weight_with_the_corrected_rate(correct_bias):
    w0, g = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, -4.0, 2.0])
    lr, wd, eps = 0.1, 0.2, 0.5
    w, state = _one_step("adamw", w0, g, learning_rate=lr, wd=wd, epsilon=eps, clip_gradient=3.0,
                         correct_bias=correct_bias)
    gc = g.clamp(-3.0, 3.0)  # the decay is not part of the clipped gradient
    m, v = 0.1 * gc, 0.001 * gc * gc
    lr_t = lr * math.sqrt(1 - BETA2) / (1 - BETA1) if correct_bias else lr
    torch.testing.assert_close(state.mean, m)
    torch.testing.assert_close(state.var, v)
    torch.testing.assert_close(w, w0 - lr_t * (m / (v.sqrt() + eps) + wd * w0))


def test_adabelief_first_step_clips_the_decayed_gradient_and_adds_epsilon_to_the_belief():
    w0, g = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, -4.0, 2.0])
    lr, wd, eps = 0.1, 0.5, 0.25
    w, state = _one_step("adabelief", w0, g, learning_rate=lr, wd=wd, epsilon=eps, clip_gradient=1.0)
    d = (g + wd * w0).clamp(-1.0, 1.0)
    m = 0.1 * d
    s = 0.001 * (d - m) ** 2 + eps
    torch.testing.assert_close(state.mean, m)
    torch.testing.assert_close(state.var, s)
    lr_t = lr * math.sqrt(1 - BETA2) / (1 - BETA1)
    torch.testing.assert_close(w, w0 - lr_t * m / (s.sqrt() + eps))


def test_adamax_first_step_and_epsilon_keeps_silent_coordinates_finite():
    w0, g = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, -4.0, 0.0])
    w, state = _one_step("adamax", w0, g, learning_rate=0.1, wd=0.0, epsilon=0.5)
    assert isinstance(state, AdamaxState)
    torch.testing.assert_close(state.inf_norm, g.abs())
    torch.testing.assert_close(w, w0 - 0.1 / 0.1 * (0.1 * g) / (g.abs() + 0.5))
    w, _ = _one_step("adamax", w0, g)
    assert torch.isfinite(w).all() and w[2] == w0[2]
    w, _ = _one_step("adamax", w0, g, epsilon=0.0)  # MXNet 1.9.1's rule: 0/0 where the gradient was always 0
    assert torch.isnan(w[2])


def test_adamax_beta2_one_keeps_the_running_maximum():
    w = torch.zeros(2)
    optimizer = opt.create("adamax", beta2=1.0)
    state = optimizer.create_state(0, w)
    for g in ([3.0, -1.0], [1.0, 2.0], [-0.5, 0.1]):
        optimizer.update([0], [w], [torch.tensor(g)], [state])
    torch.testing.assert_close(state.inf_norm, torch.tensor([3.0, 2.0]))


def test_nadam_first_step():
    w0, g = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, -4.0, 2.0])
    lr, wd, eps = 0.1, 0.2, 0.5
    w, state = _one_step("nadam", w0, g, learning_rate=lr, wd=wd, epsilon=eps)
    d = g + wd * w0
    mu1 = BETA1 * (1 - 0.5 * 0.96 ** 0.004)
    mu2 = BETA1 * (1 - 0.5 * 0.96 ** 0.008)
    m, v = 0.1 * d, 0.001 * d * d
    m_bar = mu2 * m / (1 - mu1 * mu2) + (1 - mu1) * d / (1 - mu1)
    torch.testing.assert_close(w, w0 - lr * m_bar / ((v / 0.001).sqrt() + eps))
    assert isinstance(state, AdamState)


# ---------------------------------------------------------------------------------------- Nadam's schedule
def _nadam_problem(n_tensors=3, steps=30, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (5,), (2, 2)][:n_tensors]
    weights = [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return weights, grads


def test_nadam_optimizer_scope_shares_one_schedule_across_parameters():
    weights, grads = _nadam_problem()
    alone, _ = _run("nadam", weights[:1], [g[:1] for g in grads])
    together, optimizer = _run("nadam", weights, grads)
    mu = [BETA1 * (1 - 0.5 * 0.96 ** (t * 0.004)) for t in range(1, 31)]
    assert optimizer.m_schedule == pytest.approx(math.prod(m**3 for m in mu), rel=1e-12)
    assert not np.allclose(alone[0], together[0], rtol=1e-4, atol=1e-5)  # MXNet: depends on the other params


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_nadam_parameter_scope_is_independent_of_other_parameters(impl):
    weights, grads = _nadam_problem()
    alone, _ = _run("nadam", weights[:1], [g[:1] for g in grads], impl=impl, schedule_scope="parameter")
    together, optimizer = _run("nadam", weights, grads, impl=impl, schedule_scope="parameter")
    np.testing.assert_array_equal(alone[0], together[0])
    assert optimizer.m_schedule == 1.0  # the optimizer-wide number is not used


def test_nadam_parameter_scope_matches_torch_nadam():
    weights, grads = _nadam_problem(steps=60)
    ours, _ = _run("nadam", weights, grads, learning_rate=0.01, wd=0.01, schedule_scope="parameter")
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in weights]
    reference = torch.optim.NAdam(params, lr=0.01, betas=(BETA1, BETA2), eps=1e-8, weight_decay=0.01,
                                  momentum_decay=0.004)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.from_numpy(g)
        reference.step()
    for a, p in zip(ours, params):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_nadam_parameter_scope_product_survives_long_runs_and_cache_eviction():
    optimizer = opt.create("nadam", schedule_scope="parameter", beta1=0.99)
    expected, value = {}, 1.0
    for t in range(1, 3001):
        value *= optimizer._momentum(t)
        expected[t] = value
    for t in [1, 2, 3, 2500, 7, 3000, *range(100, 140), 1]:  # out of order, more counts than the cache holds
        assert optimizer._scalars([t])[0].m_schedule == expected[t]


def test_nadam_extra_state_round_trip_and_rejects_garbage():
    optimizer = opt.create("nadam")
    optimizer._scalars([1, 1, 2])
    restored = opt.create("nadam")
    restored.load_extra_state(optimizer.extra_state())
    assert restored.m_schedule == optimizer.m_schedule < 1.0
    restored.load_extra_state({})
    assert restored.m_schedule == optimizer.m_schedule
    for bad, exc in [(2.0, ValueError), (math.nan, ValueError), ("0.5", TypeError)]:
        with pytest.raises(exc, match="m_schedule"):
            restored.load_extra_state({"m_schedule": bad})


# ---------------------------------------------------------------------------------------- against MXNet
_MXNET_SNIPPET = r"""
def run(name, kwargs, n, steps, prefix):
    optimizer = mx.optimizer.create(name, **kwargs)
    updater = mx.optimizer.get_updater(optimizer)
    weights = [mx.nd.array(inputs[f"w0/{i}"]) for i in range(n)]
    for k in range(steps):
        updater(list(range(n)), [mx.nd.array(inputs[f"g/{k}/{i}"]) for i in range(n)], weights)
    for i in range(n):
        outputs[f"{prefix}/{i}"] = weights[i].asnumpy()
    return optimizer

for case in params:
    optimizer = run(case["name"], case["kwargs"], case["n"], case["steps"], case["id"])
    if case["name"] == "nadam":
        results[case["id"]] = optimizer.m_schedule
"""

_CASES = [
    {"id": "adamw-fused", "name": "adamw", "kwargs": {"learning_rate": 0.01, "wd": 0.1}, "n": 3, "steps": 30},
    {"id": "adamw-step", "name": "adamw",
     "kwargs": {"learning_rate": 0.01, "wd": 0.1, "use_fused_step": False}, "n": 3, "steps": 30},
    {"id": "adamw-rg0", "name": "adamw", "kwargs": {"learning_rate": 0.01, "rescale_grad": 0.0, "wd": 0.1},
     "n": 3, "steps": 5},
    {"id": "adamw-rg0-step", "name": "adamw",
     "kwargs": {"learning_rate": 0.01, "rescale_grad": 0.0, "wd": 0.1, "use_fused_step": False},
     "n": 3, "steps": 5},
    {"id": "adabelief-rg0", "name": "adabelief",
     "kwargs": {"learning_rate": 0.01, "rescale_grad": 0.0, "wd": 0.1}, "n": 3, "steps": 5},
    {"id": "nadam", "name": "nadam", "kwargs": {"learning_rate": 0.01}, "n": 3, "steps": 30},
]


@functools.cache
def _mxnet():
    from oracle import run_mxnet

    weights, grads = _nadam_problem(steps=30, seed=4)
    inputs = {f"w0/{i}": w for i, w in enumerate(weights)}
    inputs.update({f"g/{k}/{i}": g for k, step in enumerate(grads) for i, g in enumerate(step)})
    outputs, results = run_mxnet(_MXNET_SNIPPET, inputs, params=_CASES)
    return weights, grads, outputs, results


def _ours(case_id, **overrides):
    case = next(c for c in _CASES if c["id"] == case_id)
    weights, grads, outputs, _ = _mxnet()
    kwargs = {k: v for k, v in case["kwargs"].items() if k != "use_fused_step"}
    kwargs.update(overrides)
    ours, optimizer = _run(case["name"], weights, grads[: case["steps"]], **kwargs)
    theirs = [outputs[f"{case_id}/{i}"] for i in range(case["n"])]
    return ours, theirs, optimizer, weights


@pytest.mark.oracle
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_adamw_follows_mxnet_fused_kernel_not_its_readable_step(impl):
    ours, fused, _, _ = _ours("adamw-fused", impl=impl)
    _, step, _, _ = _ours("adamw-step")
    for a, b, c in zip(ours, fused, step):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert np.abs(a - c).max() > 1e-6  # MXNet's step decays the already-updated weight


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["adamw", "adabelief"])
def test_rescale_grad_zero_is_a_zero_gradient_not_a_skipped_update(name):
    ours, skipped, _, weights = _ours(f"{name}-rg0")
    for w0, a, b in zip(weights, ours, skipped):
        np.testing.assert_array_equal(b, w0)  # MXNet's fused kernel leaves everything untouched
        assert np.abs(a - w0).max() > 1e-4  # optzoo: moments decay and the weight decay still applies
    if name == "adamw":  # MXNet's readable step does not skip (and with g = 0 its decay placement is moot)
        ours, step, _, _ = _ours("adamw-rg0-step")
        for a, b in zip(ours, step):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
def test_nadam_m_schedule_matches_mxnet_optimizer_wide_scalar():
    ours, theirs, optimizer, _ = _ours("nadam")
    _, _, _, results = _mxnet()
    assert optimizer.m_schedule == pytest.approx(results["nadam"], rel=1e-12)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
