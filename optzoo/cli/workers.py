"""Runs the training runs of ``optzoo compare`` on several cores (``--jobs``), with results independent of the count.

Work comes from *plans*: generators that yield a list of jobs (``RunConfig``), receive their outcomes in the same
order, and so on until they return (a learning-rate search is one plan; ``tuning.plan``). ``execute`` keeps up to
``jobs`` runs going, always starting the pending job of the earliest plan first, so one core (``jobs=1``, in this
process) trains in exactly the order of a plain loop, and more cores fill in with the next plans' jobs while a plan
waits for its batch. Every run is a pure function of its configuration (its seed, one torch thread count), so the
outcomes, and every choice a plan makes from them, do not depend on ``jobs``; the caller sorts finished runs by
``(plan, job)``, so the files written do not either.

Workers are separate processes started with ``spawn`` (never ``fork``: a forked OpenMP runtime can hang). They
ignore Ctrl-C, which the main process handles: it asks the runs in progress to stop (they check a shared event at
every progress tick) and starts no new ones. A run that raises is reported as failed with its exception; a worker
that dies (a crash in native code) fails the runs it had and is replaced.
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

__all__ = ["Outcome", "default_jobs", "execute"]

#: how often a run reports its progress (and checks for a stop request), in steps
TICK_EVERY = 5


def default_jobs() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Outcome:
    """What became of one job: ``record`` (the run's record) or ``error`` (why it failed), never both."""

    __slots__ = ("error", "record")

    def __init__(self, record: dict | None = None, error: str | None = None):
        self.record, self.error = record, error


class _Stopped(BaseException):
    """Raised inside a run by its progress callback when the main process asks the runs to stop."""


def _failure(exc: BaseException) -> Outcome:
    return Outcome(error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")


# ------------------------------------------------------------------------------------------------- worker side
_WORKER: dict = {}


def _worker_init(tasks: tuple[str, ...], threads: int, progress, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if hasattr(signal, "pthread_sigmask"):  # started with it blocked (_sigint_held): ignored now, so unblock it
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    progress.cancel_join_thread()  # exiting never waits for the main process to read the last progress ticks
    import torch

    from .training import load_task_data

    torch.set_num_threads(threads)
    _WORKER.update(data={}, progress=progress, stop=stop)
    for task in tasks:
        data = load_task_data(task)
        _WORKER["data"].setdefault(data.name, data)


def _worker_run(key, config) -> Outcome:
    from .training import train_run

    progress, stop = _WORKER["progress"], _WORKER["stop"]

    def tick(step, total, accuracy):
        if step % TICK_EVERY == 0 or step == total:
            if stop.is_set():
                raise _Stopped
            progress.put((key, step, total, accuracy))

    try:
        return Outcome(record=train_run(config, _WORKER["data"][config.dataset], tick))
    except _Stopped:
        return Outcome(error="stopped")
    except Exception as exc:  # a run's failure is reported with the others, never fatal to the comparison
        return _failure(exc)


# ------------------------------------------------------------------------------------------------- main side
class _InProcess:
    """``jobs=1``: each run trains here, when it is waited for."""

    jobs = 1

    def __init__(self, datasets: dict, on_tick: Callable):
        self.datasets, self.on_tick, self.started = datasets, on_tick, []

    def start(self, key, config) -> None:
        self.started.append((key, config))

    def running(self) -> int:
        return len(self.started)

    def wait(self) -> list[tuple]:
        from .training import train_run

        key, config = self.started.pop(0)

        def tick(step, total, accuracy):
            if step % TICK_EVERY == 0 or step == total:
                self.on_tick(key, step, total, accuracy)

        try:
            return [(key, Outcome(record=train_run(config, self.datasets[config.dataset], tick)))]
        except Exception as exc:  # KeyboardInterrupt passes: the caller stops
            return [(key, _failure(exc))]

    def close(self) -> None:
        self.started.clear()


@contextlib.contextmanager
def _sigint_held():
    """Blocks Ctrl-C while a run is handed to the workers (which may start a worker process): a process started
    then inherits the blocked signal, so a Ctrl-C while it starts cannot print its traceback (it unblocks the signal
    once it ignores it, in ``_worker_init``). Blocked, not ignored: a Ctrl-C that arrives meanwhile is delivered
    when the block ends, never lost."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Workers:
    """``jobs`` spawned worker processes, each with the data sets loaded once."""

    def __init__(self, jobs: int, tasks: tuple[str, ...], threads: int, on_tick: Callable):
        self.jobs, self.tasks, self.threads, self.on_tick = jobs, tasks, threads, on_tick
        context = multiprocessing.get_context("spawn")
        self.progress, self.stop = context.Queue(), context.Event()
        self.context = context
        self.futures: dict = {}  # future -> job key
        self.executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.jobs, mp_context=self.context, initializer=_worker_init,
                                   initargs=(self.tasks, self.threads, self.progress, self.stop))

    def start(self, key, config) -> None:
        with _sigint_held():
            self.futures[self.executor.submit(_worker_run, key, config)] = key

    def running(self) -> int:
        return len(self.futures)

    def _drain_progress(self) -> None:
        while True:
            try:
                self.on_tick(*self.progress.get_nowait())
            except queue.Empty:
                return

    def wait(self) -> list[tuple]:
        while True:
            done, _ = wait(self.futures, timeout=0.1, return_when=FIRST_COMPLETED)
            self._drain_progress()
            if done:
                break
        finished, broken = [], False
        for future in done:
            key = self.futures.pop(future)
            try:
                finished.append((key, future.result()))
            except BrokenProcessPool:
                broken = True
                finished.append((key, Outcome(error="its worker process died (a crash, or killed)")))
            except Exception as exc:  # e.g. a record that cannot be sent back
                finished.append((key, _failure(exc)))
        if broken:  # every run of the broken pool has failed; the next ones get fresh workers
            for key in self.futures.values():
                finished.append((key, Outcome(error="its worker process died (a crash, or killed)")))
            self.futures.clear()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._new_executor()
        return finished

    def close(self) -> None:
        """Stops the runs in progress (within ``TICK_EVERY`` steps) and the workers."""
        self.stop.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._drain_progress()
        self.futures.clear()
        self.progress.close()
        self.progress.join_thread()


Plan = Generator[list, list, object]


def execute(plans: Iterable[Plan], jobs: int, tasks: tuple[str, ...], datasets: dict, threads: int,
            on_start: Callable[[tuple, object], Outcome | None], on_tick: Callable[[tuple, int, int, float], None],
            on_finish: Callable[[tuple, object, Outcome], None]) -> list:
    """Runs ``plans`` to their end on ``jobs`` processes; returns their return values, in order.

    A job's key is ``(plan index, job number within the plan)``. ``on_start(key, job)`` may return an outcome
    to use instead of training (a finished run reused by ``--resume``); ``on_tick(key, step, total, accuracy)``
    reports progress; ``on_finish(key, job, outcome)`` is called once per job, in the main process, as it ends.
    ``tasks`` and ``datasets`` (by name): the data the jobs train on (workers load ``tasks`` themselves); ``threads``:
    torch's thread count in each worker. Ctrl-C (``KeyboardInterrupt``) stops the runs in progress and propagates.
    """
    plans = list(plans)
    values: list = [None] * len(plans)
    counts = [0] * len(plans)
    batches: dict[int, list] = {}  # plan index -> [jobs, outcomes, jobs still to finish]
    pending: list = []  # heap of (key, job)

    def advance(index: int, sent) -> None:
        while True:
            try:
                jobs_now = plans[index].send(sent)
            except StopIteration as stop:
                values[index] = stop.value
                return
            if jobs_now:
                break
            sent = []
        batches[index] = [jobs_now, [None] * len(jobs_now), len(jobs_now)]
        for job in jobs_now:
            heapq.heappush(pending, ((index, counts[index]), job))
            counts[index] += 1

    def finish(key, job, outcome) -> None:
        index, number = key
        on_finish(key, job, outcome)
        batch = batches[index]
        batch[1][number - (counts[index] - len(batch[0]))] = outcome
        batch[2] -= 1
        if batch[2] == 0:
            del batches[index]
            advance(index, batch[1])

    for index in range(len(plans)):
        advance(index, None)
    runner = _InProcess(datasets, on_tick) if jobs == 1 else _Workers(jobs, tasks, threads, on_tick)
    jobs_of: dict = {}
    try:
        while pending or runner.running():
            while pending and runner.running() < runner.jobs:
                key, job = heapq.heappop(pending)
                reused = on_start(key, job)
                if reused is not None:
                    finish(key, job, reused)
                    continue
                jobs_of[key] = job
                runner.start(key, job)
            if runner.running():
                for key, outcome in runner.wait():
                    finish(key, jobs_of.pop(key), outcome)
    finally:
        runner.close()
    return values
