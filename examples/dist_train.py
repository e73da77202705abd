"""Data-parallel training with optzoo's Gluon-style Trainer on torch.distributed (MXNet's dist_sync).

One machine, 2 processes (gloo on CPU, NCCL when CUDA is available)::

    torchrun --standalone --nproc-per-node=2 examples/dist_train.py --kvstore dist_sync

Several machines (run on each; node 0's address as the rendezvous endpoint)::

    torchrun --nnodes=2 --nproc-per-node=4 --node-rank=<0|1> --rdzv-backend=c10d \\
             --rdzv-endpoint=<node0-host>:29500 --rdzv-id=job1 examples/dist_train.py --kvstore dist_sync

Options: ``--kvstore dist_async`` (parameter server on rank 0), ``--compression 2bit|1bit``,
``--checkpoint DIR`` (saves every epoch; a restarted job resumes from it).

Every log line starts with ``[rank R/N]`` and is written with one ``write`` call, so lines of different workers
sharing a terminal or a pipe never interleave mid-line (``torchrun --tee 3`` or ``| sort -s -k1,1`` groups them).
"""

from __future__ import annotations

import argparse
import os

import torch

import optzoo
from optzoo import kvstore as kvs


def log(kv, message: str) -> None:
    """One rank-prefixed line in one system call: shorter than PIPE_BUF (4096 bytes), it reaches a pipe whole."""
    os.write(1, f"[rank {kv.rank}/{kv.num_workers}] {message}\n".encode()[:4096])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kvstore", default="dist_sync", choices=["dist_sync", "dist_device_sync", "dist_async"])
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--compression", choices=["2bit", "1bit"], default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()

    kv = kvs.create(args.kvstore, timeout=120)  # joins torchrun's process group
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    true_w = torch.randn(1, 20)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(device)
    compression = {"type": args.compression, "threshold": 0.5} if args.compression else None
    trainer = optzoo.Trainer(model, args.optimizer, {"learning_rate": args.lr}, kvstore=kv,
                             compression_params=compression)
    start_epoch = 0
    if args.checkpoint and os.path.exists(os.path.join(args.checkpoint, "model.pt")):
        model.load_state_dict(torch.load(os.path.join(args.checkpoint, "model.pt"), weights_only=True))
        trainer.load_states(os.path.join(args.checkpoint, "trainer.states"))
        start_epoch = torch.load(os.path.join(args.checkpoint, "epoch.pt"), weights_only=True) + 1

    gen = torch.Generator().manual_seed(1234 + kv.rank)  # each worker reads its own shard
    for epoch in range(start_epoch, args.epochs):
        total = 0.0
        for _ in range(50):
            x = torch.randn(args.batch_size, 20, generator=gen)
            y = torch.tanh(x @ true_w.T)
            loss = ((model(x.to(device)) - y.to(device)) ** 2).sum()
            loss.backward()
            trainer.step(args.batch_size * kv.num_workers)  # gradients are SUMMED over workers: global batch
            total += loss.item()
        log(kv, f"epoch {epoch}: mean loss {total / (50 * args.batch_size):.4f}")
        if args.checkpoint and kv.rank == 0 and args.kvstore != "dist_async":
            os.makedirs(args.checkpoint, exist_ok=True)
            trainer.save_states(os.path.join(args.checkpoint, "trainer.states"))
            torch.save(model.state_dict(), os.path.join(args.checkpoint, "model.pt"))
            torch.save(epoch, os.path.join(args.checkpoint, "epoch.pt"))
        kv.barrier()
    kv.close()


if __name__ == "__main__":
    main()
