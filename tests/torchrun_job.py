"""A worker script for tests/test_torchrun.py, launched by ``torchrun`` (``python -m torch.distributed.run``).

``parity OUT NAMES MODES``: every optimizer in ``NAMES`` (comma-separated) through every mode (``fsdp``, ``ddp``,
``zero``) on test_sharding.py's model and batches; rank r writes ``OUT/rank<r>.pt`` with the snapshots.

``train OUT NAME STEPS``: FSDP2 + ``NAME``, a DCP checkpoint every ``--save-every`` steps (the ``latest`` pointer
moves only once a checkpoint is complete), resuming from ``latest`` when there is one; each rank records its pid
and its progress (``OUT/pid<r>``, ``OUT/progress<r>``) so that a test can kill it mid-run; rank 0 writes the final
snapshot to ``OUT/final.pt``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_sharding as harness  # the model, the batches and the modes of the spawn harness

import optzoo


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def parity(args, rank, world):
    names, modes = args.names.split(","), tuple(args.modes.split(","))
    result = harness.parity_job(rank, world, args.out, names, modes)
    torch.save(result, os.path.join(args.out, f"rank{rank}.pt"))


def train(args, rank, world):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    _write(os.path.join(args.out, f"pid{rank}"), str(os.getpid()))
    model = harness.fsdp(harness.make_model(args.name))
    opt = optzoo.TorchOptimizer(model.parameters(), args.name, **harness.kwargs_of(args.name))
    latest, start = os.path.join(args.out, "latest"), 0
    if os.path.exists(latest):
        start = int(open(latest).read())
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        dcp.load(state, checkpoint_id=os.path.join(args.out, f"step{start}"))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
    for step in range(start, args.steps):
        harness.train(model, opt, 1, rank, world, first=step)
        _write(os.path.join(args.out, f"progress{rank}"), str(step + 1))
        if (step + 1) % args.save_every == 0:
            state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
            dcp.save(state, checkpoint_id=os.path.join(args.out, f"step{step + 1}"))
            dist.barrier()  # every rank has written its part
            if rank == 0:
                _write(latest, str(step + 1))
        time.sleep(args.pause)
    snapshot = harness.snapshot(model, harness.torch_states(opt, list(model.parameters())))
    if rank == 0:
        torch.save({"snapshot": snapshot, "resumed_from": start}, os.path.join(args.out, "final.pt"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("job", choices=["parity", "train"])
    parser.add_argument("out")
    parser.add_argument("--names", default="adam")
    parser.add_argument("--modes", default="fsdp,ddp,zero")
    parser.add_argument("--name", default="lamb")
    parser.add_argument("--steps", type=int, default=harness.STEPS)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between steps (time to kill a worker)")
    parser.add_argument("--timeout", type=float, default=30.0, help="the process group's timeout, seconds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    try:
        (parity if args.job == "parity" else train)(args, dist.get_rank(), dist.get_world_size())
        dist.barrier()  # tear down together: a rank that closed its group while a peer still wrote its final
        # snapshot aborted at exit once ("terminate called without an active exception", CI on 2026-12-05)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
