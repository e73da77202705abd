"""Muon against torch.optim.Muon (2-D weights) + torch.optim.AdamW (the rest), and its parameter split.

Tolerances: the readable path runs torch's operations in torch's order (the Newton-Schulz iteration in bfloat16),
so float32 weights and states are bit-identical (rtol = atol = 0); the fast path stacks same-shape matrices into
one bmm chain, which rounds as the per-matrix addmm chain does on CPU; it is held to rtol 1e-6, atol 1e-7.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_support import require_native
from reference_parity import FULL, assert_same, random_shapes, run_both

import optzoo
from optzoo import optimizer as opt
from optzoo.optimizer.muon import MuonAdamWState, MuonState, label_params, newton_schulz, newton_schulz_batched

SEEDS = range(6) if FULL else range(2)


# one torch thread (conftest.py): small bfloat16 products, where a parallel region costs more than the work
pytestmark = pytest.mark.usefixtures("one_thread")
CASES = [
    {"lr": 0.02},
    {"lr": 0.01, "weight_decay": 0.05, "momentum": 0.9, "nesterov": False},
    {"lr": 0.02, "weight_decay": 0.0, "adjust_lr_fn": "match_rms_adamw", "ns_steps": 3, "eps": 1e-6},
]


def _reference(kwargs, adamw_kwargs=None):
    def make(params):
        matrices = [p for p in params if p.dim() == 2]
        others = [p for p in params if p.dim() != 2]
        muon = torch.optim.Muon(matrices, **kwargs)
        wd = kwargs.get("weight_decay", 0.1)
        adamw = torch.optim.AdamW(others, lr=kwargs["lr"], weight_decay=wd, **(adamw_kwargs or {}))

        class Both:
            def __init__(self):
                self.state = {}

            def step(self):
                muon.step()
                adamw.step()
                self.state = {**muon.state, **adamw.state}

        return Both()

    return make


@pytest.mark.parametrize("impl", ["reference", "foreach", "auto"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", SEEDS)
def test_muon_equals_torch_optim_muon_and_adamw(case, seed, impl):
    kwargs = CASES[case]
    rng = np.random.default_rng(200 + seed)
    shapes = random_shapes(rng)
    shapes += [shapes[0], shapes[0][::-1]]  # same-shape matrices batch together; the transpose goes the other way
    ours, params, ref, updater = run_both(_reference(kwargs), "muon", kwargs, shapes, steps=100, seed=seed,
                                          impl=impl)
    tol = (0.0, 0.0)
    for i, (w, p) in enumerate(zip(ours, params)):
        assert_same(w, p, *tol, f"weight {i} {tuple(w.shape)}")
        mine, theirs = updater.states[i], ref.state[p]
        if p.dim() == 2:
            assert isinstance(mine, MuonState)
            assert_same(mine.momentum, theirs["momentum_buffer"], *tol, f"momentum {i}")
        else:
            assert isinstance(mine, MuonAdamWState)
            assert_same(mine.exp_avg, theirs["exp_avg"], *tol, f"exp_avg {i}")
            assert_same(mine.exp_avg_sq, theirs["exp_avg_sq"], *tol, f"exp_avg_sq {i}")


def test_adamw_side_hyperparameters_follow_torch_adamw():
    kwargs = {"lr": 0.02, "weight_decay": 0.01}
    ours_kwargs = {**kwargs, "adamw_beta1": 0.8, "adamw_beta2": 0.95, "adamw_epsilon": 1e-10, "adamw_lr_ratio": 0.5}

    def make(params):
        class Both:
            def __init__(self):
                self.muon = torch.optim.Muon([params[0]], **kwargs)
                self.adamw = torch.optim.AdamW([params[1]], lr=0.01, betas=(0.8, 0.95), eps=1e-10,
                                               weight_decay=0.01)

            def step(self):
                self.muon.step()
                self.adamw.step()

        return Both()

    ours, params, _, _ = run_both(make, "muon", ours_kwargs, [(6, 9), (9,)], steps=60, impl="reference")
    for w, p in zip(ours, params):
        assert_same(w, p, 0.0, 0.0, "weight")


@pytest.mark.parametrize("nesterov", [True, False])
def test_native_passes_equal_torch_optim_muon_on_large_and_odd_matrices(nesterov):
    """impl="auto" runs the element-wise passes natively (muon_direction, muon_apply: rules_muon.cpp); on matrices
    over NS_IN_WORKSPACE (the workspace iteration), tall ones (a transposed result to add), odd sizes (vector
    tails) and a strided gradient (the torch operations' fallback) they equal torch.optim.Muon bit for bit."""
    require_native()
    shapes = [(300, 130), (130, 300), (181, 181), (33, 7), (7, 33), (1, 50), (50, 1), (200,)]
    kwargs = {"lr": 0.02, "nesterov": nesterov}
    ours, params, ref, updater = run_both(_reference(kwargs), "muon", kwargs, shapes, steps=12, impl="auto")
    assert updater.optimizer._native_passes() is not None
    for i, (w, p) in enumerate(zip(ours, params)):
        assert_same(w, p, 0.0, 0.0, f"weight {i} {tuple(w.shape)}")
        if p.dim() == 2:
            assert_same(updater.states[i].momentum, ref.state[p]["momentum_buffer"], 0.0, 0.0, f"momentum {i}")


def test_native_passes_under_multi_precision_and_strided_gradients():
    """bfloat16 weights with float32 master copies, and a transposed (non-contiguous) gradient, which the native
    pass declines (the torch operations take it): every weight and momentum as impl="foreach" has them."""
    require_native()
    gen = torch.Generator().manual_seed(3)
    shapes = [(300, 130), (130, 300), (33, 7), (20,)]
    runs = {}
    for impl in ("auto", "foreach"):
        g2 = torch.Generator().manual_seed(4)
        ws = [torch.randn(s, generator=gen.manual_seed(5)).bfloat16() for s in shapes]
        o = opt.create("muon", lr=0.02, impl=impl, multi_precision=True)
        states = [o.create_state_multi_precision(i, w) for i, w in enumerate(ws)]
        for _ in range(6):
            grads = [torch.randn(s, generator=g2).bfloat16() for s in shapes]
            grads[2] = torch.randn(shapes[2][::-1], generator=g2).bfloat16().t()
            o.update_multi_precision(list(range(len(ws))), ws, grads, states)
        runs[impl] = ws, states
    for i in range(len(shapes)):
        assert torch.equal(runs["auto"][0][i], runs["foreach"][0][i]), f"weight {i}"
        assert torch.equal(runs["auto"][1][i][0], runs["foreach"][1][i][0]), f"master copy {i}"
        for a, b in zip(runs["auto"][1][i][1], runs["foreach"][1][i][1]):
            assert torch.equal(a, b), f"state {i}"


def test_batched_newton_schulz_equals_one_matrix_at_a_time_to_bfloat16_rounding():
    gen = torch.Generator().manual_seed(0)
    for shape in [(3, 16, 8), (4, 8, 16), (2, 33, 33), (1, 4, 13)]:
        stack = torch.randn(shape, generator=gen)
        one_by_one = torch.stack([newton_schulz(m, (3.4445, -4.775, 2.0315), 5, 1e-7) for m in stack]).float()
        batched = newton_schulz_batched(stack, (3.4445, -4.775, 2.0315), 5, 1e-7).float()
        # entries are O(1): one bfloat16 ulp there is 2^-7; a flipped rounding may grow to a few ulps in 5 steps
        torch.testing.assert_close(batched, one_by_one, rtol=0, atol=4 * 2**-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_batched_fast_path_follows_torch_optim_muon(seed):
    """batch_newton_schulz=True: same-shape matrices in one bmm chain; agrees to bfloat16 rounding of the update
    (times lr 0.02: 1e-4 per step at most, measured ~1e-5 after 100 steps)."""
    shapes = [(8, 24)] * 4 + [(24, 8)] * 3 + [(16,)]
    kwargs = {"lr": 0.02}
    ours, params, _, _ = run_both(_reference(kwargs), "muon", {**kwargs, "batch_newton_schulz": True}, shapes,
                                  steps=100, seed=seed, impl="foreach")
    for i, (w, p) in enumerate(zip(ours, params)):
        assert_same(w, p, 0.0, 5e-4, f"weight {i} {tuple(w.shape)}")


def test_split_rules_and_overrides():
    o = opt.create("muon", param_idx2name={0: "encoder.embed.weight", 1: "lm_head.weight", 2: "layer0.attn.weight",
                                           3: "layer0.norm.weight", 4: "blocks.1.mlp.weight", 5: "conv.weight"},
                   adamw_params=["blocks.1.mlp.weight"])
    sides = {i: o.uses_muon(i, w) for i, w in enumerate([torch.zeros(50, 8), torch.zeros(50, 8), torch.zeros(8, 8),
                                                         torch.zeros(8), torch.zeros(8, 8), torch.zeros(4, 3, 3, 3)])}
    assert sides == {0: False, 1: False, 2: True, 3: False, 4: False, 5: False}
    assert not opt.create("muon", adamw_params=[7]).uses_muon(7, torch.zeros(4, 4))
    forced = torch.zeros(50, 8)
    forced.use_muon = True  # an attribute beats the name rule
    assert o.uses_muon(0, forced)
    kept = torch.zeros(8, 8)
    kept.use_muon = False
    assert not o.uses_muon(2, kept)


def test_unsupported_parameters_are_refused_not_skipped():
    o = opt.create("muon")
    vector = torch.zeros(8)
    vector.use_muon = True
    with pytest.raises(ValueError, match="use_muon=True.*orthogonalises matrices"):
        o.create_state(0, vector)
    bad = torch.zeros(4, 4)
    bad.use_muon = "yes"
    with pytest.raises(TypeError, match="use_muon"):
        o.create_state(0, bad)
    with pytest.raises(ValueError, match="cannot take a sparse gradient"):
        w = torch.zeros(4, 4)
        o.update([0], [w], [torch.eye(4).to_sparse()], [o.create_state(0, w)])


@pytest.mark.parametrize("impl", ["reference", "foreach", "auto"])
def test_forced_convolution_kernel_is_orthogonalised_flattened(impl):
    """A 4-D weight with use_muon=True steps as torch.optim.Muon steps its (out, in*kh*kw) view."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 3, 3, 3, generator=gen)
    w.use_muon = True
    flat = torch.nn.Parameter(w.detach().reshape(6, -1).clone())
    ref = torch.optim.Muon([flat], lr=0.02)
    o = opt.create("muon", lr=0.02, impl=impl)
    state = o.create_state(0, w)
    for _ in range(30):
        g = torch.randn(6, 3, 3, 3, generator=gen)
        flat.grad = g.reshape(6, -1).clone()
        ref.step()
        o.update([0], [w], [g], [state])
    torch.testing.assert_close(w.reshape(6, -1), flat.detach(), rtol=1e-6, atol=1e-7)


def test_label_params_and_the_torch_and_gluon_faces():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 16), torch.nn.Linear(16, 5))
    labels = label_params(model)
    assert labels == {"0.weight": False, "1.weight": True, "1.bias": False, "3.weight": True, "3.bias": False,
                      "4.weight": False, "4.bias": False}
    torch_opt = optzoo.TorchOptimizer(model.parameters(), "muon", lr=0.02)
    trainer_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 5))
    label_params(trainer_model)
    trainer = optzoo.Trainer(trainer_model, "muon", {"learning_rate": 0.02})
    x = torch.randint(0, 20, (32,))
    for _ in range(3):
        torch_opt.zero_grad()
        model(x).square().mean().backward()
        torch_opt.step()
        trainer_model(torch.randn(4, 8)).square().sum().backward()
        trainer.step(4)
    kinds = {name: type(torch_opt.state[p]["state"]).__name__ for name, p in model.named_parameters()}
    assert kinds["1.weight"] == "MuonState" and kinds["0.weight"] == kinds["4.weight"] == "MuonAdamWState"
    by_name = {name: type(trainer._updater.states[i]).__name__ for i, name in enumerate(trainer._names)}
    assert sorted(by_name.items()) == [("0.bias", "MuonAdamWState"), ("0.weight", "MuonState"),
                                       ("1.bias", "MuonAdamWState"), ("1.weight", "MuonAdamWState")]


def test_the_split_is_decided_on_the_callers_tensor_under_multi_precision():
    o = opt.create("muon", multi_precision=True)
    head = torch.zeros(6, 4, dtype=torch.bfloat16)
    head.use_muon = False  # the float32 master copy made for it has no such attribute
    master, state = o.create_state_multi_precision(0, head)
    assert master.dtype == torch.float32 and isinstance(state, MuonAdamWState)
    assert isinstance(o.create_state_multi_precision(1, torch.zeros(6, 4, dtype=torch.bfloat16))[1], MuonState)
