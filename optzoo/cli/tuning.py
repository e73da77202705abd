"""Learning-rate tuning for ``optzoo compare --tune``: every optimizer gets the same search on the same budget.

The search, per optimizer and task, is successive halving over seeds on a log grid:

1. **Grid.** Five learning rates half a decade apart, centred on the optimizer's own (the spec's, else MXNet's
   default): ``lr0 * 10**(k/2)`` for k = -2..2. While the best of them sits at an edge of the grid, one more
   point is added beyond that edge (at most ``MAX_EXTENSIONS`` per side), so an optimizer whose default is far
   off (AdaDelta, SGLD) is not judged at the edge of its range.
2. **Rung 0.** Every grid point trains for the full number of epochs with seed 0.
3. **Rung 1.** The ``SURVIVORS`` best learning rates train with the remaining seeds.
4. **Choice** (``choose``). Among the survivors, those whose mean final validation accuracy is within the seed
   noise of the best mean (one standard error of the difference, at least one validation example) are tied, and
   the tied learning rate with the lowest mean final validation loss is chosen. Accuracy on a few hundred
   validation examples moves in steps of one example and differs by about half a point from seed to seed, so on
   an optimizer's plateau of good learning rates (often a decade wide) the best mean of three seeds is a coin
   flip between equivalent rates; the validation loss varies far less between seeds and decides such ties.

Halving over *seeds* rather than over epochs keeps every candidate's training as long as the final run's:
halving over epochs favours learning rates that are fast early but not best at the end (the short-horizon
bias). Every candidate is judged by the final validation metric, so a rerun with more seeds or a full grid
(``optzoo compare --lr ... --seeds 5``) should agree.

The order of rung 0 (``rank_key``): fewer diverged runs, then the higher mean final validation accuracy (a
diverged run counts as 0), compared to the resolution of one validation example, then the lower mean final
validation loss.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

__all__ = ["GRID_POINTS", "MAX_EXTENSIONS", "SURVIVORS", "choose", "lr_grid", "plan", "rank_key", "rank_lrs", "search",
           "tied_with_best"]

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


def _accuracies(records: list) -> list[float]:
    """Final validation accuracies; a failed run or one without an accuracy (diverged) counts as 0."""
    return [(r["final"].get("val_accuracy") or 0.0) if r is not None else 0.0 for r in records]


def _mean_loss(records: list) -> float:
    losses = [r["final"].get("val_loss") for r in records if r is not None]
    losses = [v for v in losses if v is not None and math.isfinite(v)]
    return statistics.fmean(losses) if losses else math.inf


def rank_key(records: list[dict], validation_size: int) -> tuple:
    """Sort key of one learning rate's runs (smaller is better); see the module docstring."""
    diverged = sum(r is None or r["status"] != "ok" for r in records)
    accuracies = _accuracies(records)
    mean_accuracy = statistics.fmean(accuracies) if accuracies else 0.0
    return diverged / max(len(records), 1), -round(mean_accuracy * validation_size), _mean_loss(records)


def rank_lrs(runs_by_lr: dict[float, list], validation_size: int) -> list[float]:
    """Learning rates best first: those with the most seeds first (the survivors of the last rung), then by
    ``rank_key``, then the smaller learning rate (the safer one) on a complete tie."""
    return sorted(runs_by_lr, key=lambda lr: (-len(runs_by_lr[lr]), rank_key(runs_by_lr[lr], validation_size), lr))


def tied_with_best(best: list, other: list, validation_size: int) -> bool:
    """Whether ``other``'s mean final validation accuracy is within the seed noise of ``best``'s: one standard
    error of the difference of the means, and at least one validation example."""
    a, b = _accuracies(best), _accuracies(other)
    noise = 0.0
    if len(a) > 1 and len(b) > 1:
        noise = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return statistics.fmean(a) - statistics.fmean(b) <= max(noise, 1.0 / validation_size)


def choose(runs_by_lr: dict[float, list], validation_size: int) -> float | None:
    """The chosen learning rate (None when there is nothing to choose from): among the learning rates with the
    most seeds and the fewest diverged runs, those tied with the best mean accuracy (``tied_with_best``), then the
    lowest mean validation loss, then the smaller learning rate."""
    ranked = rank_lrs(runs_by_lr, validation_size)
    if not ranked:
        return None
    best = runs_by_lr[ranked[0]]
    finalists = [lr for lr in ranked if len(runs_by_lr[lr]) == len(best)
                 and rank_key(runs_by_lr[lr], validation_size)[0] == rank_key(best, validation_size)[0]
                 and tied_with_best(best, runs_by_lr[lr], validation_size)]
    return min(finalists, key=lambda lr: (_mean_loss(runs_by_lr[lr]), lr))


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
