"""The foreach path's per-step bookkeeping done once per list: scalars rounded once (f32s, per_tensor) and the
shared-memory check as one sorted sweep, each equal to the entry-by-entry version it replaces."""

import random

import numpy as np
import pytest
import torch

import optzoo.optimizer as oo
from optzoo.optimizer.base import f32, f32s, per_tensor
from optzoo.optimizer.input_checks import _may_share_memory, check_no_shared_memory


def test_f32s_rounds_as_f32_and_collapses_equal_values():
    rng = random.Random(0)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-40, 40) for _ in range(500)] + [0.1, -0.0, 1e39]
    with np.errstate(over="ignore"):
        assert f32s(values) == [f32(v) for v in values]
        assert f32s([0.1] * 7) == f32(0.1) and isinstance(f32s([0.1] * 7), float)
    assert f32s([]) == []


def test_per_tensor_calls_once_per_distinct_arguments():
    calls = []

    def scalar(lr, t):
        calls.append((lr, t))
        return lr * t

    assert per_tensor(scalar, [0.5, 0.5, 0.25, 0.5], [1, 1, 2, 1]) == [0.5, 0.5, 0.5, 0.5]
    assert sorted(calls) == [(0.25, 2), (0.5, 1)]
    calls.clear()
    assert per_tensor(scalar, [0.5] * 1000, [3] * 1000) == [1.5] * 1000 and calls == [(0.5, 3)]


def _overlaps(a, b):
    """Brute force: whether two strided tensors touch a common byte."""
    def span(t):
        extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
        return t.data_ptr(), t.data_ptr() + extent * t.element_size()
    if a.numel() == 0 or b.numel() == 0:
        return False
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


@pytest.mark.parametrize("seed", range(80))
def test_one_sweep_finds_exactly_the_pairs_that_share_memory(seed):
    rng = random.Random(seed)
    pool = torch.zeros(200)
    written, read = [], []
    for _ in range(rng.randint(2, 8)):
        start, length, step = rng.randrange(0, 180), rng.randint(0, 20), rng.choice([1, 1, 2, 3])
        view = pool[start:start + length * step:step] if rng.random() < 0.7 else torch.zeros(rng.randint(0, 5))
        (written if rng.random() < 0.5 else read).append(view)
    expected = any(_overlaps(w, t) for i, w in enumerate(written) for t in written[i + 1:] + read)
    assert _may_share_memory(written, read) == expected


def test_the_usual_case_passes_and_a_clash_is_still_named():
    opt = oo.create("adam", impl="foreach")
    weights = [torch.randn(4, 3), torch.randn(5)]
    states = [opt.create_state(i, w) for i, w in enumerate(weights)]
    grads = [torch.randn(4, 3), torch.randn(5)]
    assert opt._inputs_usual([0, 1], weights, grads, states)
    check_no_shared_memory([0, 1], weights, grads, states)
    tied = [weights[0], weights[0][1:]]
    with pytest.raises(ValueError, match="the weight of parameter 0 and the weight of parameter 1 share memory"):
        opt.update([0, 1], tied, [torch.randn(4, 3), torch.randn(3, 3)],
                   [opt.create_state(0, tied[0]), opt.create_state(1, tied[1])])
    grads[1] = grads[1].double()
    assert not opt._inputs_usual([0, 1], weights, grads, states)  # the entry-by-entry check names it
    with pytest.raises(ValueError, match="grad dtype torch.float64 does not match"):
        opt.update([0, 1], weights, grads, states)


def test_a_state_that_is_not_tensors_gets_the_named_error():
    opt = oo.create("adam", impl="foreach")
    weight = torch.randn(3)
    bad = type(opt.create_state(0, weight))(torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="state 1 of parameter 0 is a float, expected a tensor"):
        opt.update([0], [weight], [torch.randn(3)], [bad])
