"""An optzoo optimizer inside PyTorch Lightning: train, checkpoint, get killed, resume.

    python examples/lightning_train.py --out /tmp/lt                     # 3 epochs, checkpoint every epoch
    python examples/lightning_train.py --out /tmp/lt --die-at-epoch 1    # killed (SIGKILL) at epoch 1's start
    python examples/lightning_train.py --out /tmp/lt --resume            # continues from the last checkpoint

``configure_optimizers`` returns ``optzoo.create_optimizer(...)`` (a real ``torch.optim.Optimizer``: LAMB with
timm-style no-decay groups) and a torch ``StepLR`` stepped every batch; Lightning checkpoints and restores both.
The final weights are written to ``OUT/weights.pt``; a resumed run ends with the same weights, bit for bit, as an
uninterrupted one (tests/test_frameworks.py checks it).
"""

from __future__ import annotations

import argparse
import os
import signal
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import optzoo


class Regressor(L.LightningModule):
    def __init__(self, optimizer: str = "lamb", lr: float = 0.01):
        super().__init__()
        self.optimizer_name, self.lr = optimizer, lr
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = optzoo.create_optimizer(self, self.optimizer_name, lr=self.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class DieAtEpoch(L.Callback):
    """Kills the process with SIGKILL (no clean-up, as a preempted job dies) when an epoch starts."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(96, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--optimizer", default="lamb")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--die-at-epoch", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = Regressor(args.optimizer)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=args.out / "ckpt", save_last=True, every_n_epochs=1,
                                               save_top_k=-1)
    callbacks = [ckpt] + ([DieAtEpoch(args.die_at_epoch)] if args.die_at_epoch is not None else [])
    trainer = L.Trainer(max_epochs=args.epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1, callbacks=callbacks, default_root_dir=args.out)
    trainer.fit(model, data(), ckpt_path=str(args.out / "ckpt" / "last.ckpt") if args.resume else None)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out / "weights.pt")
    print(f"trained {trainer.global_step} steps with {type(trainer.optimizers[0]).__name__}"
          f"({trainer.optimizers[0].optimizer!r})")


if __name__ == "__main__":
    main()
