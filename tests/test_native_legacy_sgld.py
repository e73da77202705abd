"""Native kernels of the legacy LBSGD (MXNet 1.9.1 numerics) and of SGLD against the readable path.

LBSGD (rules_legacy.cpp "lbsgd"): accumulation (batch_scale > 1) or not, momentum on/off, clipping, rescaling,
wd, the warmup ramps and the 'lars' ratio (two passes: norms, then the update), tensors of one step completing
their macro-batches at different micro-batches, a scheduler (read before counting, as MXNet 1.9.1).
Tolerances: rtol 1e-6 / atol 1e-7 (today they are exact); 'lars' rtol 1e-5 / atol 1e-6 (its squared norms are
summed in a different order than torch's, which can move a float32-rounded norm by one ulp).

SGLD (rules_legacy.cpp "sgld"): Python draws each tensor's noise through ``SGLD._noise`` right before that
tensor's kernel call, so the noise is the reference path's: weights must be bit-identical and the generator must
end in the same state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_support import require_native

from optzoo import optimizer as opt
from optzoo.lr_scheduler import FactorScheduler
from optzoo.optimizer import sgld as sgld_module
from optzoo.optimizer.base import _leaves


@pytest.fixture(autouse=True)
def _native_required():
    """Skips without the kernels, fails under OPTZOO_REQUIRE_NATIVE=1 (a module-level skipif would not)."""
    require_native()


TOL = {"rtol": 1e-6, "atol": 1e-7}
LARS_TOL = {"rtol": 1e-5, "atol": 1e-6}
#: a size that is not a multiple of 16, several small ones, and one split into several chunks (> 32768)
SHAPES = [(7,), (5, 13), (3, 4, 5), (300, 130)]
LOW = [torch.float16, torch.bfloat16]
LOW_IDS = ["float16", "bfloat16"]

LBSGD_CASES = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "wd": 0.03, "clip_gradient": 0.4, "rescale_grad": 0.5},
    {"wd": 0.02, "clip_gradient": 0.3},
    {"momentum": 0.9, "batch_scale": 3, "warmup_epochs": 1, "updates_per_epoch": 8, "wd": 0.01, "clip_gradient": 0.5},
    {"batch_scale": 2, "warmup_strategy": "power2", "warmup_epochs": 2, "updates_per_epoch": 5, "begin_epoch": 1,
     "wd": 0.02},
    {"batch_scale": 4, "warmup_strategy": "sqrt", "momentum": 0.5, "updates_per_epoch": 4, "rescale_grad": 0.5},
    {"batch_scale": 3, "warmup_epochs": 0, "rescale_grad": 2.0, "begin_num_update": 5},
    {"warmup_strategy": "lars", "momentum": 0.9, "wd": 0.01, "batch_scale": 2},
    {"warmup_strategy": "lars", "wd": 0.05, "learning_rate": 0.1},
    {"warmup_strategy": "lars", "momentum": 0.5, "wd": 0.01, "clip_gradient": 0.3, "rescale_grad": 0.7},
    {"warmup_strategy": "lars", "batch_scale": 3, "clip_gradient": 0.5},
]
LBSGD_IDS = [f"lbsgd-{i}" for i in range(len(LBSGD_CASES))]

SGLD_CASES = [
    {"seed": 0},
    {"seed": 1, "wd": 0.03, "clip_gradient": 0.4, "rescale_grad": 0.8},
    {"seed": 2, "learning_rate": 0.01, "wd": 0.05},
]
SGLD_IDS = [f"sgld-{i}" for i in range(len(SGLD_CASES))]


def _tol(kwargs):
    return LARS_TOL if kwargs.get("warmup_strategy") == "lars" else TOL


def _gradients(gen, shapes, dtype, step):
    scale = 2.0 if step % 7 == 3 else 0.1  # some steps large enough to clip
    return [(torch.randn(s, generator=gen) * scale).to(dtype) for s in shapes]


def _run(name, kwargs, impl, *, dtype=torch.float32, steps=60, shapes=SHAPES, stagger=False, wd_mult=None):
    """``steps`` updates through ``update_multi_precision`` (lr_mult on tensor 1, a learning-rate change half way);
    with ``stagger`` the first step updates tensor 0 only, so tensors complete macro-batches at different steps.
    Returns (optimizer, weights, states)."""
    mp = dtype != torch.float32
    o = opt.create(name, impl=impl, multi_precision=mp, **kwargs)
    o.set_lr_mult({1: 0.5})
    if wd_mult is not None:
        o.set_wd_mult(wd_mult)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    indices = list(range(len(weights)))
    for step in range(steps):
        if step == steps // 2 and o.lr_scheduler is None:
            o.set_learning_rate(0.5 * o.learning_rate)
        grads = _gradients(gen, shapes, dtype, step)
        if stagger and step == 0:
            o.update_multi_precision(indices[:1], weights[:1], grads[:1], states[:1])
        else:
            o.update_multi_precision(indices, weights, grads, states)
    return o, weights, states


def _assert_close(got, want, what, tol=None):
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what} #{k}"
        if tol is None:
            assert torch.equal(g, w), f"{what} #{k}: not bit-identical to the reference"
        else:
            np.testing.assert_allclose(g.float().numpy(), w.float().numpy(), err_msg=f"{what} #{k}", **tol)


def _no_python_rule(monkeypatch, o):
    """Makes every Python rule of ``o`` raise: the update must run in the native kernel."""
    def boom(*args, **kwargs):
        raise AssertionError("the Python rule ran instead of the native kernel")

    for attr in ("_foreach_rule", "_reference_rule"):
        monkeypatch.setattr(o, attr, boom)


# =========================================================================================== LBSGD
@pytest.mark.parametrize("kwargs", LBSGD_CASES, ids=LBSGD_IDS)
def test_lbsgd_native_matches_reference(kwargs):
    o, w_nat, s_nat = _run("lbsgd", kwargs, "native")
    assert o.impl == "native"
    _, w_ref, s_ref = _run("lbsgd", kwargs, "reference")
    _assert_close(w_nat, w_ref, "weight", _tol(kwargs))
    _assert_close(_leaves(s_nat), _leaves(s_ref), "state", _tol(kwargs))


@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("kwargs", LBSGD_CASES, ids=LBSGD_IDS)
def test_lbsgd_native_multi_precision_matches_reference(kwargs, dtype):
    _, w_nat, s_nat = _run("lbsgd", kwargs, "native", dtype=dtype, steps=50)
    _, _, s_ref = _run("lbsgd", kwargs, "reference", dtype=dtype, steps=50)
    masters = [s[0] for s in s_nat]
    assert all(m.dtype == torch.float32 for m in masters)
    _assert_close(masters, [s[0] for s in s_ref], "master copy", _tol(kwargs))
    _assert_close(_leaves([s[1] for s in s_nat]), _leaves([s[1] for s in s_ref]), "state", _tol(kwargs))
    for w, m in zip(w_nat, masters):
        assert w.dtype == dtype
        assert torch.equal(w, m.to(dtype)), "low-precision weight is not the rounded master copy"


@pytest.mark.parametrize("kwargs", [LBSGD_CASES[4], LBSGD_CASES[6], LBSGD_CASES[8], LBSGD_CASES[11]],
                         ids=["accumulate", "sqrt-momentum", "lars-accumulate", "lars-clip"])
def test_lbsgd_tensors_completing_at_different_steps(monkeypatch, kwargs):
    """Tensor 0 is one micro-batch ahead: in every step some tensors only accumulate and others update."""
    o, w_nat, s_nat = _run("lbsgd", kwargs, "native", stagger=True, wd_mult={2: 0.0, 3: 2.0})
    _, w_ref, s_ref = _run("lbsgd", kwargs, "reference", stagger=True, wd_mult={2: 0.0, 3: 2.0})
    _assert_close(w_nat, w_ref, "weight", _tol(kwargs))
    _assert_close(_leaves(s_nat), _leaves(s_ref), "state", _tol(kwargs))
    counts = o._index_update_count
    assert counts[0] == counts[1] + 1
    # and the kernel really runs such a mixed step
    _no_python_rule(monkeypatch, o)
    before = [t.clone() for t in [*w_nat, *_leaves(s_nat)]]
    o.update(list(range(len(w_nat))), w_nat, [torch.randn(s) for s in SHAPES], s_nat)
    assert any(not torch.equal(a, b) for a, b in zip([*w_nat, *_leaves(s_nat)], before))


@pytest.mark.parametrize("kwargs", [{"momentum": 0.9, "batch_scale": 2, "warmup_epochs": 1, "updates_per_epoch": 6},
                                    {"warmup_strategy": "lars", "momentum": 0.9, "wd": 0.01}],
                         ids=["warmup", "lars"])
def test_lbsgd_scheduler_read_before_counting(monkeypatch, kwargs):
    """With a scheduler LBSGD reads the lr before counting each parameter: the one-call path declines, the step
    goes through _run and still runs the kernel."""
    results = []
    for impl in ("native", "reference"):
        sched = FactorScheduler(step=3, factor=0.7, base_lr=0.05, warmup_steps=4, warmup_begin_lr=0.001)
        o = opt.create("lbsgd", impl=impl, lr_scheduler=sched, **kwargs)
        if impl == "native":
            _no_python_rule(monkeypatch, o)
        gen = torch.Generator().manual_seed(3)
        weights = [torch.randn(s, generator=gen) for s in SHAPES]
        states = [o.create_state(i, w) for i, w in enumerate(weights)]
        for step in range(20):
            o.update(list(range(len(weights))), weights, _gradients(gen, SHAPES, torch.float32, step), states)
        results.append([*weights, *_leaves(states)])
    _assert_close(results[0], results[1], "scheduled", _tol(kwargs))


@pytest.mark.parametrize("mp", [False, True], ids=["float32", "float16-mp"])
@pytest.mark.parametrize("kwargs", LBSGD_CASES, ids=LBSGD_IDS)
def test_lbsgd_kernel_runs(monkeypatch, kwargs, mp):
    dtype = torch.float16 if mp else torch.float32
    o = opt.create("lbsgd", multi_precision=mp, **kwargs)
    assert o.impl == "native"
    _no_python_rule(monkeypatch, o)
    calls = []
    real_aux = o._native_aux

    def aux(*args):
        calls.append(1)
        return real_aux(*args)

    monkeypatch.setattr(o, "_native_aux", aux)
    weights = [torch.randn(s).to(dtype) for s in SHAPES]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    before = [w.clone() for w in weights]
    steps = 2 * kwargs.get("batch_scale", 1)
    for _ in range(steps):
        o.update_multi_precision(list(range(len(weights))), weights, [torch.randn_like(w) for w in weights], states)
    assert len(calls) == steps  # one kernel call per step
    assert any(not torch.equal(a, b) for a, b in zip(weights, before))


def test_lbsgd_accumulating_step_leaves_weights_alone(monkeypatch):
    o = opt.create("lbsgd", momentum=0.9, batch_scale=3, wd=0.1)
    _no_python_rule(monkeypatch, o)
    weights = [torch.randn(s) for s in SHAPES]
    states = [o.create_state(i, w) for i, w in enumerate(weights)]
    before = [w.clone() for w in weights]
    grads = [[torch.randn(s) for s in SHAPES] for _ in range(3)]
    for k in range(2):
        o.update(list(range(len(weights))), weights, grads[k], states)
    assert all(torch.equal(a, b) for a, b in zip(weights, before))
    assert all(torch.equal(s.cum_grad, g0 + g1) for s, g0, g1 in zip(states, grads[0], grads[1]))
    assert not any(s.momentum.any() for s in states)
    o.update(list(range(len(weights))), weights, grads[2], states)
    assert not any(s.cum_grad.any() for s in states)
    assert all(not torch.equal(a, b) for a, b in zip(weights, before))


@pytest.mark.parametrize("kwargs", [{"wd": 0.03}, {"wd": 0.03, "warmup_strategy": "lars", "momentum": 0.9}],
                         ids=["plain", "lars"])
def test_lbsgd_lazy_sparse(kwargs):
    """Row-sparse gradients stay on LBSGD's own lazy update (Python); the dense tensors of the same step run
    natively; untouched rows stay untouched."""
    results, initial = [], None
    rows = [1, 4, 6]
    for impl in ("native", "reference"):
        o = opt.create("lbsgd", impl=impl, lazy_update=True, **kwargs)
        gen = torch.Generator().manual_seed(5)
        weights = [torch.randn(8, 5, generator=gen), torch.randn(300, 130, generator=gen)]
        initial = [w.clone() for w in weights]
        states = [o.create_state(i, w) for i, w in enumerate(weights)]
        for _ in range(30):
            idx = torch.tensor(rows + rows[:1])
            sparse = torch.sparse_coo_tensor(idx[None, :], torch.randn(len(idx), 5, generator=gen), (8, 5),
                                             check_invariants=True)
            o.update([0, 1], weights, [sparse, torch.randn(300, 130, generator=gen) * 0.1], states)
        results.append([*weights, *_leaves(states)])
    _assert_close(results[0], results[1], "lazy", _tol(kwargs))
    untouched = torch.ones(8, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(results[0][0][untouched], initial[0][untouched])


def test_lbsgd_subclass_overriding_the_rule_takes_the_torch_path():
    class Mine(opt.LBSGD):
        def _foreach_rule(self, *args):
            return super()._foreach_rule(*args)

    assert Mine().impl == "foreach"


# =========================================================================================== SGLD
def _sgld_run(kwargs, impl, *, dtype=torch.float32, steps=50, shapes=SHAPES, mixed=False):
    """As _run, for SGLD (seeded private generator); ``mixed`` adds a float32 weight to a multi-precision step."""
    mp = dtype != torch.float32
    o = opt.create("sgld", impl=impl, multi_precision=mp, **kwargs)
    o.set_lr_mult({1: 0.5})
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    if mixed:
        weights.append(torch.randn(33, generator=gen))
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    indices = list(range(len(weights)))
    for step in range(steps):
        if step == steps // 2:
            o.set_learning_rate(0.5 * o.learning_rate)
        grads = [(torch.randn(w.shape, generator=gen) * (2.0 if step % 7 == 3 else 0.1)).to(w.dtype)
                 for w in weights]
        o.update_multi_precision(indices, weights, grads, states)
    return o, weights, states


@pytest.mark.parametrize("kwargs", SGLD_CASES, ids=SGLD_IDS)
def test_sgld_native_equals_reference(kwargs):
    o_nat, w_nat, _ = _sgld_run(kwargs, "native")
    assert o_nat.impl == "native"
    o_ref, w_ref, _ = _sgld_run(kwargs, "reference")
    _assert_close(w_nat, w_ref, "weight")
    assert torch.equal(o_nat.generator.get_state(), o_ref.generator.get_state())


@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("kwargs", SGLD_CASES, ids=SGLD_IDS)
def test_sgld_native_multi_precision_equals_reference(kwargs, dtype):
    o_nat, w_nat, s_nat = _sgld_run(kwargs, "native", dtype=dtype, mixed=True)
    o_ref, w_ref, s_ref = _sgld_run(kwargs, "reference", dtype=dtype, mixed=True)
    _assert_close(w_nat, w_ref, "weight")
    masters = [s[0] for s in s_nat[:-1]]
    _assert_close(masters, [s[0] for s in s_ref[:-1]], "master copy")
    for w, m in zip(w_nat, masters):
        assert w.dtype == dtype and torch.equal(w, m.to(dtype)), "low-precision weight is not the rounded master"
    assert torch.equal(o_nat.generator.get_state(), o_ref.generator.get_state())


def test_sgld_default_generator_sequence():
    """seed=None draws from torch's default generator: same weights, same global RNG state afterwards."""
    results = []
    for impl in ("native", "reference"):
        torch.manual_seed(123)
        o = opt.create("sgld", impl=impl, wd=0.01)
        weights = [torch.ones(s) for s in SHAPES]
        for _ in range(5):
            o.update(list(range(len(weights))), weights, [torch.full(s, 0.5) for s in SHAPES], [None] * len(SHAPES))
        results.append((weights, torch.get_rng_state()))
    _assert_close(results[0][0], results[1][0], "weight")
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("mp", [False, True], ids=["float32", "bfloat16-mp"])
def test_sgld_kernel_runs_one_tensor_at_a_time(monkeypatch, mp):
    """The Python rules never run; one kernel call per tensor, the noise drawn for one tensor at a time (the
    float32 target: the master copy under multi-precision)."""
    dtype = torch.bfloat16 if mp else torch.float32
    o = opt.create("sgld", seed=0, multi_precision=mp)
    assert o.impl == "native"
    _no_python_rule(monkeypatch, o)
    monkeypatch.setattr(sgld_module, "sgld_reference", lambda *a, **k: pytest.fail("Python fallback ran"))
    drawn = []
    real_noise = o._noise

    def noise(weights, lrs):
        assert len(weights) == 1 and weights[0].dtype == torch.float32
        drawn.append(weights[0])
        return real_noise(weights, lrs)

    monkeypatch.setattr(o, "_noise", noise)
    weights = [torch.randn(s).to(dtype) for s in SHAPES]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    before = [w.clone() for w in weights]
    o.update_multi_precision(list(range(len(weights))), weights, [torch.randn_like(w) for w in weights], states)
    targets = [s[0] for s in states] if mp else weights
    assert len(drawn) == len(SHAPES) and all(d is t for d, t in zip(drawn, targets))
    assert all(not torch.equal(a, b) for a, b in zip(weights, before))


def test_sgld_declined_step_draws_once():
    """A float64 weight: the native path declines before drawing; the torch path then draws once, as the
    reference path does (same weights, same generator state)."""
    results = []
    for impl in ("native", "reference"):
        o = opt.create("sgld", impl=impl, seed=4, wd=0.02)
        weights = [torch.ones(6, 5), torch.ones(7, dtype=torch.float64)]
        for _ in range(3):
            o.update([0, 1], weights, [torch.full((6, 5), 0.3), torch.full((7,), 0.3, dtype=torch.float64)],
                     [None, None])
        results.append((weights, o.generator.get_state()))
    assert torch.equal(results[0][0][0], results[1][0][0]) and torch.equal(results[0][0][1], results[1][0][1])
    assert torch.equal(results[0][1], results[1][1])


def test_sgld_declined_step_leaves_generator_alone():
    o = opt.create("sgld", seed=4)
    state = o.generator.get_state()
    w = torch.ones(6, 5).t()  # non-contiguous: the kernel would not take it
    assert not o._native_call([0], [w], [torch.ones(5, 6)], [None], [0.1], [0.0], [1], False)
    assert torch.equal(o.generator.get_state(), state)


@pytest.mark.parametrize("mp", [False, True], ids=["float32", "float16-mp"])
def test_sgld_kernel_declining_after_the_draw_finishes_in_python(monkeypatch, mp):
    """An overridden _noise returning a tensor the kernel does not take (non-contiguous): that tensor is
    finished by the Python rule with the noise already drawn, exactly as the reference path."""
    dtype = torch.float16 if mp else torch.float32
    fallbacks = []
    real_reference = sgld_module.sgld_reference
    monkeypatch.setattr(sgld_module, "sgld_reference", lambda *a, **k: fallbacks.append(1) or real_reference(*a, **k))
    results = []
    for impl in ("native", "reference"):
        if impl == "reference":
            monkeypatch.setattr(sgld_module, "sgld_reference", real_reference)
        o = opt.create("sgld", impl=impl, multi_precision=mp, wd=0.01, learning_rate=0.01)
        o._noise = lambda weights, lrs: [torch.full((1,), 0.25 * lr).expand(w.shape) for w, lr in zip(weights, lrs)]
        gen = torch.Generator().manual_seed(2)
        weights = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
        states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
        for _ in range(4):
            o.update_multi_precision(list(range(len(weights))), weights,
                                     [torch.randn(s, generator=gen).to(dtype) for s in SHAPES], states)
        results.append(weights)
        if impl == "native":
            assert o.impl == "native" and len(fallbacks) == 4 * len(SHAPES)
    _assert_close(results[0], results[1], "weight")
