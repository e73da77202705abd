"""Trajectories of an optzoo optimizer and of the reference package it reproduces, on the same random problem.

Both see the same initial weights and the same gradients for ``steps`` steps; the caller compares the weights and
the states (named by the reference's state keys) at the end.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from optzoo import optimizer as opt

FULL = os.environ.get("OPTZOO_FULL") == "1"


def random_shapes(rng: np.random.Generator, n: int = 6, max_dim: int = 24) -> list[tuple]:
    """Square and non-square matrices, vectors, a 3-D tensor and a degenerate (1, m) matrix."""
    shapes = [(int(rng.integers(2, max_dim)), int(rng.integers(2, max_dim))) for _ in range(n - 3)]
    shapes.append((int(rng.integers(1, 3 * max_dim)),))
    shapes.append((int(rng.integers(2, 5)), int(rng.integers(2, 8)), int(rng.integers(2, 8))))
    shapes.append((1, int(rng.integers(2, max_dim))))
    return shapes


def run_both(make_reference, name: str, kwargs: dict, shapes, *, steps: int = 100, seed: int = 0,
             impl: str = "reference", grad_scale: float = 1.0):
    """``(ours, ref_params, ref_optimizer, updater)`` after ``steps`` identical steps."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen) for s in shapes]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    reference = make_reference(params)
    updater = opt.get_updater(opt.create(name, impl=impl, **kwargs))
    indices = list(range(len(shapes)))
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen) * grad_scale for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        reference.step()
        updater(indices, grads, weights)
    return weights, params, reference, updater


def assert_same(ours, theirs, rtol: float, atol: float, what: str) -> None:
    theirs = theirs.detach() if isinstance(theirs, torch.Tensor) else torch.as_tensor(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
