"""MARS's and Prodigy's native steps (rules_mars.cpp, rules_prodigy.cpp): one native call per step, no temporary
tensors, and the same trajectories as the readable path on tensors past the kernels' thresholds: MARS's fused
(at most 65,536 elements) and staged matrices, 1-D tensors, the parallel threshold (32K), float16 master copies;
Prodigy's inactive tensors (lr_mult 0), beta1 = 0, the L2 term, clipping. Tolerance: the table's float32 impl
tolerance (rtol 1e-5, atol 1e-6) after 12 steps; Prodigy's d estimate sums in another order (rtol 1e-4)."""

from __future__ import annotations

import pytest
import torch
from native_support import require_native

from optzoo import native
from optzoo import optimizer as opt
from optzoo.bench.torch_runner import peak_extra_bytes

# 256 x 256 is fused (8 units of 8,192), 256 x 257 is not; 40,000 is past the parallel threshold
MARS_SHAPES = [(256, 256), (256, 257), (9, 7), (40_000,), (3,), (2, 3, 5), (0, 4)]
STEPS = 12


def _grads(shapes, steps, seed, scale=1.0):
    """A persistent mean plus noise (Lion's sign never sits on zero); the small matrix's corrected gradient has a
    norm below 1, the large ones far above (so both sides of the clip to norm 1 run)."""
    gen = torch.Generator().manual_seed(seed)
    means = [torch.randn(s, generator=gen) * (0.01 if s == (9, 7) else scale) for s in shapes]
    return [[m + 0.3 * m.abs() * torch.randn(s, generator=gen) for m, s in zip(means, shapes)] for _ in range(steps)]


def _run(name, impl, shapes, kwargs, dtype=torch.float32, steps=STEPS, lr_mult=None):
    o = opt.create(name, impl=impl, **kwargs)
    if lr_mult:
        o.set_lr_mult(lr_mult)
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    for grads in _grads(shapes, steps, seed=6):
        o.update_multi_precision(list(range(len(weights))), weights, [g.to(dtype) for g in grads], states)
    return o, weights, states


def _leaves(state):
    if isinstance(state, torch.Tensor):
        return [state]
    return [x for s in state for x in _leaves(s)] if isinstance(state, tuple) else []


def _assert_same_run(a, b, rtol, atol):
    (_, wa, sa), (_, wb, sb) = a, b
    for x, y in zip(wa + [t for s in sa for t in _leaves(s)], wb + [t for s in sb for t in _leaves(s)]):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kwargs", [{}, {"mars_type": "lion", "learning_rate": 1e-3, "wd": 0.1},
                                    {"optimize_1d": True, "clip_gradient": 0.4, "rescale_grad": 0.5, "wd": 0.01}],
                         ids=["adamw", "lion", "optimize_1d"])
def test_mars_native_matches_the_readable_path(kwargs):
    require_native()
    _assert_same_run(_run("mars", "native", MARS_SHAPES, kwargs), _run("mars", "reference", MARS_SHAPES, kwargs),
                     1e-5, 1e-6)


def test_mars_native_float16_master_copies():
    require_native()
    shapes = [(256, 257), (40, 30), (700,)]
    kwargs = {"multi_precision": True}
    _assert_same_run(_run("mars", "native", shapes, kwargs, torch.float16),
                     _run("mars", "reference", shapes, kwargs, torch.float16), 1e-3, 1e-3)


@pytest.mark.parametrize("name", ["mars", "prodigy"])
def test_results_do_not_depend_on_the_thread_count(name):
    require_native()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(name, "native", MARS_SHAPES, {})
        torch.set_num_threads(2)
        two = _run(name, "native", MARS_SHAPES, {})
    finally:
        torch.set_num_threads(threads)
    _assert_same_run(one, two, 0, 0)
    if name == "prodigy":
        assert one[0].d == two[0].d and one[0].d_numerator == two[0].d_numerator


@pytest.mark.parametrize("kwargs", [{"wd": 0.01}, {"beta1": 0.0, "clip_gradient": 0.3, "d0": 1e-3},
                                    {"decouple": False, "wd": 0.05, "use_bias_correction": True,
                                     "safeguard_warmup": True, "rescale_grad": 0.5, "growth_rate": 1.05,
                                     "d_coef": 100.0}],
                         ids=["decoupled", "beta1_0", "l2"])
def test_prodigy_native_matches_the_readable_path(kwargs):
    """Past the parallel threshold, with a tensor whose lr_mult is 0 (no moments, no move, no share in d)."""
    require_native()
    shapes = [(300, 200), (40_000,), (17,), (5, 3)]
    native_run = _run("prodigy", "native", shapes, kwargs, lr_mult={2: 0.0})
    reference_run = _run("prodigy", "reference", shapes, kwargs, lr_mult={2: 0.0})
    _assert_same_run(native_run, reference_run, 1e-4, 1e-5)
    ours, theirs = native_run[0], reference_run[0]
    assert ours.d == pytest.approx(theirs.d, rel=1e-5) and ours.d > 10 * ours.d0  # the estimate moved
    assert ours.d_max == pytest.approx(theirs.d_max, rel=1e-5) and ours.k == theirs.k == STEPS
    assert ours.d_numerator == pytest.approx(theirs.d_numerator, rel=1e-4)
    assert torch.equal(native_run[2][2].exp_avg, torch.zeros(17))  # the inactive tensor's moments never moved


@pytest.mark.parametrize("name,entry", [("mars", "step"), ("prodigy", "step_into")])
def test_one_native_call_per_step_and_no_temporaries(name, entry, monkeypatch):
    """Hundreds of odd-sized tensors: the step is one call of the kernel's entry (no norm_sums, no per-tensor
    calls) and allocates nothing (torch's allocator, as the benchmark's peak-memory column measures it)."""
    require_native()
    gen = torch.Generator().manual_seed(0)
    shapes = [(int(n),) if i % 3 else (int(n) // 7 + 1, 7) for i, n in enumerate(torch.randint(3, 999, (300,),
                                                                                                  generator=gen))]
    o = opt.create(name)
    weights = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    states = [o.create_state(i, w) for i, w in enumerate(weights)]
    indices = list(range(len(weights)))
    o.update(indices, weights, grads, states)
    module = native.load()
    calls = []
    for fn in ("step", "step_into", "norm_sums"):
        original = getattr(module, fn)
        monkeypatch.setattr(module, fn, lambda *args, fn=fn, original=original: calls.append(fn) or original(*args))
    o.update(indices, weights, grads, states)
    assert calls == [entry]
    monkeypatch.undo()
    assert peak_extra_bytes(lambda: o.update(indices, weights, grads, states)) == 0
