"""A Gluon training loop on PyTorch: optzoo.Trainer on scikit-learn's handwritten digits.

The MXNet original differs only in imports, the model definition and two spellings:

    MXNet Gluon                                        PyTorch + optzoo
    net.collect_params()                               net (or dict(net.named_parameters()))
    with autograd.record(): loss = loss_fn(net(x), y)  loss = loss_fn(net(x), y)
    loss.backward()                                    loss.sum().backward()
    trainer.step(batch_size)                           trainer.step(batch_size)

No ``zero_grad`` is needed: as in Gluon, every backward overwrites the gradients (``grad_req='write'``).

Run: python examples/gluon_style.py   (about 10 seconds on 2 CPU cores; prints the loss per epoch and the
test accuracy, about 0.98)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from optzoo import Trainer, lr_scheduler


def load_data():
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:1500], order[1500:]
    return (images[train], labels[train]), (images[test], labels[test])


def main(epochs: int = 10, batch_size: int = 50) -> float:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a small model: more threads only add overhead
    (x_train, y_train), (x_test, y_test) = load_data()

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, kernel_size=3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    for name, param in net.named_parameters():  # Gluon's per-parameter multipliers, read at every step
        if name.endswith("bias"):
            param.wd_mult = 0.0

    steps = epochs * (len(y_train) // batch_size)
    schedule = lr_scheduler.CosineScheduler(max_update=steps, base_lr=0.1, final_lr=0.001, warmup_steps=30)
    trainer = Trainer(net, "sgd", {"momentum": 0.9, "wd": 1e-4, "lr_scheduler": schedule})
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")  # per-sample losses, like Gluon's loss blocks

    for epoch in range(epochs):
        order = torch.randperm(len(y_train))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            data, label = x_train[idx], y_train[idx]
            loss = loss_fn(net(data), label)
            loss.sum().backward()
            trainer.step(data.shape[0])
            total += loss.sum().item()
        print(f"epoch {epoch + 1:2d}  loss {total / len(y_train):.4f}  lr {trainer.learning_rate:.4f}")

    with torch.no_grad():
        accuracy = (net(x_test).argmax(dim=1) == y_test).float().mean().item()
    print(f"test accuracy {accuracy:.3f}")

    # Checkpoints: atomic, keyed by parameter name, no pickle; a resumed run continues bit-identically.
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_states(Path(tmp) / "digits.states")
        trainer.load_states(Path(tmp) / "digits.states")
    return accuracy


if __name__ == "__main__":
    main()
