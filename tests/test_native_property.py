"""Property test: for EVERY optimizer of the table, random tensor lists (shared storage, tied weights, overlapping
and disjoint views of one buffer, non-contiguous and 0-size tensors, mixed dtypes, states that are views of a
weight or misshapen, repeated entries) give the same result on the fast path (native where built) and on the
readable path, or the same kind of clear ValueError. Runs with two threads and tensors past the size where the
kernels go parallel, so races on shared memory would show.

CI draws a few cases per optimizer; ``OPTZOO_FULL=1`` many more.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_support import require_native
from optimizer_table import ROWS, Row

from optzoo import optimizer as opt
from optzoo.optimizer.base import _leaves

FULL = os.environ.get("OPTZOO_FULL") == "1"
KINDS = ["fresh", "fresh", "noncontig", "empty", "tied", "overlap", "disjoint", "state_is_weight",
         "wrong_shape_state", "shared_grad", "repeat", "float64", "float16"]
SIZES = [3, 17, 40_000]  # 40,000 elements: past the kernels' parallel threshold (32K)


def _category(err: ValueError) -> str:
    text = str(err)
    if "share memory" in text or "overlaps itself" in text:
        return "shared memory"
    if re.search(r"state( \d+)? of parameter", text):
        return "state layout"
    return text


def _build(row: Row, spec, seed: int, impl: str):
    """The optimizer and its update's lists for ``spec`` (the same tensors for every ``impl``)."""
    kwargs = {**row.feature_kwargs, "impl": impl}
    if any(kind == "float16" for kind, _ in spec):
        kwargs["multi_precision"] = True
    optimizer = opt.create(row.name, **kwargs)
    g = torch.Generator().manual_seed(seed)
    big = max(size for _, size in spec)
    overlapping = torch.randn(4 * big, generator=g)  # "overlap" views: each starts half a view after the last
    disjoint = torch.randn(4 * big, generator=g)  # "disjoint" views: one storage, no shared bytes
    indices, weights, grads, states = [], [], [], []
    n_overlap = n_disjoint = 0
    for i, (kind, size) in enumerate(spec):
        shape, numel = (size,), size
        if kind == "repeat" and weights:  # the same entry again (MXNet's repeated index): updated in order
            indices.append(indices[0])
            weights.append(weights[0])
            grads.append(torch.randn(weights[0].shape, generator=g, dtype=weights[0].dtype))
            states.append(states[0])
            continue
        if kind == "tied" and weights:
            w = weights[0]
        elif kind == "overlap":
            w = overlapping[n_overlap * (numel // 2):][:numel].view(shape)
            n_overlap += 1
        elif kind == "disjoint":
            w = disjoint[n_disjoint * big:][:numel].view(shape)
            n_disjoint += 1
        elif kind == "noncontig":
            w = torch.randn(*shape[::-1], generator=g).t() if len(shape) == 2 else \
                torch.randn(2 * numel, generator=g)[::2].view(shape) if numel else torch.empty(shape)
        elif kind == "empty":
            w = torch.empty((0, *shape[1:]))
        elif kind == "float64":
            w = torch.randn(shape, generator=g, dtype=torch.float64)
        elif kind == "float16":
            w = torch.randn(shape, generator=g).to(torch.float16)
        else:
            w = torch.randn(shape, generator=g)
        if kind == "shared_grad" and grads and grads[0].shape == w.shape and grads[0].dtype == w.dtype:
            grad = grads[0]  # gradients are only read: sharing them is allowed
        else:
            grad = torch.randn(w.shape, generator=g).to(w.dtype)
        state = optimizer.create_state_multi_precision(i, w)
        leaves = _leaves(state)
        if kind in ("state_is_weight", "wrong_shape_state") and leaves and w.dtype == torch.float32 \
                and isinstance(state, tuple) and isinstance(state[0], torch.Tensor) and state[0].shape == w.shape:
            replacement = w if kind == "state_is_weight" else state[0].reshape(1, -1)
            state = type(state)(replacement, *state[1:]) if hasattr(state, "_fields") else (replacement, *state[1:])
        elif kind in ("state_is_weight", "wrong_shape_state") and isinstance(state, torch.Tensor) \
                and state.shape == w.shape and state.dtype == w.dtype:
            state = w if kind == "state_is_weight" else state.reshape(1, -1)
        indices.append(i)
        weights.append(w)
        grads.append(grad)
        states.append(state)
    return optimizer, indices, weights, grads, states, [overlapping, disjoint]


def _run(row: Row, spec, seed: int, impl: str):
    optimizer, indices, weights, grads, states, buffers = _build(row, spec, seed, impl)
    try:
        for _ in range(2):
            optimizer.update_multi_precision(list(indices), list(weights), list(grads), list(states))
    except ValueError as err:
        return _category(err)
    return [*weights, *buffers, *(leaf for s in states for leaf in _leaves(s))]


SPEC = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(SIZES)), min_size=1, max_size=4)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_fast_path_equals_reference_on_random_tensor_lists(row: Row):
    require_native()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        @settings(max_examples=100 if FULL else 10, deadline=None, derandomize=not FULL, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(spec=SPEC, seed=st.integers(0, 1000))
        def check(spec, seed):
            if not row.multi_precision:
                spec = [(kind if kind != "float16" else "fresh", size) for kind, size in spec]
            reference = _run(row, spec, seed, "reference")
            fast = _run(row, spec, seed, "auto")
            if isinstance(reference, str) or isinstance(fast, str):
                assert fast == reference, f"reference: {reference!r}, fast path: {fast!r}"
                return
            for a, b in zip(reference, fast):
                if a.dtype in (torch.float16, torch.bfloat16):  # one rounding of master copies that may differ
                    torch.testing.assert_close(b, a, rtol=row.tol["float16"].rtol, atol=row.tol["float16"].atol)
                else:
                    torch.testing.assert_close(b, a, rtol=row.impl_tol.rtol * 10, atol=row.impl_tol.atol * 10)

        check()
    finally:
        torch.set_num_threads(threads)


def _adam_case(case: str):
    """The findings of the review, with tensors large enough for two threads to split them."""
    weight = torch.randn(100_000)
    base = torch.randn(200_000)
    if case == "tied weight listed twice":
        return [7, 8], [weight, weight], "share memory", "parameter 7"
    return [7, 8], [base[:120_000], base[80_000:]], "share memory", "parameter 7"  # overlapping views


@pytest.mark.parametrize("impl", ["native", "foreach", "reference"])
@pytest.mark.parametrize("case", ["tied weight listed twice", "overlapping views", "state is its weight",
                                  "state of the right size but the wrong shape", "float64 state"])
def test_review_findings_are_clear_errors_on_every_path(case, impl):
    if impl == "native":
        require_native()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        o = opt.create("adam", impl=impl)
        if case in ("tied weight listed twice", "overlapping views"):
            indices, weights, match, who = _adam_case(case)
            states = [o.create_state(i, w) for i, w in zip(indices, weights)]
        else:
            w = torch.randn(300, 200)
            state = o.create_state(7, w)
            bad = {"state is its weight": w, "state of the right size but the wrong shape": torch.zeros(200, 300),
                   "float64 state": torch.zeros(300, 200, dtype=torch.float64)}[case]
            indices, weights, states = [3, 7], [torch.randn(5), w], [o.create_state(3, torch.randn(5)),
                                                                     type(state)(bad, state.var)]
            match, who = ("share memory" if case == "state is its weight" else "state 0 of parameter 7"), "parameter 7"
        before = [w.clone() for w in weights]
        with pytest.raises(ValueError, match=match) as err:
            o.update(indices, weights, [torch.ones_like(w) for w in weights], states)
        assert who in str(err.value)
        assert all(torch.equal(a, b) for a, b in zip(weights, before)), "nothing may be written"
    finally:
        torch.set_num_threads(threads)


def test_repeated_entry_is_updated_in_order_with_two_threads():
    require_native()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = {}
        for impl in ("native", "reference"):
            o = opt.create("adam", impl=impl)
            w = torch.linspace(-1, 1, 100_000)
            s = o.create_state(0, w)
            o.update([0, 0], [w, w], [torch.full_like(w, 0.5), torch.full_like(w, -0.25)], [s, s])
            results[impl] = [w, *s]
        for a, b in zip(results["native"], results["reference"]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    finally:
        torch.set_num_threads(threads)
