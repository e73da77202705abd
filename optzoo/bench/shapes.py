"""Parameter-shape sets of the benchmark (pure Python: the MXNet process receives them as JSON)."""

from __future__ import annotations

import math
import random

__all__ = ["SHAPE_SETS", "DEFAULT_SHAPES", "get_shapes", "numel"]


def _resnet50() -> list[tuple[int, ...]]:
    """The 161 parameter tensors of a torchvision ResNet-50 (25,557,032 values): convs, BN pairs, fc."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            for cin, cout, k in ((inplanes, width, 1), (width, width, 3), (width, width * 4, 1)):
                shapes += [(cout, cin, k, k), (cout,), (cout,)]
            if block == 0:  # projection shortcut
                shapes += [(width * 4, inplanes, 1, 1), (width * 4,), (width * 4,)]
            inplanes = width * 4
    return shapes + [(1000, 2048), (1000,)]


def _many_small(count: int, low: int, high: int) -> list[tuple[int, ...]]:
    rng = random.Random(0)
    return [(rng.randint(low, high),) for _ in range(count)]


#: name -> (full shapes, --quick shapes, description)
SHAPE_SETS = {
    "resnet50": (_resnet50, lambda: _resnet50()[:40], "ResNet-50's 161 tensors (25.6M values)"),
    "many-small": (lambda: _many_small(2000, 1000, 20000), lambda: _many_small(60, 1000, 5000),
                   "2000 tensors of 1k-20k values"),
    "big": (lambda: [(100_000_000,)], lambda: [(1_000_000,)], "one tensor of 100M values"),
    "tiny": (lambda: [(64,)] * 2000, lambda: [(64,)] * 100, "2000 tensors of 64 values (per-tensor overhead)"),
}
DEFAULT_SHAPES = tuple(SHAPE_SETS)


def numel(shape) -> int:
    return math.prod(shape)


def get_shapes(name: str, quick: bool = False) -> list[tuple[int, ...]]:
    if name not in SHAPE_SETS:
        raise ValueError(f"unknown shape set {name!r}; choose from {', '.join(SHAPE_SETS)}")
    full, small, _ = SHAPE_SETS[name]
    return [tuple(s) for s in (small() if quick else full())]
