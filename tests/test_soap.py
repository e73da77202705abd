"""SOAP against pytorch-optimizer 4.1's SOAP (the authors' algorithm; docs/deviations.md lists the differences).

Tolerances: both paths run the package's tensor operations in its order, with the eigenbases in the memory layout
torch.linalg.eigh/qr return (so the matrix products round alike): float32 weights and every state (moments,
statistics, eigenbases) are bit-identical (rtol = atol = 0) over 100+ steps on random shapes (non-square, 1-D, 3-D,
1 x m), through several eigenbasis refreshes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_support import require_native
from reference_parity import FULL, assert_same, random_shapes, run_both

from optzoo import optimizer as opt
from optzoo.optimizer.soap import merged_shape

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

SEEDS = range(5) if FULL else range(2)
CASES = [
    {"lr": 3e-3},
    {"lr": 0.01, "betas": (0.9, 0.99), "shampoo_beta": 0.9, "weight_decay": 0.0, "precondition_frequency": 3},
    {"lr": 0.01, "precondition_1d": True, "max_precondition_dim": 12, "correct_bias": False, "eps": 1e-6},
    {"lr": 0.005, "normalize_gradient": True, "weight_decay": 0.1, "precondition_frequency": 7},
]


# one torch thread (conftest.py): small eigh/QR/matrix products (same kernels on both sides)
pytestmark = pytest.mark.usefixtures("one_thread")


def _compare(ours, params, ref, updater, tol=(0.0, 0.0)):
    for i, (w, p) in enumerate(zip(ours, params)):
        assert_same(w, p, *tol, f"weight {i} {tuple(w.shape)}")
        mine, theirs = updater.states[i], ref.state[p]
        assert_same(mine.exp_avg, theirs["exp_avg"], *tol, f"exp_avg {i}")
        assert_same(mine.exp_avg_sq, theirs["exp_avg_sq"], *tol, f"exp_avg_sq {i}")
        assert len(mine.gg) == len(theirs["GG"])
        for k, (gg, q, their_gg, their_q) in enumerate(zip(mine.gg, mine.q, theirs["GG"], theirs["Q"])):
            if len(their_gg) == 0:
                assert gg.numel() == 0 and q.numel() == 0
                continue
            assert_same(gg, their_gg, *tol, f"GG[{k}] {i}")
            assert_same(q.t(), their_q, *tol, f"Q[{k}] {i}")


@pytest.mark.parametrize("impl", ["reference", "foreach", "auto"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", SEEDS)
def test_soap_equals_pytorch_optimizer(case, seed, impl):
    kwargs = CASES[case]
    shapes = random_shapes(np.random.default_rng(300 + seed), max_dim=20)
    result = run_both(lambda ps: pytorch_optimizer.SOAP(ps, **kwargs), "soap", kwargs, shapes, steps=110, seed=seed,
                      impl=impl)
    _compare(*result)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_unrotated_tensors_natively_equal_pytorch_optimizer(case):
    """impl="auto" steps the tensors SOAP does not rotate (1-D, dimensions over max_precondition_dim) with the native
    rules soap_moments and soap_apply (rules_soap.cpp) around torch's square roots; on long vectors (thousands of
    values: the lerps' and the scaled add's vector loops and tails) and a matrix over max_precondition_dim they equal
    pytorch-optimizer bit for bit, next to rotated tensors and a strided gradient (the torch operations take it)."""
    require_native()
    kwargs = {**CASES[case], "max_precondition_dim": 40}
    if case == 2:
        kwargs["max_precondition_dim"] = 12  # precondition_1d: the 1-D tensors under 12 values are rotated
    shapes = [(5003,), (64, 130), (3, 7), (300,), (9,)]
    result = run_both(lambda ps: pytorch_optimizer.SOAP(ps, **kwargs), "soap", kwargs, shapes, steps=25, impl="auto")
    assert result[3].optimizer._native_adam() is not None
    _compare(*result)


def test_native_unrotated_step_declines_strided_gradients():
    """A strided gradient of an unrotated tensor: the native call takes nothing, the torch operations step it."""
    require_native()
    runs = {}
    for impl in ("auto", "foreach"):
        gen = torch.Generator().manual_seed(7)
        w = torch.randn(300, generator=gen)
        o = opt.create("soap", learning_rate=3e-3, impl=impl)
        state = o.create_state(0, w)
        for _ in range(5):
            o.update([0], [w], [torch.randn(600, generator=gen)[::2]], [state])
        runs[impl] = w, state
    assert torch.equal(runs["auto"][0], runs["foreach"][0])
    assert torch.equal(runs["auto"][1].exp_avg_sq, runs["foreach"][1].exp_avg_sq)


def test_merge_dims_where_the_package_and_the_authors_agree():
    """(3, 4, 5) with max_precondition_dim 12 merges to (12, 5) under both rules."""
    kwargs = {"lr": 0.01, "merge_dims": True, "max_precondition_dim": 12}
    assert merged_shape((3, 4, 5), 12) == [12, 5]
    _compare(*run_both(lambda ps: pytorch_optimizer.SOAP(ps, **kwargs), "soap", kwargs, [(3, 4, 5), (2, 6, 5)],
                       steps=40, impl="reference"))


def test_merged_shape_follows_the_authors():
    assert merged_shape((10, 4), 10000) == [40]  # pytorch-optimizer: [1] (its reshape then fails)
    assert merged_shape((20000, 5), 10000) == [20000, 5]  # pytorch-optimizer: [1, 20000, 5]
    assert merged_shape((1, 2, 768, 1, 2048), 1024) == [2, 768, 2048]


def test_first_step_only_collects_statistics():
    o = opt.create("soap", lr=0.1, wd=0.5)
    w = torch.randn(5, 3)
    state = o.create_state(0, w)
    before = w.clone()
    o.update([0], [w], [torch.randn(5, 3)], [state])
    assert torch.equal(w, before) and bool(state.started)
    assert state.gg[0].abs().sum() > 0 and torch.allclose(state.q[0] @ state.q[0].t(), torch.eye(5), atol=1e-5)
    o.update([0], [w], [torch.randn(5, 3)], [state])
    assert not torch.equal(w, before)


def test_unsupported_inputs_are_refused():
    o = opt.create("soap")
    w = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="cannot take a sparse gradient"):
        o.update([0], [w], [torch.eye(4).to_sparse()], [o.create_state(0, w)])
    with pytest.raises(ValueError, match="does not fit weight shape|as create_state makes it"):
        o.update([0], [w], [torch.ones(4, 4)], [o.create_state(0, torch.zeros(5, 4))])


@pytest.mark.parametrize("name", ["soap", "adafactor", "came"])
def test_states_as_made_take_the_list_level_check_and_others_the_entry_by_entry_one(name):
    """Their ``_state_shape_fits`` only accepts what ``create_state`` makes, so a state that matches its template
    exactly needs no more (``template_fixes_state_shapes``): the usual step skips the entry-by-entry check (0.68 of
    SOAP's 6 ms on the small transformer); a state made for another shape does not, and is named (above)."""
    o = opt.create(name, impl="foreach")
    ws = [torch.zeros(5, 7), torch.zeros(3), torch.zeros(4, 2, 3)]
    states = [o.create_state(i, w) for i, w in enumerate(ws)]
    grads = [torch.ones_like(w) for w in ws]
    assert o._inputs_usual([0, 1, 2], ws, grads, states)
    wrong = [states[0], o.create_state(1, torch.zeros(4)), states[2]]
    assert not o._inputs_usual([0, 1, 2], ws, grads, wrong)
    o.norm_sum_reducer = object()  # a sharded step: the template is the whole tensor's, checked entry by entry
    assert not o._inputs_usual([0, 1, 2], ws, grads, states)
