"""The matrix-product workspaces of Muon and SOAP (optzoo/optimizer/workspace.py): products written with ``out=``
into buffers kept across steps are bit-identical (rtol = atol = 0) to the allocating calls the references make,
whatever the order of shapes, and the buffers are reused, not re-made."""

from __future__ import annotations

import pytest
import torch

from optzoo import optimizer as opt
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
def test_muon_workspace_path_equals_torch_muon_on_changing_shapes_and_dtypes(nesterov):
    """The default (foreach) path against torch.optim.Muon for 60 steps, bit for bit: float32 and bfloat16
    weights (the bfloat16 ones take the allocating path: torch scales a bfloat16 momentum in place when not
    Nesterov), parameters of several shapes sharing buffers, a parameter joining half-way."""
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
    assert 0 < workspace_of(o).nbytes < 4 * sum(w.numel() * 4 for w in weights)
