"""Training small models on a dataset shipped with scikit-learn, with any optzoo optimizer.

Used by ``optzoo compare``. Updates go through ``optzoo.optimizer.get_updater`` (never torch.optim).
The data split is fixed; a run's seed fixes the initial weights, the batch
order and any noise the optimizer draws (SGLD), so a run is reproducible bit for bit on the same machine,
torch build and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..optimizer import create, get_updater
from .common import require

__all__ = ["MODELS", "Dataset", "RunConfig", "build_model", "load_digits", "train_run"]

MODELS = ("mlp", "cnn")


@dataclass
class Dataset:
    name: str
    description: str
    x_train: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: int


def load_digits(command: str = "compare", validation_fraction: float = 0.2) -> Dataset:
    """scikit-learn's handwritten digits (1797 8x8 grey images, 10 classes), split once (stratified, fixed seed)
    into training and validation sets; pixels scaled to [0, 1]."""
    datasets = require("sklearn.datasets", command)
    selection = require("sklearn.model_selection", command)
    bunch = datasets.load_digits()
    x_train, x_val, y_train, y_val = selection.train_test_split(
        bunch.images, bunch.target, test_size=validation_fraction, random_state=0, stratify=bunch.target)

    def images(a):
        return torch.as_tensor(a, dtype=torch.float32).unsqueeze(1) / 16.0

    return Dataset("digits", "scikit-learn load_digits: 1797 handwritten digits, 8x8 pixels, 10 classes",
                   images(x_train), torch.as_tensor(y_train, dtype=torch.int64),
                   images(x_val), torch.as_tensor(y_val, dtype=torch.int64), 10)


def build_model(kind: str, classes: int = 10) -> nn.Module:
    """``mlp``: 64-128-10 with ReLU. ``cnn``: two 3x3 conv + max-pool blocks (16, 32 channels) and a linear head."""
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, classes))
    if kind == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 2 * 2, classes))
    raise ValueError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run (its JSON identity)."""

    model: str
    optimizer: str
    params: tuple  # sorted (key, value) pairs: the optimizer's constructor arguments
    label: str
    seed: int
    epochs: int
    batch_size: int
    eval_every: int
    dataset: str = "digits"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["params"] = dict(self.params)
        return out

    def key(self) -> str:
        """A file-name-safe identifier."""
        safe = "".join(c if c.isalnum() or c in "-._=" else "_" for c in self.label)
        return f"{self.model}__{safe}__seed{self.seed}"


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(1) == y).float().mean().item()
    return loss, accuracy


def _set_mode(optimizer, updater, params, mode: str) -> None:
    """``optimizer.eval``/``train`` over the parameters that have a state, for optimizers with modes."""
    swap = getattr(optimizer, mode, None)
    if callable(swap):
        indices = [i for i in range(len(params)) if i in updater.states]
        swap([params[i].data for i in indices], [updater.states[i] for i in indices])


def train_run(config: RunConfig, data: Dataset, progress: Callable[[int, int, float | None], None] | None = None,
              ) -> dict:
    """Trains one model with one optimizer; returns the run record (curves, final metrics, wall time).

    ``progress(step, total_steps, last_validation_accuracy)`` is called after every step.
    """
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.classes)
    # optzoo's Updater drives the optimizer (MXNet's get_updater); optzoo.TorchOptimizer would do the same
    # arithmetic, but its first construction imports torch._dynamo (torch.optim's decorators), seconds of start-up.
    optimizer = create(config.optimizer, **dict(config.params))
    updater = get_updater(optimizer)
    params = list(model.parameters())
    indices = list(range(len(params)))
    batches = torch.Generator().manual_seed(config.seed)
    n = data.x_train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    curves = {"step": [], "epoch": [], "train_loss": [], "train_accuracy": [], "val_loss": [],
              "val_accuracy": []}

    running = [0.0, 0, 0]  # minibatch loss sum, correct predictions, samples since the last record

    def record(step):
        _set_mode(optimizer, updater, params, "eval")  # Schedule-Free is evaluated at its averaged weights
        try:
            return _record(step)
        finally:
            _set_mode(optimizer, updater, params, "train")

    def _record(step):
        # Training curves are the mean minibatch loss/accuracy since the previous point (as a training log
        # shows them); step 0 and the final point evaluate the whole training set.
        if running[2] == 0:
            train_loss, train_acc = _evaluate(model, data.x_train, data.y_train)
        else:
            train_loss, train_acc = running[0] / running[2], running[1] / running[2]
        running[:] = [0.0, 0, 0]
        val_loss, val_acc = _evaluate(model, data.x_val, data.y_val)
        for key, value in zip(curves, (step, step / steps_per_epoch, train_loss, train_acc, val_loss, val_acc)):
            curves[key].append(value)
        return math.isfinite(train_loss) and math.isfinite(val_loss)

    start = time.perf_counter()
    status, step = "ok", 0
    record(0)
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=batches)
        for first in range(0, n, config.batch_size):
            index = order[first:first + config.batch_size]
            logits = model(data.x_train[index])
            target = data.y_train[index]
            loss = nn.functional.cross_entropy(logits, target)
            model.zero_grad(set_to_none=True)
            loss.backward()
            updater(indices, [p.grad for p in params], [p.data for p in params])
            step += 1
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                status = "diverged"
                break
            running[0] += loss_value * len(index)
            running[1] += int((logits.detach().argmax(1) == target).sum())
            running[2] += len(index)
            if step % config.eval_every == 0 and step != total and not record(step):
                status = "diverged"
                break
            if progress is not None:
                progress(step, total, curves["val_accuracy"][-1])
        if status != "ok":
            break
    running[2] = 0
    record(step)  # final point: the whole training set with the final weights
    wall = time.perf_counter() - start
    final = {key: curves[key][-1] for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
    if status != "ok":
        final = {key: (value if math.isfinite(value) else None) for key, value in final.items()}
    return {
        "config": config.as_dict(),
        "status": status,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "final": final,
        "curves": curves,
        "wall_time_s": wall,
        "optimizer_repr": repr(optimizer),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def steps_to_target(record: dict, target: float) -> int | None:
    """The first evaluated step whose validation accuracy reaches ``target`` (None if it never does)."""
    for step, accuracy in zip(record["curves"]["step"], record["curves"]["val_accuracy"]):
        if accuracy is not None and accuracy >= target:
            return step
    return None
