"""The harness of the tests that run several gloo processes (tests/test_distributed.py, tests/test_sharding.py).

``run_job(module, job, world, outdir)`` spawns ``world`` processes that each call
``module.job(rank, world, outdir, *args)`` with one torch thread and save its result; every job is bounded in time
(the processes are killed past ``job_timeout``) and a rank's traceback becomes the test's failure message.
"""

from __future__ import annotations

import datetime
import importlib
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, module, job, world, port, outdir, timeout, args, init):
    torch.set_num_threads(1)
    try:
        if init:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout))
        else:  # as torchrun would: the job (the kvstore) creates the process group from the environment
            os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        result = getattr(importlib.import_module(module), job)(rank, world, outdir, *args)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(outdir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_job(module: str, job: str, world: int, outdir, *, args=(), timeout: float = 60.0, expect_fail: tuple = (),
            init: bool = True, job_timeout: float = 300.0) -> tuple[dict, float]:
    """Runs ``module.job`` on ``world`` processes; ``({rank: result}, seconds)``. ``timeout``: the process
    group's; ranks in ``expect_fail`` may die: their result is their traceback (``None`` if they wrote none).
    ``init=False``: the job creates the process group (from torchrun's variables)."""
    outdir = str(outdir)
    os.makedirs(outdir, exist_ok=True)
    start = time.monotonic()
    ctx = mp.start_processes(_entry, args=(module, job, world, free_port(), outdir, timeout, args, init),
                             nprocs=world, join=False, start_method="spawn")
    while any(p.is_alive() for p in ctx.processes):
        if time.monotonic() - start > job_timeout:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed job {job!r} did not finish within {job_timeout} s")
        time.sleep(0.1)
    seconds = time.monotonic() - start
    results = {}
    for rank in range(world):
        err = os.path.join(outdir, f"rank{rank}.err")
        if rank in expect_fail:
            results[rank] = open(err).read() if os.path.exists(err) else None
            continue
        if os.path.exists(err):
            pytest.fail(f"rank {rank} of job {job!r} failed:\n{open(err).read()}")
        results[rank] = torch.load(os.path.join(outdir, f"rank{rank}.pt"), weights_only=False)
    return results, seconds
