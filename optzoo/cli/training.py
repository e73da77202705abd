"""Training small models on embedded data sets, with any optzoo optimizer.

Used by ``optzoo compare``. The tasks (``TASKS``): an MLP and a CNN on scikit-learn's handwritten digits, and
sparse high-dimensional logistic regression on a data set generated here, deterministically (no download).
Updates go through ``optzoo.optimizer.get_updater`` (never torch.optim). The data split is fixed; a run's seed
fixes the initial weights, the batch order and any noise the optimizer draws (SGLD), so a run is reproducible
bit for bit on the same machine, torch build and thread count.
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

__all__ = ["MODELS", "SAMPLERS", "TASKS", "Dataset", "RunConfig", "Task", "build_model", "load_digits",
           "load_sparse_logreg", "load_task_data", "time_to_target", "train_run"]

MODELS = ("mlp", "cnn", "sparse")
#: optimizers that sample weights rather than minimise the loss: their runs also report the accuracy of the
#: posterior mean prediction (the softmax averaged over the samples of the second half of training)
SAMPLERS = frozenset({"sgld"})


@dataclass(frozen=True)
class Task:
    """One embedded task of ``optzoo compare``: a model on a data set, with its default target accuracy."""

    name: str
    dataset: str
    description: str
    target_accuracy: float


TASKS: dict[str, Task] = {
    "mlp": Task("mlp", "digits", "MLP 64-128-10 on scikit-learn's digits", 0.9),
    "cnn": Task("cnn", "digits", "CNN (two conv blocks) on scikit-learn's digits", 0.9),
    "sparse": Task("sparse", "sparse-logreg", "logistic regression on 2,000 sparse binary features (generated)",
                   0.75),
}


@dataclass
class Dataset:
    name: str
    description: str
    x_train: torch.Tensor  # digits: (N, 1, 8, 8) float32 in [0, 1]; sparse: (N, 20) int64 feature indices
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


SPARSE_FEATURES, SPARSE_ACTIVE = 2000, 20


def load_sparse_logreg(samples: int = 6000, validation_fraction: float = 0.2) -> Dataset:
    """Sparse high-dimensional logistic regression, generated deterministically (numpy's PCG64, fixed seed).

    Each sample switches on 20 of 2,000 binary features drawn with Zipf-like popularity (feature j has
    probability proportional to 1/(j + 10)), so a few features are frequent and most are rare. A fifth of the
    features carry a weight drawn from N(0, 2.5²) (the 20 most frequent carry none); the label is drawn from
    the logistic model on the sum of the active weights. The Bayes classifier reaches about 85% validation
    accuracy, a tuned L2 logistic regression about 78%. Rare informative features are where per-coordinate
    rates (AdaGrad, FTRL) and lazy sparse updates help.
    """
    import numpy as np

    rng = np.random.default_rng(20240)
    popularity = 1.0 / (np.arange(SPARSE_FEATURES) + 10.0)
    features = rng.choice(SPARSE_FEATURES, size=(samples, SPARSE_ACTIVE), p=popularity / popularity.sum())
    weights = rng.normal(0.0, 2.5, SPARSE_FEATURES) * (rng.random(SPARSE_FEATURES) < 0.2)
    weights[:20] = 0.0
    logits = weights[features].sum(axis=1)
    labels = (rng.random(samples) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    n_train = samples - round(samples * validation_fraction)
    x, y = torch.as_tensor(features, dtype=torch.int64), torch.as_tensor(labels)
    return Dataset("sparse-logreg", f"generated sparse logistic regression: {samples} samples, {SPARSE_ACTIVE} of "
                   f"{SPARSE_FEATURES} binary features active each, 2 classes", x[:n_train], y[:n_train],
                   x[n_train:], y[n_train:], 2)


def load_task_data(task: str, command: str = "compare") -> Dataset:
    """The data set of a task in ``TASKS``."""
    return load_digits(command) if TASKS[task].dataset == "digits" else load_sparse_logreg()


class SparseLinear(nn.Module):
    """A linear model over binary feature indices: ``EmbeddingBag(sum, sparse=True)`` plus a bias, zero-initialised
    (logistic regression is convex). Its weight gets a sparse gradient holding only the features present in the
    minibatch, so optimizers with lazy updates touch only those rows."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.weight = nn.EmbeddingBag(features, classes, mode="sum", sparse=True)
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.weight(indices) + self.bias


def build_model(kind: str, classes: int = 10) -> nn.Module:
    """``mlp``: 64-128-10 with ReLU. ``cnn``: two 3x3 conv + max-pool blocks (16, 32 channels) and a linear head.
    ``sparse``: ``SparseLinear`` over ``SPARSE_FEATURES`` binary features."""
    if kind == "sparse":
        return SparseLinear(SPARSE_FEATURES, classes)
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
    tuning: bool = False  # a run of a learning-rate search (its file name then carries the learning rate)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["params"] = dict(self.params)
        return out

    def key(self) -> str:
        """A file-name-safe identifier."""
        safe = "".join(c if c.isalnum() or c in "-._=" else "_" for c in self.label)
        lr = dict(self.params).get("learning_rate")
        return f"{self.model}__{safe}__seed{self.seed}" + (f"__lr{lr:g}" if self.tuning and lr is not None else "")


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
    curves = {"step": [], "epoch": [], "time_s": [], "train_loss": [], "train_accuracy": [], "val_loss": [],
              "val_accuracy": []}
    sampler = config.optimizer in SAMPLERS
    posterior = {"probabilities": None, "samples": 0}  # the softmax summed over the second half's evaluations
    running = [0.0, 0, 0]  # minibatch loss sum, correct predictions, samples since the last record
    clock = [0.0, None]  # training seconds so far (evaluations excluded), start of the current stretch

    def record(step):
        _set_mode(optimizer, updater, params, "eval")  # Schedule-Free is evaluated at its averaged weights
        try:
            return _record(step)
        finally:
            _set_mode(optimizer, updater, params, "train")

    def _record(step):
        # Training curves are the mean minibatch loss/accuracy since the previous point (as a training log
        # shows them); step 0 and the final point evaluate the whole training set.
        if clock[1] is not None:
            clock[0] += time.perf_counter() - clock[1]
        if running[2] == 0:
            train_loss, train_acc = _evaluate(model, data.x_train, data.y_train)
        else:
            train_loss, train_acc = running[0] / running[2], running[1] / running[2]
        running[:] = [0.0, 0, 0]
        val_loss, val_acc = _evaluate(model, data.x_val, data.y_val)
        if sampler and step > total // 2:
            with torch.no_grad():
                probabilities = torch.softmax(model(data.x_val), dim=1)
            if torch.isfinite(probabilities).all():
                posterior["probabilities"] = probabilities + (0 if posterior["samples"] == 0
                                                              else posterior["probabilities"])
                posterior["samples"] += 1
        values = (step, step / steps_per_epoch, clock[0], train_loss, train_acc, val_loss, val_acc)
        for key, value in zip(curves, values):
            curves[key].append(value)
        clock[1] = time.perf_counter()
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
    with torch.no_grad():
        weights = torch.cat([p.detach().flatten() for p in params])
    final["nonzero_weights"] = float((weights != 0).float().mean())
    if sampler:
        mean = posterior["probabilities"]
        final["posterior_mean_val_accuracy"] = (
            None if mean is None else float((mean.argmax(1) == data.y_val).float().mean()))
        final["posterior_samples"] = posterior["samples"]
    return {
        "config": config.as_dict(),
        "status": status,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "final": final,
        "curves": curves,
        "wall_time_s": wall,
        "train_time_s": clock[0],
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


def time_to_target(record: dict, target: float) -> float | None:
    """Training seconds (evaluations excluded) until the first evaluation reaching ``target`` (None: never)."""
    curves = record["curves"]
    for seconds, accuracy in zip(curves.get("time_s", ()), curves["val_accuracy"]):
        if accuracy is not None and accuracy >= target:
            return seconds
    return None
