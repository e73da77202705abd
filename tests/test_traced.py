"""The traced (compiled) foreach step: agrees with the eager step over many steps, compiles once while the learning
rate and the update counts change, and refuses what it cannot take."""

import itertools
import os

import pytest
import torch
from torch._dynamo.utils import counters

import optzoo.optimizer as oo
from optzoo import lr_scheduler
from optzoo.optimizer.traced import CHUNK_ABOVE, CHUNK_SIZE, TracedStep, supports_tracing

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


# ------------------------------------------------------------------------------------------ chunked steps
#: a chunked set: 1-element tensors (eager arithmetic), 1-D and 2-D ones, a channels-last 4-D one (flattened in
#: its memory order) and a transposed one (not flattenable in place: eager), in no order of size
CHUNKED_SHAPES = [(3, 5), (1,), (9,), (2, 2), (17,), (1, 1), (4, 3), (6,), (2, 3, 2, 2), (11,), (5, 2), (7, 3), (2,)]
CHUNK = 4  # tensors per chunk: the 10 flattenable tensors make 3 chunks, the last one padded


def _chunked_setup(name, seed=0):
    opt, _, _ = _setup(name, seed)
    # per-tensor rates and decays: the scalars handed over as vectors, chunked with their tensors
    opt.set_lr_mult({0: 0.5, 4: 2.0, 9: 0.25})
    opt.set_wd_mult({2: 0.0, 6: 3.0})
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=g) for s in CHUNKED_SHAPES]
    weights[8] = weights[8].to(memory_format=torch.channels_last)
    weights[11] = torch.randn(3, 7, generator=g).t()
    states = [opt.create_state(i, w) for i, w in enumerate(weights)]
    return opt, weights, states


def _leaves(states):
    return [x for s in states for x in ([s] if torch.is_tensor(s) else s or [])]


@pytest.mark.parametrize("name", list(TRACED) if FULL else ["sgd", "nadam", "lion"])
def test_chunked_traced_step_follows_the_eager_step(name):
    """Chunks of CHUNK tensors, each step's per-tensor scalars (rates, Nadam's schedule, Lion's decay factors,
    decays) taken with their tensors; the states too."""
    eager, w_eager, s_eager = _chunked_setup(name)
    traced_opt, w_traced, s_traced = _chunked_setup(name)
    step = TracedStep(traced_opt, chunk_size=CHUNK, chunk_above=0)
    torch._dynamo.reset()
    counters.clear()
    g = torch.Generator().manual_seed(1)
    indices = list(range(len(CHUNKED_SHAPES)))
    for k in range(6):
        update = indices if k != 2 else indices[3:]  # a step without some tensors: their counts fall behind
        grads = [torch.randn(w_eager[i].shape, generator=g) for i in update]
        if k % 2:  # views into one buffer (as DDP's buckets hand them over)
            flat = torch.cat([x.reshape(-1) for x in grads])
            grads = list(map(torch.Tensor.view_as, flat.split([x.numel() for x in grads]), grads))
        eager.update(update, [w_eager[i] for i in update], grads, [s_eager[i] for i in update])
        step.update(update, [w_traced[i] for i in update], grads, [s_traced[i] for i in update])
    assert w_traced[8].is_contiguous(memory_format=torch.channels_last) and not w_traced[11].is_contiguous()
    for a, b in zip(w_traced + _leaves(s_traced), w_eager + _leaves(s_eager), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert counters["stats"]["unique_graphs"] <= 2  # the 10-tensor and the 7-tensor steps' chunks
    # written through 1-D aliases, yet modified in place for autograd: every weight's and state's version moved
    versions = [t._version for t in w_traced + _leaves(s_traced)]
    step.update(indices, w_traced, [torch.zeros_like(w) for w in w_traced], s_traced)
    assert all(t._version > v for t, v in zip(w_traced + _leaves(s_traced), versions))


def test_chunked_traced_step_compiles_once_for_a_thousand_tensors():
    """1,200 tensors of many sizes (1-D and 2-D, some without decay) and three large enough for Inductor to split
    their loops among threads: one graph serves every chunk of the small ones, one the large ones; a changing
    learning rate, update count and per-tensor counts do not compile again."""
    g = torch.Generator().manual_seed(3)
    sizes = torch.randint(2, 300, (1200,), generator=g).tolist()
    shapes = [(s,) if k % 3 else (s, 1 + k % 4) for k, s in enumerate(sizes)]
    opt = oo.create("adam", impl="foreach", wd=1e-3,
                    lr_scheduler=lr_scheduler.FactorScheduler(step=1, factor=0.9, base_lr=0.01))
    opt.set_wd_mult(dict.fromkeys(range(0, 1200, 7), 0.0))
    step = TracedStep(opt, chunk_size=32)
    split_from = step._split_from(torch.device("cpu"))
    shapes[5:8] = [(split_from + k,) for k in range(3)]
    weights = [torch.randn(s, generator=g) for s in shapes]
    states = [opt.create_state(i, w) for i, w in enumerate(weights)]
    torch._dynamo.reset()
    counters.clear()
    indices = list(range(len(shapes)))
    for k in range(4):
        update = indices if k != 1 else indices[::2]  # every other tensor: two update counts from then on
        step.update(update, [weights[i] for i in update], [torch.ones_like(weights[i]) for i in update],
                    [states[i] for i in update])
    assert counters["stats"]["unique_graphs"] == 2, "a chunk, a rate or an update count compiled a new graph"
    assert all(torch.isfinite(w).all() for w in weights)


def test_chunked_traced_step_settings():
    """The threshold: at most chunk_above tensors take the one-graph step; bad settings are refused by name."""
    opt = oo.create("sgd", impl="foreach")
    assert (TracedStep(opt).chunk_size, TracedStep(opt).chunk_above) == (CHUNK_SIZE, CHUNK_ABOVE)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="chunk_size"):
            TracedStep(opt, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_above"):
        TracedStep(opt, chunk_above=-1)


def test_chunked_step_keeps_its_plan_and_makes_a_new_one_when_a_weight_or_state_changes(monkeypatch):
    """The 1-D aliases, chunks and padding of a chunked step are kept while the same weights and states come (only
    gradients and scalars are new); a weight given new memory, reshaped or transposed in place (same object, same
    data pointer), or a state replaced, makes a new plan: no step writes through a stale alias. Bit for bit equal to
    the eager step (AdamW's chunked arithmetic rounds as its eager one; torch.compile stood in by the function)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    eager, w_eager, s_eager = _chunked_setup("adamw")
    traced_opt, w_traced, s_traced = _chunked_setup("adamw")
    step = TracedStep(traced_opt, chunk_size=CHUNK, chunk_above=0)
    g = torch.Generator().manual_seed(4)
    indices = list(range(len(CHUNKED_SHAPES)))
    changes = {
        2: lambda ws, ss, opt: setattr(ws[0], "data", torch.randn(3, 5, generator=torch.Generator().manual_seed(5))),
        3: lambda ws, ss, opt: [setattr(t, "data", t.data.view(5, 3)) for t in (ws[0], *ss[0])],  # same memory
        4: lambda ws, ss, opt: setattr(ws[3], "data", ws[3].data.t()),  # (2, 2): same pointer and shape, strides not
        5: lambda ws, ss, opt: ss.__setitem__(6, opt.create_state(6, ws[6])),  # a fresh state (zeros)
        6: lambda ws, ss, opt: ss[6].mean.set_(torch.full((4, 3), 0.5)),  # a state's tensor given new memory
        # a 1-D weight and state (taken as they are, no alias) given new memory: the plan stays, the step is right
        7: lambda ws, ss, opt: [setattr(t, "data", torch.full((9,), 0.25)) for t in (ws[2], ss[2].var)],
    }
    plans = []
    for k in range(9):
        if k in changes:
            for ws, ss, opt in ((w_eager, s_eager, eager), (w_traced, s_traced, traced_opt)):
                changes[k](ws, ss, opt)
        grads = [torch.randn(w.shape, generator=g) for w in w_eager]
        eager.update(indices, w_eager, grads, s_eager)
        step.update(indices, w_traced, grads, s_traced)
        plans.append(step._plan)
        for a, b in zip(w_eager + _leaves(s_eager), w_traced + _leaves(s_traced), strict=True):
            assert torch.equal(a, b), f"step {k}"
    assert plans[1] is plans[0] and plans[8] is plans[7] is plans[6]  # kept while no alias went stale
    assert len({id(p) for p in plans[1:7]}) == 6  # a new one at every change


def test_chunk_graphs_run_with_their_own_dynamo_settings(monkeypatch):
    """The chunk calls run without duck shapes and, on the CPU, with Dynamo's size guards in C++; both settings
    are the chunk calls' only (restored after the step)."""
    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    seen = []

    def stand_in(fn, **kwargs):
        def run(*args, **kw):
            seen.append((fx_config.use_duck_shape, torch._dynamo.config.enable_cpp_symbolic_shape_guards))
            return fn(*args, **kw)
        return run

    monkeypatch.setattr(torch, "compile", stand_in)
    before = (fx_config.use_duck_shape, torch._dynamo.config.enable_cpp_symbolic_shape_guards)
    opt, weights, states = _chunked_setup("sgd")
    step = TracedStep(opt, chunk_size=CHUNK, chunk_above=0)
    step.update(list(range(len(weights))), weights, [torch.ones_like(w) for w in weights], states)
    assert seen and set(seen) == {(False, True)}
    assert (fx_config.use_duck_shape, torch._dynamo.config.enable_cpp_symbolic_shape_guards) == before


def test_split_choice_times_both_graphs_and_runs_the_faster():
    """A group of large tensors runs the split-loop graph or the one-thread graph: each timed after an untimed
    first call, then the faster one, both timed again after RETIME_EVERY steps, then every 50 x slower / faster
    steps when more; a slower machine switches."""
    from optzoo.optimizer.traced import RETIME_EVERY, _SplitChoice

    choice, picks = _SplitChoice(), []

    def steps(count, split_s, single_s):
        for _ in range(count):
            split = choice.pick()
            picks.append(split)
            choice.record(split, split_s if split else single_s)

    steps(6, 1.0, 2.0)
    assert picks == [True, False] * 3  # each warmed (may compile), then timed twice, interleaved
    steps(10, 1.0, 2.0)
    assert picks[6:] == [True] * 10
    steps(3, 5.0, 2.0)  # the cores got busy: the split loops' barriers wait
    assert picks[16:] == [True, False, False]
    del picks[:]
    steps(500, 5.0, 2.0)
    retimed = [k for k, split in enumerate(picks) if split]
    assert all(picks[k + 1] is False for k in retimed)  # the split graph timed again, then the other
    assert retimed[0] < RETIME_EVERY  # the first time after RETIME_EVERY steps, whatever the ratio
    assert min(b - a for a, b in itertools.pairwise(retimed)) >= 50 * 5 / 2  # then 50 x slower / faster apart
    del picks[:]
    steps(4000, 100.0, 1.0)  # far slower: retimed every 5,000 steps, not every RETIME_EVERY
    assert picks.count(True) <= 1


def test_large_tensors_give_the_same_result_on_split_or_one_thread_loops(monkeypatch):
    """Whichever graph the large tensors run (loops split among threads, or one thread each), the step equals the
    eager one to rounding, and the two graphs agree bit for bit."""
    opt, _, _ = _setup("adam")
    split_from = TracedStep(opt)._split_from(torch.device("cpu"))
    shapes = [(k + 2,) for k in range(6)] + [(split_from + 3 * k,) for k in range(5)] + [(2, split_from // 2 + 1)]
    results = {}
    for run in ("eager", True, False):  # True: split loops, False: one thread
        monkeypatch.setattr("optzoo.optimizer.traced._SplitChoice.pick", lambda self, run=run: run)
        opt, _, _ = _setup("adam")
        g = torch.Generator().manual_seed(9)
        weights = [torch.randn(s, generator=g) for s in shapes]
        states = [opt.create_state(i, w) for i, w in enumerate(weights)]
        step = TracedStep(opt, chunk_size=4, chunk_above=0)
        for _ in range(3):
            grads = [torch.randn(s, generator=g) for s in shapes]
            (opt.update if run == "eager" else step.update)(list(range(len(shapes))), weights, grads, states)
        results[run] = weights + _leaves(states)
    for a, b in zip(results["eager"], results[True], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert all(map(torch.equal, results[True], results[False]))
