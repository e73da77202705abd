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


def _bert(layers: int, vocab: int) -> list[tuple[int, ...]]:
    """BERT-base's tensors (width 768, 3072 feed-forward, 512 positions) with `layers` encoder layers and a
    `vocab`-word embedding: large matrices between many 768-value biases and LayerNorm vectors."""
    h, ff = 768, 3072
    shapes = [(vocab, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(layers):
        shapes += [(h, h), (h,)] * 4 + [(h,), (h,), (ff, h), (ff,), (h, ff), (h,), (h,), (h,)]
    return shapes + [(h, h), (h,)]


def _random_sizes(count: int, largest: int, seed: int = 1) -> list[tuple[int, ...]]:
    """`count` tensors of 1 to 4 dimensions whose sizes are spread evenly in log scale from 1 to `largest` values."""
    rng = random.Random(seed)
    shapes = []
    for _ in range(count):
        n = max(1, round(math.exp(rng.uniform(0.0, math.log(largest)))))
        dims = rng.randint(1, 4)
        shape = [n]
        for _ in range(dims - 1):  # peel small factors off n (the last dimension keeps the rest)
            f = rng.choice([1, 2, 3, 4, 8, 16])
            if shape[-1] % f == 0:
                shape[-1] //= f
                shape.insert(0, f)
        shapes.append(tuple(shape))
    return shapes


#: name -> (full shapes, --quick shapes, description)
SHAPE_SETS = {
    "resnet50": (_resnet50, lambda: _resnet50()[:40], "ResNet-50's 161 tensors (25.6M values)"),
    "many-small": (lambda: _many_small(2000, 1000, 20000), lambda: _many_small(60, 1000, 5000),
                   "2000 tensors of 1k-20k values"),
    "big": (lambda: [(100_000_000,)], lambda: [(1_000_000,)], "one tensor of 100M values"),
    "tiny": (lambda: [(64,)] * 2000, lambda: [(64,)] * 100, "2000 tensors of 64 values (per-tensor overhead)"),
    # parameter sets whose shapes no kernel was tuned on
    "bert": (lambda: _bert(4, 8000), lambda: _bert(1, 1000)[:9],
             "BERT-base tensors, 4 layers, 8k vocabulary (71 tensors, 35.5M values, 43 of them 1-D)"),
    "random": (lambda: _random_sizes(300, 2_000_000), lambda: _random_sizes(30, 100_000),
               "300 tensors of 1 to 2M values, log-uniform sizes, 1-4 dimensions"),
    "vectors": (lambda: _many_small(4000, 64, 4096), lambda: _many_small(200, 64, 1024),
                "4000 1-D tensors of 64-4096 values (biases, norms)"),
}
DEFAULT_SHAPES = ("resnet50", "many-small", "big", "tiny")


def numel(shape) -> int:
    return math.prod(shape)


def get_shapes(name: str, quick: bool = False) -> list[tuple[int, ...]]:
    if name not in SHAPE_SETS:
        raise ValueError(f"unknown shape set {name!r}; choose from {', '.join(SHAPE_SETS)}")
    full, small, _ = SHAPE_SETS[name]
    return [tuple(s) for s in (small() if quick else full())]
