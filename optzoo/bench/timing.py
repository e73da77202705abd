"""Step timing shared by the torch benchmark and the MXNet runner. It imports nothing but the standard
library: ``mxnet_runner.py`` runs as a script in MXNet's virtualenv (no torch, no optzoo) and imports this file
as the top-level module ``timing`` from its own folder."""

import statistics
import time

__all__ = ["STATISTICS", "set_statistic", "time_step"]

#: how the runs of one measurement become its time: the median, or the minimum (the least disturbed run, for a
#: machine shared with other work)
STATISTICS = {"median": statistics.median, "min": min}
_statistic = statistics.median


def set_statistic(name: str) -> None:
    global _statistic
    _statistic = STATISTICS[name]


def time_step(step, repeats: int, target_s: float, clock=time.perf_counter) -> tuple[float, list[float]]:
    """Seconds per ``step()`` over ``repeats`` runs of k steps (k chosen so a run lasts ~target_s): their median,
    or their minimum after ``set_statistic("min")``. ``clock``: wall time, or e.g. ``time.process_time``.

    The caller has already run the warm-up step that creates the state."""
    start = clock()
    step()
    probe = clock() - start
    k = max(1, min(10_000, round(target_s / max(probe, 1e-7))))
    if probe > 1.0:
        repeats = min(repeats, 2)
    samples = []
    for _ in range(max(1, repeats)):
        start = clock()
        for _ in range(k):
            step()
        samples.append((clock() - start) / k)
    return _statistic(samples), samples
