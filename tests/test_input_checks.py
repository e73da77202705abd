"""The usual-case input check of the torch paths (``Optimizer._inputs_usual``), on both of its implementations: the
native pass (``usual_inputs`` in core.cpp, with the states' layouts it keeps) and the pure-Python one used without
the native kernels. Each case the fast check must not pass (shared or overlapping memory, another device, a sparse
or non-tensor input, a misshapen state) makes it answer "look closer", and the step then gives the named error of
the entry-by-entry check (or runs, where the input is legal); a random sweep compares the two implementations."""

from __future__ import annotations

import random

import pytest
import torch
from native_support import require_native
from optimizer_table import ROW_BY_NAME, ROWS

import optzoo.optimizer as oo
from optzoo import native


@pytest.fixture(params=["native", "python"])
def path(request, monkeypatch):
    """Runs the test with the native check (skipped where the kernels are missing) or the Python one."""
    if request.param == "native":
        require_native()
        assert native.built() is not None
    else:
        monkeypatch.setattr(native, "built", lambda: None)
    return request.param


def _step(name="adam", shapes=((4, 3), (5,)), pad=0, **kwargs):
    """An optimizer and a usual step of fresh tensors (``pad`` more 16-value tensors first: past the 64 regions
    where the native sort switches to radix passes)."""
    opt = oo.create(name, impl="foreach", **kwargs)
    shapes = [(16,)] * pad + list(shapes)
    weights = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    states = [opt.create_state(i, w) for i, w in enumerate(weights)]
    return opt, list(range(len(weights))), weights, grads, states


def _views(base, *slices):
    return [base[s] for s in slices]


SHARE = (ValueError, "share memory")

# name -> (edit of a usual step's (weights, grads, states) lists, in place; the error of the update or None)
CASES = {
    "two weights overlap by one value": (
        lambda o, w, g, s: _swap(o, w, g, s, *_views(torch.randn(40), slice(0, 20), slice(19, 39))), SHARE),
    "interleaved weights x[::2], x[1::2]": (
        lambda o, w, g, s: _swap(o, w, g, s, *_views(torch.randn(40), slice(0, None, 2), slice(1, None, 2))), SHARE),
    "a weight interleaved with its gradient": (lambda o, w, g, s: _interleave_grad(w, g), SHARE),
    "a weight listed twice": (lambda o, w, g, s: _repeat(o, w, g, s), None),
    "a zero-size weight listed twice": (lambda o, w, g, s: _repeat(o, w, g, s, empty=True), None),
    "a state that is its weight": (lambda o, w, g, s: _state_is(s, -1, w[-1]), SHARE),
    "a state that is a view of another weight": (lambda o, w, g, s: _state_is(s, -1, w[0].view(-1)[:5]), SHARE),
    "a gradient that is its weight": (lambda o, w, g, s: g.__setitem__(-1, w[-1]), SHARE),
    # legal, as a step over two devices is (each device's tensors checked apart); a meta tensor has no memory to
    # share (its data pointer, 0 for all, once made the check name it as sharing memory with its gradient)
    "a weight on another device (meta)": (lambda o, w, g, s: _meta(o, w, g, s), None),
    "a state on another device (meta)": (
        lambda o, w, g, s: _state_is(s, -1, torch.empty(5, device="meta")), (ValueError, "is on meta")),
    "a sparse gradient": (lambda o, w, g, s: g.__setitem__(-1, g[-1].to_sparse()), None),
    "a state of another shape": (lambda o, w, g, s: _state_is(s, -1, torch.zeros(5, 1)), (ValueError, "state 0")),
    "a state of another dtype": (
        lambda o, w, g, s: _state_is(s, -1, torch.zeros(5, dtype=torch.float64)), (ValueError, "state 0")),
    "a state entry that is a number": (lambda o, w, g, s: _state_is(s, -1, 0.5), (ValueError, "is a float")),
    "a gradient of another dtype": (lambda o, w, g, s: g.__setitem__(-1, g[-1].double()), (ValueError, "grad dtype")),
    "a weight that is not a tensor": (lambda o, w, g, s: w.__setitem__(-1, [0.0] * 5), (TypeError, "torch.Tensor")),
}


def _swap(opt, weights, grads, states, first, second):
    """The last two entries become the weights ``first`` and ``second`` with fresh gradients and states."""
    for k, w in ((-2, first), (-1, second)):
        weights[k], grads[k], states[k] = w, torch.randn(w.shape), opt.create_state(0, w)


def _interleave_grad(weights, grads):
    base = torch.randn(10)
    weights[-1].data = base[0::2]
    grads[-1] = base[1::2]


def _repeat(opt, weights, grads, states, empty=False):
    if empty:
        weights[-1].data = torch.empty(0)
        grads[-1], states[-1] = torch.empty(0), opt.create_state(0, weights[-1])
    for column in (weights, grads, states):
        column.append(column[-1])
    return list(range(len(weights) - 1)) + [len(weights) - 2]  # the same entry twice: updated twice, as MXNet


def _state_is(states, k, value):
    state = states[k]
    states[k] = type(state)(value, *state[1:])


def _meta(opt, weights, grads, states):
    weights[-1] = torch.empty(5, device="meta")
    grads[-1] = torch.empty(5, device="meta")
    states[-1] = opt.create_state(0, weights[-1])


@pytest.mark.parametrize("pad", [0, 40])
@pytest.mark.parametrize("case", list(CASES))
def test_the_fast_check_looks_closer_and_the_step_names_the_problem(path, case, pad):
    edit, error = CASES[case]
    opt, indices, weights, grads, states = _step(pad=pad)
    assert opt._inputs_usual(indices, weights, grads, states)
    indices = edit(opt, weights, grads, states) or list(range(len(weights)))
    assert not opt._inputs_usual(indices, weights, grads, states)
    if error is None:
        opt.update(indices, weights, grads, states)  # legal: the slow path takes it
    else:
        with pytest.raises(error[0], match=error[1].format(last=indices[-1])):
            opt.update(indices, weights, grads, states)


ACCEPTED = {
    "adjacent views of one buffer": lambda o, w, g, s: _swap(o, w, g, s, *_views(torch.randn(40), slice(0, 20),
                                                                                  slice(20, 40))),
    "gradients that share memory": lambda o, w, g, s: g.__setitem__(-1, g[-2].view(-1)[:5]),
    "one gradient for two weights": lambda o, w, g, s: _swap(o, w, g, s, torch.randn(5), torch.randn(5)) or
    g.__setitem__(-1, g[-2]),
    "a zero-size weight inside another weight": lambda o, w, g, s: _zero_inside(o, w, g, s),
    "a zero-size weight where another begins": lambda o, w, g, s: _zero_inside(o, w, g, s, at=0),
}


def _zero_inside(opt, weights, grads, states, at=3):
    base = torch.randn(20)
    _swap(opt, weights, grads, states, base[:20], base[at:at])


@pytest.mark.parametrize("pad", [0, 40])
@pytest.mark.parametrize("case", list(ACCEPTED))
def test_the_fast_check_passes_legal_sharing(path, case, pad):
    opt, indices, weights, grads, states = _step(pad=pad)
    ACCEPTED[case](opt, weights, grads, states)
    assert opt._inputs_usual(indices, weights, grads, states)
    before = [w.clone() for w in weights]
    opt.update(indices, weights, grads, states)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights))


def test_a_layout_kept_as_checked_is_not_taken_for_another(path):
    """Native: the first step keeps its states' layout; a step with a misshapen state, or another optimizer's
    states, or after the templates were made again (a settings change) compares afresh."""
    opt, indices, weights, grads, states = _step(shapes=((4, 3), (5,), (2, 2, 2)))
    for _ in range(2):
        assert opt._inputs_usual(indices, weights, grads, states)
    wrong = list(states)
    wrong[1] = type(states[1])(states[1][0], torch.zeros(5, dtype=torch.float64))
    assert not opt._inputs_usual(indices, weights, grads, wrong)
    sgd = oo.create("sgd", impl="foreach", momentum=0.9)
    assert not opt._inputs_usual(indices, weights, grads, [sgd.create_state(i, w) for i, w in enumerate(weights)])
    assert not opt._inputs_usual(indices, weights, grads, [(m,) for m, _ in states])
    assert opt._inputs_usual(indices, weights, grads, states)
    opt._state_template(0, weights[0], fresh=True)
    assert "_usual_layouts" not in opt.__dict__
    assert opt._inputs_usual(indices, weights, grads, states)


def test_signatures_are_kept_per_multi_precision_setting():
    require_native()
    opt, indices, weights, grads, states = _step()
    assert opt._inputs_usual(indices, weights, grads, states)
    opt.multi_precision = True
    assert opt._inputs_usual(indices, weights, grads, states)
    assert sorted(opt._usual_layouts) == [False, True]


def _random_step(rng, opt):
    """Weights, gradients and states drawn as views of two pools (contiguous, strided, 0-size) or fresh tensors."""
    size = rng.choice([300, 3000, 30000])  # the larger, the fewer views overlap
    pools = [torch.zeros(size), torch.zeros(size)]

    def tensor(n):
        if rng.random() < 0.3:
            return torch.zeros(n)
        pool, step = rng.choice(pools), rng.choice([1, 1, 1, 2, 3])
        start = rng.randrange(0, size - n * step + 1)
        return pool[start:start + n * step:step]

    weights, grads, states = [], [], []
    for _ in range(rng.randint(1, 40)):
        n = rng.choice([0, 1, 3, 8, 20])
        w = tensor(n)
        weights.append(w)
        grads.append(tensor(n))
        states.append(type(opt.create_state(0, w))(tensor(n), tensor(n)))
    if rng.random() < 0.2:  # a weight listed twice
        k = rng.randrange(len(weights))
        weights.append(weights[k]), grads.append(grads[k]), states.append(states[k])
    return list(range(len(weights))), weights, grads, states


@pytest.mark.parametrize("seed", range(300))
def test_native_and_python_checks_agree(seed, monkeypatch):
    """The native pass answers as the Python one, case by case, on random views of shared pools."""
    require_native()
    rng = random.Random(seed)
    opt = oo.create("adam", impl="foreach")
    indices, weights, grads, states = _random_step(rng, opt)
    fast = opt._inputs_usual(indices, weights, grads, states)
    monkeypatch.setattr(native, "built", lambda: None)
    assert fast == opt._inputs_usual(indices, weights, grads, states)


@pytest.mark.parametrize("impl", ["foreach", "reference"])
@pytest.mark.parametrize("name", [row.name for row in ROWS])
def test_a_plain_tuple_where_the_rule_reads_a_named_state_is_a_named_error(path, name, impl):
    """Every layout check compares flat entries, which a plain tuple of the right tensors passes; the rule then reads
    ``state.mean``: the state's own type is checked too (a plain tuple of AdamState's tensors named an
    AttributeError before, and Muon, whose state's type picks the side, skipped the parameter). A state of the type
    create_state makes still steps."""
    row = ROW_BY_NAME[name]
    opt = oo.create(name, impl=impl, **row.configs[0])
    weights = [torch.randn(4, 3), torch.randn(5)]
    states = [opt.create_state(i, w) for i, w in enumerate(weights)]
    grads = [torch.randn_like(w) for w in weights]
    if not any(type(s) is not tuple and isinstance(s, tuple) for s in states):
        pytest.skip(f"{name}'s states are no named tuples")
    opt.update([0, 1], weights, [g.clone() for g in grads], states)  # as made: fine
    plain = [tuple(s) if isinstance(s, tuple) else s for s in states]
    with pytest.raises(ValueError, match=r"the state of parameter \d is a tuple\b.*expected a \w+State"):
        opt.update([0, 1], weights, grads, plain)
