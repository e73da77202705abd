"""Scaling of optzoo's dist_sync kvstore on this machine (gloo over 127.0.0.1).

    .venv/bin/python bench/scaling.py [--steps 30] [--workers 1 2 4] [--bytes-workers 2 4 8] [--hidden 256]

Prints steps/s (each worker on its own batch, Trainer(kvstore='dist_sync')) for 1, 2, 4 processes, then, for
2, 4 and 8 processes and compression none / 2bit / 1bit, the bytes each worker sends and receives per step:

* *measured*: what each process wrote to its sockets during the timed steps (``wchar`` of ``/proc/self/io``:
  gloo's TCP transport sends every byte with ``writev``), so framing and the algorithm's real routing are
  included; the largest worker's figure is shown. Every byte sent is received by another worker, so the mean
  received per worker is the mean sent (gloo's reads are not counted by ``rchar``);
* *payload*: the kvstore's own ``bytes_sent``/``bytes_received`` (the gradient data by the algorithm's
  arithmetic: a ring all-reduce moves 2 (N-1)/N of the tensor each way).

One thread per process: on a machine with fewer cores than processes, steps/s measures contention, not the
network; the byte counts do not depend on it.
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


def _written() -> int:
    """Bytes written by this process's system calls so far (Linux; 0 elsewhere)."""
    try:
        fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
        return int(fields["wchar"])
    except (OSError, KeyError, ValueError):
        return 0


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
            kv = trainer._kvstore
            start, sent0, received0 = time.perf_counter(), kv.bytes_sent, kv.bytes_received
            written0 = _written()
        torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        trainer.step(64 * world)
    written = _written() - written0
    elapsed = time.perf_counter() - start
    dist.barrier()
    queue.put({"rate": steps / elapsed, "sent": (kv.bytes_sent - sent0) / steps,
               "received": (kv.bytes_received - received0) / steps, "wire_sent": written / steps,
               "numel": sum(p.numel() for p in model.parameters())})
    trainer._kvstore.close()
    if dist.is_initialized():
        dist.destroy_process_group()


def run(world, steps, hidden, compression=None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_worker, args=(world, _free_port(), steps, hidden, compression, queue), nprocs=world,
                       start_method="spawn")
    results = [queue.get(timeout=300) for _ in range(world)]
    merged = {k: max(r[k] for r in results) for k in results[0]}
    merged["rate"] = min(r["rate"] for r in results)
    merged["wire_received"] = sum(r["wire_sent"] for r in results) / world
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--bytes-workers", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    print(f"MLP 784-{args.hidden}-10, batch 64 per worker, SGD momentum, gloo on 127.0.0.1")
    print(f"{'workers':>8} {'steps/s':>9} {'samples/s':>10}")
    for world in args.workers:
        rate = run(world, args.steps, args.hidden)["rate"]
        print(f"{world:>8} {rate:>9.1f} {rate * 64 * world:>10.0f}")
    print("\nbytes per worker per step (measured on the sockets / kvstore payload); x: plain all-reduce / this")
    print(f"{'workers':>8} {'compression':>12} {'sent':>10} {'received':>10} {'payload sent':>13} "
          f"{'payload recv':>13} {'x sent':>7}")
    for world in args.bytes_workers:
        base = None
        for name, params in (("none", None), ("2bit", {"type": "2bit", "threshold": 0.5}),
                             ("1bit", {"type": "1bit", "threshold": 0.0})):
            r = run(world, max(5, args.steps // 3), args.hidden, params)
            base = base or r["wire_sent"]
            print(f"{world:>8} {name:>12} {r['wire_sent']:>10.0f} {r['wire_received']:>10.0f} {r['sent']:>13.0f} "
                  f"{r['received']:>13.0f} {base / max(r['wire_sent'], 1):>6.1f}x")
    print(f"({r['numel']} float32 parameters = {4 * r['numel']} bytes of gradient per step)")


if __name__ == "__main__":
    main()
