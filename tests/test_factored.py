"""Adafactor and CAME against the packages they reproduce (torch.optim.Adafactor, came-pytorch).

Tolerances: both paths run the reference's tensor operations in its order (the fast one without copying the
gradient), so float32 weights and states are bit-identical (rtol = atol = 0) over 100+ steps on random shapes
(non-square, 1-D, 3-D, 1 x m). torch.optim.Adafactor is compared with its for-loop path; its foreach path differs
from that by float32 rounding (checked at rtol 1e-6, atol 1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_support import require_native
from reference_parity import FULL, assert_same, random_shapes, run_both

from optzoo import optimizer as opt

came_pytorch = pytest.importorskip("came_pytorch")

SEEDS = range(6) if FULL else range(2)
EXACT = (0.0, 0.0)
NATIVE = (2e-5, 2e-6)
IMPLS = ["reference", "foreach", "native"]
ADAFACTOR_CASES = [
    {},
    {"lr": 0.05, "weight_decay": 0.1},
    {"lr": 0.02, "beta2_decay": -0.5, "eps": (1e-20, 1e-2), "d": 1.5, "weight_decay": 0.01},
]
CAME_CASES = [
    {"lr": 2e-4},
    {"lr": 0.01, "weight_decay": 0.05},
    {"lr": 0.003, "betas": (0.8, 0.99, 0.999), "eps": (1e-20, 1e-10), "clip_threshold": 0.5},
]


def _tolerance(impl):
    if impl == "native":
        require_native()
        return NATIVE
    return EXACT


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(ADAFACTOR_CASES)))
@pytest.mark.parametrize("seed", SEEDS)
def test_adafactor_equals_torch_optim_adafactor(case, seed, impl):
    kwargs = ADAFACTOR_CASES[case]
    shapes = random_shapes(np.random.default_rng(seed)) + [()]
    ours, params, ref, updater = run_both(lambda ps: torch.optim.Adafactor(ps, **kwargs, foreach=False),
                                          "adafactor", kwargs, shapes, steps=120, seed=seed, impl=impl)
    rtol, atol = _tolerance(impl)
    for i, (w, p) in enumerate(zip(ours, params)):
        assert_same(w, p, rtol, atol, f"weight {i} {tuple(w.shape)}")
        theirs, mine = ref.state[p], updater.states[i]
        if p.dim() > 1:
            assert_same(mine.row_var, theirs["row_var"], rtol, atol, f"row_var {i}")
            assert_same(mine.col_var, theirs["col_var"], rtol, atol, f"col_var {i}")
        else:
            assert_same(mine.variance, theirs["variance"], rtol, atol, f"variance {i}")
        assert updater.optimizer._index_update_count[i] == int(theirs["step"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(CAME_CASES)))
@pytest.mark.parametrize("seed", SEEDS)
def test_came_equals_came_pytorch(case, seed, impl):
    kwargs = CAME_CASES[case]
    shapes = random_shapes(np.random.default_rng(100 + seed))
    ours, params, ref, updater = run_both(lambda ps: came_pytorch.CAME(ps, **kwargs), "came", kwargs, shapes,
                                          steps=120, seed=seed, impl=impl)
    rtol, atol = _tolerance(impl)
    for i, (w, p) in enumerate(zip(ours, params)):
        assert_same(w, p, rtol, atol, f"weight {i} {tuple(w.shape)}")
        theirs, mine = ref.state[p], updater.states[i]
        for field in mine._fields:
            assert_same(getattr(mine, field), theirs[field], rtol, atol, f"{field} {i}")


def test_mxnet_preprocessing_is_applied_before_the_rule():
    """rescale_grad and clip_gradient act on the gradient the reference would see."""
    for name, make in (("adafactor", lambda ps: torch.optim.Adafactor(ps, lr=0.05)),
                       ("came", lambda ps: came_pytorch.CAME(ps, lr=0.01))):
        gen = torch.Generator().manual_seed(3)
        w = torch.randn(6, 4, generator=gen)
        p = torch.nn.Parameter(w.clone())
        ref = make([p])
        o = opt.create(name, lr=0.05 if name == "adafactor" else 0.01, rescale_grad=0.5, clip_gradient=0.3,
                       impl="reference")
        state = o.create_state(0, w)
        for _ in range(20):
            g = torch.randn(6, 4, generator=gen)
            p.grad = (g * 0.5).clamp(-0.3, 0.3)
            ref.step()
            o.update([0], [w], [g], [state])
        assert torch.equal(w, p.detach()), name


@pytest.mark.parametrize("name", ["adafactor", "came"])
def test_factored_states_are_small_and_checked(name):
    o = opt.create(name)
    w = torch.zeros(5, 7)
    state = o.create_state(0, w)
    assert sorted({tuple(s.shape) for s in state if s.shape != w.shape}) in ([(1, 7), (5, 1)], [(5,), (7,)])
    wrong = o.create_state(0, torch.zeros(7, 5))
    with pytest.raises(ValueError, match="does not fit weight shape|as create_state makes it|expected .* for a weight"):
        o.update([0], [w], [torch.ones(5, 7)], [wrong])
    assert torch.equal(w, torch.zeros(5, 7))


def test_reference_names_map_and_conflicts_are_refused():
    a = opt.create("adafactor", lr=0.3, eps=(1e-20, 1e-2), d=2.0, weight_decay=0.1)
    assert (a.lr, a.epsilon1, a.epsilon2, a.clip_threshold, a.wd) == (0.3, 1e-20, 1e-2, 2.0, 0.1)
    c = opt.create("came", betas=(0.8, 0.9, 0.95), eps=(1e-20, 1e-10))
    assert (c.beta1, c.beta2, c.beta3, c.epsilon1, c.epsilon2) == (0.8, 0.9, 0.95, 1e-20, 1e-10)
    with pytest.raises(ValueError, match="beta1 or its reference name betas, not both"):
        opt.create("came", betas=(0.8, 0.9, 0.95), beta1=0.5)
    with pytest.raises(ValueError, match="eps must be a tuple of 2"):
        opt.create("adafactor", eps=(1e-3,))
    with pytest.raises(TypeError, match="eps must be a tuple of 2"):
        opt.create("adafactor", eps=1e-3)


def test_fast_path_follows_torchs_foreach_adafactor_to_float32_rounding():
    kwargs = {"lr": 0.05, "weight_decay": 0.1}
    shapes = random_shapes(np.random.default_rng(7))
    ours, params, _, _ = run_both(lambda ps: torch.optim.Adafactor(ps, **kwargs, foreach=True), "adafactor", kwargs,
                                  shapes, steps=100, impl="foreach")
    for i, (w, p) in enumerate(zip(ours, params)):
        assert_same(w, p, 1e-6, 1e-6, f"weight {i} {tuple(w.shape)}")



def _native_trajectory(name, dtype, shapes, impl, threads=2, steps=100):
    """``(weights, float32 weights, state leaves)`` after ``steps`` updates (float16/bfloat16: multi-precision,
    the float32 weights are the master copies)."""
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    low = dtype != torch.float32
    o = opt.create(name, impl=impl, multi_precision=low, wd=0.01, learning_rate=0.02 if name == "adafactor" else 3e-3,
                   clip_gradient=2.0)
    if impl == "native":
        def no_fallback(*args):
            raise AssertionError("the native kernel did not take the step")
        o._foreach_rule = no_fallback
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
            o.update_multi_precision(list(range(len(shapes))), weights, grads, states)
    finally:
        torch.set_num_threads(previous)
    masters = [s[0] for s in states] if low else weights
    leaves = [leaf for s in states for leaf in (s[1] if low else s) if leaf is not None]
    return weights, masters, leaves


# a large matrix (rows split into blocks), a conv weight (many 3x3 batches), a 1 x m row and small ones
NATIVE_SHAPES = [(200, 170), (64, 16, 3, 3), (1, 33_000), (33_001,), (7, 5), (3,), ()]


MULTI_PRECISION_CASES = [(name, dtype) for name in ("adafactor", "came")
                         for dtype in (torch.float32, torch.float16, torch.bfloat16)]
if not FULL:  # CI: float32 for both, one low-precision type each
    MULTI_PRECISION_CASES = [c for c in MULTI_PRECISION_CASES if c[1] == torch.float32] + [
        ("adafactor", torch.float16), ("came", torch.bfloat16)]


@pytest.mark.parametrize(("name", "dtype"), MULTI_PRECISION_CASES)
def test_native_kernel_follows_the_readable_path_multi_precision(name, dtype):
    """100 steps through the native kernel (no fallback allowed) against the readable rule, float32 and the
    float16/bfloat16 master-copy path: float32 weights and states at rtol 2e-5, atol 2e-6; the low-precision
    weights are exactly their master copies rounded."""
    require_native()
    fast_w, fast_m, fast_s = _native_trajectory(name, dtype, NATIVE_SHAPES, "native")
    _, ref_m, ref_s = _native_trajectory(name, dtype, NATIVE_SHAPES, "reference")
    assert len(fast_s) == len(ref_s)
    for a, b in zip(fast_m + fast_s, ref_m + ref_s):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
    for w, master in zip(fast_w, fast_m):
        assert torch.equal(w, master.to(dtype))


def test_native_kernel_does_not_depend_on_the_thread_count():
    require_native()
    for name in ("adafactor", "came"):
        one = _native_trajectory(name, torch.float32, NATIVE_SHAPES, "native", threads=1, steps=5)
        two = _native_trajectory(name, torch.float32, NATIVE_SHAPES, "native", threads=2, steps=5)
        for a, b in zip(one[1] + one[2], two[1] + two[2]):
            assert torch.equal(a, b), name
