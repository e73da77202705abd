"""Kept scratch buffers (optzoo/optimizer/workspace.py) and the fast paths of Muon and SOAP that differ from their
readable ones: Muon's Newton-Schulz products and Nesterov direction written into kept buffers (out=), its AdamW
side one large tensor at a time with a kept denominator, SOAP's QR by geqrf + householder_product into the state.
All bit-identical (rtol = atol = 0) to the references."""

from __future__ import annotations

import pytest
import torch

from optzoo import optimizer as opt
from optzoo.optimizer import muon
from optzoo.optimizer.muon import NS_COEFFICIENTS, newton_schulz, newton_schulz_in_workspace
from optzoo.optimizer.workspace import Workspace, workspace_of

pytestmark = pytest.mark.usefixtures("one_thread")

#: wide, tall, square, a single row or column, odd sizes
NS_SHAPES = [(8, 24), (24, 8), (17, 17), (1, 13), (13, 1), (33, 70), (70, 33), (5, 5), (64, 16)]


def test_buffers_grow_and_are_reused():
    space = Workspace()
    a = space.buffer("x", (4, 6), torch.float32, "cpu")
    assert a.shape == (4, 6) and a.is_contiguous() and space.nbytes == 24 * 4
    b = space.buffer("x", (2, 3), torch.float32, "cpu")  # smaller: a view of the same memory
    assert b.data_ptr() == a.data_ptr() and space.nbytes == 24 * 4
    c = space.buffer("x", (5, 6), torch.float32, "cpu")  # larger: grown once
    assert c.shape == (5, 6) and space.nbytes == 30 * 4
    assert space.buffer("x", (3, 10), torch.float32, "cpu").data_ptr() == c.data_ptr()
    d = space.buffer("x", (5, 6), torch.bfloat16, "cpu")  # another dtype: another buffer
    assert d.dtype == torch.bfloat16 and d.data_ptr() != c.data_ptr() and space.nbytes == 30 * 4 + 30 * 2
    space.clear()
    assert space.nbytes == 0
    o = opt.create("muon")
    assert workspace_of(o) is workspace_of(o) and workspace_of(o) is not workspace_of(opt.create("muon"))


@pytest.mark.parametrize("steps", [0, 1, 5])
def test_newton_schulz_in_workspace_is_bit_identical(steps):
    gen = torch.Generator().manual_seed(steps)
    space = Workspace()
    for rep in range(2):  # shapes in turn through the same buffers, growing and shrinking
        for shape in NS_SHAPES:
            update = torch.randn(shape, generator=gen) * 10.0 ** int(torch.randint(-3, 3, (1,), generator=gen))
            expected = newton_schulz(update, NS_COEFFICIENTS, steps, 1e-7)
            got = newton_schulz_in_workspace(update, NS_COEFFICIENTS, steps, 1e-7, space)
            assert got.shape == expected.shape and got.stride() == expected.stride(), shape
            assert torch.equal(got, expected), (shape, rep, (got.float() - expected.float()).abs().max())
    assert newton_schulz_in_workspace(torch.zeros(3, 5), NS_COEFFICIENTS, 5, 1e-7, space).abs().sum() == 0


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_fast_path_equals_torch_muon_on_changing_shapes_and_dtypes(nesterov, monkeypatch):
    """The default (foreach) path against torch.optim.Muon for 60 steps, bit for bit: float32 and bfloat16
    weights (the bfloat16 ones take the allocating calls: torch scales a bfloat16 momentum in place when not
    Nesterov), matrices over and under the workspace threshold (lowered to 300 values) sharing its buffers, a
    parameter joining half-way."""
    monkeypatch.setattr(muon, "NS_IN_WORKSPACE", 300)
    gen = torch.Generator().manual_seed(7)
    specs = [((12, 30), torch.float32), ((30, 12), torch.float32), ((12, 30), torch.float32), ((9, 9), torch.bfloat16),
             ((40, 6), torch.float32)]
    weights = [torch.randn(s, generator=gen).to(dtype) for s, dtype in specs]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    refs = [torch.optim.Muon([p], lr=0.02, nesterov=nesterov) for p in params]
    o = opt.create("muon", lr=0.02, nesterov=nesterov, impl="foreach")
    states = [o.create_state(i, w) for i, w in enumerate(weights)]
    for step in range(60):
        live = range(len(specs)) if step >= 30 else range(len(specs) - 1)
        grads = [torch.randn(s, generator=gen).to(dtype) for s, dtype in specs]
        for i in live:
            params[i].grad = grads[i].clone()
            refs[i].step()
        o.update(list(live), [weights[i] for i in live], [grads[i] for i in live], [states[i] for i in live])
    for i, (w, p) in enumerate(zip(weights, params)):
        assert torch.equal(w, p.detach()), i
        assert torch.equal(states[i].momentum, refs[i].state[p]["momentum_buffer"]), i
    assert workspace_of(o).nbytes > 0


@pytest.mark.parametrize("size", [1, 2, 5, 33, 130])
def test_soap_qr_into_the_state_is_bit_identical_to_linalg_qr(size):
    """geqrf + householder_product into the transposed state equals linalg.qr's Q (the same LAPACK calls)."""
    gen = torch.Generator().manual_seed(size)
    for _ in range(3):
        columns = torch.randn(size, size, generator=gen) @ torch.randn(size, size, generator=gen)
        state = torch.full((size, size), float("nan"))
        torch.linalg.householder_product(*torch.geqrf(columns), out=state.t())
        assert torch.equal(state.t(), torch.linalg.qr(columns)[0])


def test_soap_fast_path_on_changing_shapes():
    """The foreach path (its QR into the state) against the readable one for 40 steps, bit for bit, with
    parameters of several shapes, one joining late, refreshes every 3 steps."""
    gen = torch.Generator().manual_seed(11)
    shapes = [(6, 20), (20, 6), (3, 4, 5), (30,), (1, 7), (25, 25)]
    paths = {impl: opt.create("soap", lr=0.01, precondition_frequency=3, impl=impl)
             for impl in ("reference", "foreach")}
    weights = {impl: [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
               for impl in paths}
    states = {impl: [o.create_state(i, w) for i, w in enumerate(weights[impl])] for impl, o in paths.items()}
    for step in range(40):
        live = list(range(len(shapes))) if step >= 20 else list(range(len(shapes) - 1))
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for impl, o in paths.items():
            o.update(live, [weights[impl][i] for i in live], [grads[i] for i in live],
                     [states[impl][i] for i in live])
    for i in range(len(shapes)):
        assert torch.equal(weights["reference"][i], weights["foreach"][i]), shapes[i]
        for a, b in zip(torch.utils._pytree.tree_leaves(states["reference"][i]),
                        torch.utils._pytree.tree_leaves(states["foreach"][i])):
            assert torch.equal(a, b), shapes[i]


def test_muon_adamw_side_one_tensor_at_a_time_equals_torch_adamw():
    """AdamW-side tensors of ADAMW_ONE_BY_ONE values or more take the per-tensor loop with a workspace denominator,
    the rest the foreach ops: both bit-identical to torch.optim.AdamW over 30 steps."""
    from optzoo.optimizer.muon import ADAMW_ONE_BY_ONE

    gen = torch.Generator().manual_seed(5)
    shapes = [(ADAMW_ONE_BY_ONE // 64, 64), (ADAMW_ONE_BY_ONE + 37,), (300, 7), (64,), (2 * ADAMW_ONE_BY_ONE // 8, 8)]
    weights = [torch.randn(s, generator=gen) for s in shapes]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    ref = torch.optim.AdamW(params, lr=0.01, weight_decay=0.05, betas=(0.8, 0.95))
    o = opt.create("muon", lr=0.01, wd=0.05, adamw_beta1=0.8, adamw_beta2=0.95, impl="foreach")
    for w in weights:
        w.use_muon = False
    states = [o.create_state(i, w) for i, w in enumerate(weights)]
    for _ in range(30):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        ref.step()
        o.update(list(range(len(shapes))), weights, grads, states)
    for w, p, s in zip(weights, params, states):
        assert torch.equal(w, p.detach()), w.shape
        assert torch.equal(s.exp_avg, ref.state[p]["exp_avg"]) and torch.equal(s.exp_avg_sq, ref.state[p]["exp_avg_sq"])
    assert workspace_of(o).nbytes == 4 * max(w.numel() for w in weights)
