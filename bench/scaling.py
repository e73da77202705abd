"""Scaling of optzoo's dist_sync kvstore on this machine (gloo over 127.0.0.1).

    .venv/bin/python bench/scaling.py [--steps 30] [--workers 1 2 4] [--hidden 256]

Prints steps/s (each worker on its own batch, Trainer(kvstore='dist_sync')) for 1, 2, 4 processes, and the
gradient bytes each worker puts on the wire per step with compression none / 2bit / 1bit. One thread per
process: on a machine with fewer cores than processes, steps/s measures contention, not the network.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, steps, hidden, compression, queue):
    import optzoo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    torch.manual_seed(rank)
    model = torch.nn.Sequential(torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    trainer = optzoo.Trainer(model, "sgd", {"learning_rate": 0.05, "momentum": 0.9}, kvstore="dist_sync",
                             compression_params=compression)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    warmup = 3
    for step in range(steps + warmup):
        if step == warmup:
            dist.barrier()
            start, sent0 = time.perf_counter(), trainer._kvstore.bytes_sent
        torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        trainer.step(64 * world)
    dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        queue.put((steps / elapsed, (trainer._kvstore.bytes_sent - sent0) / steps,
                   sum(p.numel() for p in model.parameters())))
    dist.destroy_process_group()


def run(world, steps, hidden, compression=None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_worker, args=(world, _free_port(), steps, hidden, compression, queue), nprocs=world,
                       start_method="spawn")
    return queue.get(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    print(f"MLP 784-{args.hidden}-10, batch 64 per worker, SGD momentum, gloo on 127.0.0.1")
    print(f"{'workers':>8} {'steps/s':>9} {'samples/s':>10}")
    for world in args.workers:
        rate, _, _ = run(world, args.steps, args.hidden)
        print(f"{world:>8} {rate:>9.1f} {rate * 64 * world:>10.0f}")
    print(f"\n{'compression':>12} {'bytes/step/worker':>18} {'ratio':>7} {'steps/s (2 workers)':>20}")
    base = None
    for name, params in (("none", None), ("2bit", {"type": "2bit", "threshold": 0.5}),
                         ("1bit", {"type": "1bit", "threshold": 0.0})):
        rate, sent, numel = run(2, args.steps, args.hidden, params)
        base = base or sent
        print(f"{name:>12} {sent:>18.0f} {base / sent:>6.1f}x {rate:>20.1f}")
    print(f"({numel} float32 parameters = {4 * numel} bytes of gradient per step)")


if __name__ == "__main__":
    main()
