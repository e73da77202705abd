"""Learning-rate tuning for ``optzoo compare --tune``: every optimizer gets the same search on the same budget.

The search, per optimizer and task, is successive halving over seeds on a log grid:

1. **Grid.** Five learning rates half a decade apart, centred on the optimizer's own (the spec's, else MXNet's
   default): ``lr0 * 10**(k/2)`` for k = -2..2. While the best of them sits at an edge of the grid, one more
   point is added beyond that edge (at most ``MAX_EXTENSIONS`` per side), so an optimizer whose default is far
   off (AdaDelta, SGLD) is not judged at the edge of its range.
2. **Rung 0.** Every grid point trains for the full number of epochs with seed 0.
3. **Rung 1.** The ``SURVIVORS`` best learning rates train with the remaining seeds; the chosen one is the best
   of them by the mean over all seeds.

Halving over *seeds* rather than over epochs keeps every candidate's training as long as the final run's:
halving over epochs favours learning rates that are fast early but not best at the end (the short-horizon
bias). Every candidate is judged by the final validation metric, so a rerun with more seeds or a full grid
(``optzoo compare --lr ... --seeds 5``) should agree.

The order (``rank_key``): fewer diverged runs, then the higher mean final validation accuracy (a diverged run
counts as 0), compared to the resolution of one validation example, then the lower mean final validation loss.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

__all__ = ["GRID_POINTS", "MAX_EXTENSIONS", "SURVIVORS", "choose", "lr_grid", "rank_key", "plan", "rank_lrs", "search"]

GRID_POINTS = 5
MAX_EXTENSIONS = 3
SURVIVORS = 2
_HALF_DECADE = math.sqrt(10.0)


def _round(lr: float) -> float:
    """Three significant digits, so that grid points print (and compare) cleanly: 0.00316, not 0.0031622776."""
    return float(f"{lr:.3g}")


def _point(reference: float, k: int) -> float:
    """The grid point k half-decades from the reference (from the reference, so extensions never drift)."""
    return _round(reference * _HALF_DECADE ** k)


def lr_grid(reference: float, points: int = GRID_POINTS) -> list[float]:
    """``points`` learning rates half a decade apart, centred on ``reference`` (ascending)."""
    if not (math.isfinite(reference) and reference > 0):
        raise ValueError(f"reference learning rate must be a finite number > 0, got {reference!r}")
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points!r}")
    low = -(points // 2)
    return [_point(reference, low + k) for k in range(points)]


def rank_key(records: list[dict], validation_size: int) -> tuple:
    """Sort key of one learning rate's runs (smaller is better); see the module docstring."""
    finals = [r["final"] if r is not None else {} for r in records]
    diverged = sum(r is None or r["status"] != "ok" for r in records)
    accuracies = [f.get("val_accuracy") or 0.0 for f in finals]
    losses = [f.get("val_loss") for f in finals]
    losses = [v for v in losses if v is not None and math.isfinite(v)]
    mean_accuracy = statistics.fmean(accuracies) if accuracies else 0.0
    return (diverged / max(len(records), 1), -round(mean_accuracy * validation_size),
            statistics.fmean(losses) if losses else math.inf)


def rank_lrs(runs_by_lr: dict[float, list], validation_size: int) -> list[float]:
    """Learning rates best first: those with the most seeds first (the survivors of the last rung), then by
    ``rank_key``, then the smaller learning rate (the safer one) on a complete tie."""
    return sorted(runs_by_lr, key=lambda lr: (-len(runs_by_lr[lr]), rank_key(runs_by_lr[lr], validation_size), lr))


def choose(runs_by_lr: dict[float, list], validation_size: int) -> float | None:
    """The chosen learning rate (None when there is nothing to choose from)."""
    ranked = rank_lrs(runs_by_lr, validation_size)
    return ranked[0] if ranked else None


def plan(reference: float, seeds: int, validation_size: int, points: int = GRID_POINTS, survivors: int = SURVIVORS,
         max_extensions: int = MAX_EXTENSIONS):
    """The search as a plan for ``optzoo.cli.workers.execute``: yields lists of ``(lr, seed)`` to train, receives
    their records in the same order (None: the run failed), and returns the chosen learning rate and every run,
    ``{lr: [record, ...]}`` (seed order). The runs of one yield are independent of each other."""
    grid = lr_grid(reference, points)
    runs: dict[float, list] = {lr: [record] for lr, record in zip(grid, (yield [(lr, 0) for lr in grid]))}
    first = -(points // 2)  # the grid's ends, in half-decades from the reference
    last = first + points - 1
    low, high = first, last
    while True:
        best = rank_lrs(runs, validation_size)[0]
        if best == _point(reference, low) and low > first - max_extensions:
            low -= 1
            new = _point(reference, low)
        elif best == _point(reference, high) and high < last + max_extensions:
            high += 1
            new = _point(reference, high)
        else:
            break
        runs[new] = list((yield [(new, 0)]))
    if seeds > 1:
        jobs = [(lr, seed) for lr in rank_lrs(runs, validation_size)[:survivors] for seed in range(1, seeds)]
        for (lr, _), record in zip(jobs, (yield jobs)):
            runs[lr].append(record)
    return choose(runs, validation_size), runs


def search(reference: float, seeds: int, evaluate: Callable[[float, int], dict | None], validation_size: int,
           **options) -> tuple[float, dict[float, list]]:
    """Runs the search one run at a time; ``evaluate(lr, seed)`` trains one run and returns its record (None: the
    run failed). Returns the chosen learning rate and every run, ``{lr: [record, ...]}`` (seed order)."""
    steps = plan(reference, seeds, validation_size, **options)
    try:
        jobs = next(steps)
        while True:
            jobs = steps.send([evaluate(lr, seed) for lr, seed in jobs])
    except StopIteration as stop:
        return stop.value
