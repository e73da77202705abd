"""The traced (compiled) foreach step: agrees with the eager step over many steps, compiles once while the learning
rate and the update counts change, and refuses what it cannot take."""

import os

import pytest
import torch
from torch._dynamo.utils import counters

import optzoo.optimizer as oo
from optzoo import lr_scheduler
from optzoo.optimizer.traced import TracedStep, supports_tracing

FULL = os.environ.get("OPTZOO_FULL") == "1"
#: every rule TracedStep takes, as (name, extra arguments); CI samples SGD and Nadam (per-tensor scalar vectors)
TRACED = {"sgd": {"momentum": 0.9}, "nag": {"momentum": 0.9}, "adam": {}, "adamw": {}, "adabelief": {},
          "adamax": {}, "nadam": {}, "nadam-parameter": {"schedule_scope": "parameter"}, "rmsprop": {},
          "rmsprop-centered": {"centered": True, "clip_weights": 0.5}, "lion": {"decoupled_weight_decay": True}}
SHAPES = [(5, 3), (7,), (4, 2, 3), (1,)]
STEPS = 20


def _setup(name, seed=0):
    kwargs = {"wd": 1e-3, "lr_scheduler": lr_scheduler.FactorScheduler(step=2, factor=0.7, base_lr=0.01),
              **TRACED.get(name, {})}
    opt = oo.create(name.split("-")[0], impl="foreach", **kwargs)
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=g) for s in SHAPES]
    states = [opt.create_state(i, w) for i, w in enumerate(weights)]
    return opt, weights, states


@pytest.mark.parametrize("name", list(TRACED) if FULL else ["sgd", "nadam"])
def test_traced_step_follows_the_eager_step_and_compiles_once(name):
    eager, w_eager, s_eager = _setup(name)
    traced_opt, w_traced, s_traced = _setup(name)
    step = TracedStep(traced_opt)
    torch._dynamo.reset()
    counters.clear()
    inductor = torch._inductor.config
    global_settings = (inductor.cpp.min_chunk_size, inductor.size_asserts)
    g = torch.Generator().manual_seed(1)
    indices = list(range(len(SHAPES)))
    for _ in range(STEPS):  # the scheduler changes the rate every 2 updates; t advances every step
        grads = [torch.randn(s, generator=g) for s in SHAPES]
        eager.update(indices, w_eager, grads, s_eager)
        step.update(indices, w_traced, grads, s_traced)
    assert counters["stats"]["unique_graphs"] == 1, "a new rate or update count compiled a new graph"
    assert (inductor.cpp.min_chunk_size, inductor.size_asserts) == global_settings  # set for its graph only
    assert traced_opt.num_update == eager.num_update == STEPS
    for a, b in zip(w_traced + [x for s in s_traced for x in ([s] if torch.is_tensor(s) else s)],
                    w_eager + [x for s in s_eager for x in ([s] if torch.is_tensor(s) else s)]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # Inductor's fusion rounds its own way


def test_traced_step_takes_per_parameter_scalars():
    """Parameters at different update counts get their own bias-corrected rates (a vector of scalars)."""
    eager, w_eager, s_eager = _setup("adam")
    traced_opt, w_traced, s_traced = _setup("adam")
    traced_opt.set_lr_mult({1: 0.5})
    eager.set_lr_mult({1: 0.5})
    step = TracedStep(traced_opt)
    g = torch.Generator().manual_seed(2)
    for k in range(4):
        indices = [0, 1, 2, 3] if k != 1 else [1, 2, 3]
        grads = [torch.randn(SHAPES[i], generator=g) for i in indices]
        eager.update(indices, [w_eager[i] for i in indices], grads, [s_eager[i] for i in indices])
        step.update(indices, [w_traced[i] for i in indices], grads, [s_traced[i] for i in indices])
    for a, b in zip(w_traced, w_eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_traced_step_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match="no traceable foreach arithmetic"):
        TracedStep(oo.create("lamb"))
    with pytest.raises(TypeError, match="optzoo optimizer"):
        TracedStep(torch.optim.SGD([torch.zeros(1, requires_grad=True)]))
    assert supports_tracing(oo.create("adam")) and not supports_tracing(oo.create("ftml"))
    opt, weights, states = _setup("sgd")
    step = TracedStep(opt)
    sparse = torch.zeros(SHAPES[1]).to_sparse()
    with pytest.raises(ValueError, match="dense gradients only"):
        step.update([1], [weights[1]], [sparse], [states[1]])
    with pytest.raises(ValueError, match="listed twice"):
        step.update([1, 1], [weights[1]] * 2, [torch.ones(SHAPES[1])] * 2, [states[1]] * 2)


def test_traced_step_sets_its_inductor_options_for_its_graph_only():
    """The barrier-saving Inductor settings go to this graph's torch.compile; a user's options and mode win."""
    from optzoo.optimizer.traced import INDUCTOR_OPTIONS

    opt = oo.create("sgd", impl="foreach")
    assert TracedStep(opt)._compile_options == {"options": INDUCTOR_OPTIONS}
    mine = TracedStep(opt, options={"cpp.min_chunk_size": 64}, fullgraph=True)._compile_options
    assert mine == {"options": {**INDUCTOR_OPTIONS, "cpp.min_chunk_size": 64}, "fullgraph": True}
    assert TracedStep(opt, mode="max-autotune-no-cudagraphs")._compile_options == {"mode": "max-autotune-no-cudagraphs"}


def test_a_kept_size_order_stays_right_when_a_weight_changes_size(monkeypatch):
    """TracedStep keeps the smallest-first order while the same weight objects come; a weight given new data of
    another size (same object) leaves that order stale, which must cost nothing but speed: the step still equals
    the eager one, bit for bit with the arithmetic run eagerly (torch.compile stood in by the function itself)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    eager, w_eager, s_eager = _setup("lion")
    traced_opt, w_traced, s_traced = _setup("lion")
    for opt in (eager, traced_opt):  # per-tensor rates: the scalars go over as a vector, reordered with the tensors
        opt.set_lr_mult({3: 0.5, 1: 2.0})
    step = TracedStep(traced_opt)
    g = torch.Generator().manual_seed(1)
    for k in range(4):
        if k == 2:  # the smallest weight becomes the largest: the kept order no longer sorts by size
            for ws, ss, opt in ((w_eager, s_eager, eager), (w_traced, s_traced, traced_opt)):
                ws[3].data = torch.linspace(-1, 1, 40)
                ss[3] = opt.create_state(3, ws[3])
        grads = [torch.randn(w.shape, generator=g) for w in w_eager]
        eager.update(list(range(4)), w_eager, grads, s_eager)
        step.update(list(range(4)), w_traced, grads, s_traced)
        for a, b in zip(w_eager + [s.exp_avg for s in s_eager], w_traced + [s.exp_avg for s in s_traced]):
            assert torch.equal(a, b)
    assert step._order[0] == [3, 1, 0, 2]  # the order of the first steps (weight 3 had one value), kept
