"""A step whose tensor arithmetic ``torch.compile`` traces: the path Inductor can fuse (on CUDA, a few kernels).

The eager fast paths round every per-step scalar in Python, as MXNet does (``f32(lr * sqrt(1 - beta2^t) /
(1 - beta1^t))``...). Traced as they are, those Python numbers would become constants of the graph, and every new
learning rate or update count a new graph. :class:`TracedStep` splits a step in two (``Optimizer._foreach_parts``):

* the bookkeeping, eager and in Python: update counts, learning rates and multipliers, and the per-step scalars
  the rule names in ``_step_scalars`` (MXNet's rounding exactly as the eager path);
* the tensor arithmetic (``sgd_foreach``, ``adam_foreach``...), compiled once, taking those scalars as float32
  tensors: one 0-d tensor when every parameter shares it (the usual case), a vector otherwise. Hyperparameters
  (momentum, betas, epsilon, weight decay) stay constants of the graph: changing one compiles again, as for
  torch's own compiled optimizers.

The rules split so are the element-wise ones: SGD, NAG, Adam, AdamW, AdaBelief, Adamax, Nadam (its per-update
momentum schedule as per-tensor factors), RMSProp (plain and centered) and Lion; the others keep one opaque step
(the ``optzoo::optimizer_step`` operator of :mod:`optzoo.compiled`). Inductor fuses the arithmetic its own way,
and a traced Nadam multiplies by reciprocals where the eager step divides (as the native kernel does), so a traced
step agrees with the eager one to rounding (a few float32 ulps), not bit for bit. Speed on the CPU: docs/native.md,
"Traced steps".

Example::

    opt = optzoo.optimizer.create("adam", learning_rate=1e-3, impl="foreach")
    step = TracedStep(opt)
    step.update(indices, weights, grads, states)  # as opt.update
"""

from __future__ import annotations

import operator

import torch

from .base import Optimizer

__all__ = ["TracedStep", "supports_tracing"]


def supports_tracing(optimizer: Optimizer) -> bool:
    """Whether ``optimizer``'s rule splits into Python scalars and traceable tensor arithmetic."""
    return bool(optimizer._step_scalars) and type(optimizer)._foreach_parts is not Optimizer._foreach_parts


def _as_tensor(values, device, vector: bool) -> torch.Tensor:
    """Per-tensor scalars as float32 on ``device`` (rounded once to nearest, as :func:`~optzoo.optimizer.base.f32`
    rounds): a vector if ``vector`` or if they differ, else one 0-d tensor."""
    values = list(values)
    if not vector and values.count(values[0]) == len(values):
        values = values[0]
    return torch.tensor(values, dtype=torch.float32, device=device)


#: Inductor settings of a traced step's graph (``torch.compile(options=...)``: for this graph only; a user's
#: ``options`` override them). ``size_asserts``: the generated wrapper re-asserts every input's sizes and strides
#: (three per tensor, ~0.4 us each), which Dynamo's guards have checked already. ``cpp.min_chunk_size``: a tensor
#: whose loop gives each thread fewer values than this runs on one thread; Inductor's 512 splits ResNet's 1,024-
#: and 2,048-value vectors too, each split ending in a barrier that costs more than the loop.
INDUCTOR_OPTIONS = {"size_asserts": False, "cpp.min_chunk_size": 2048}


def _smallest_first(weights) -> list[int]:
    """The entries ordered by size, smallest first. Inductor's CPU kernel opens its OpenMP region at the first loop
    worth splitting among threads; a one-thread loop after that runs as ``omp single``, whose implicit barrier
    costs more than a small loop. Smallest first, every one-thread loop runs before the region (no barrier) and
    the region holds only the split loops (one barrier each)."""
    return sorted(range(len(weights)), key=[w.numel() for w in weights].__getitem__)


def _reordered(value, order: list[int], pick=None):
    """``value`` in ``order`` when it is a per-tensor list (tensors, states, scalars), else as it is (a rule hands its
    per-tensor values over as lists; a hyperparameter tuple such as ``betas`` is never reordered). ``pick``:
    ``operator.itemgetter(*order)``, where ``order`` has two or more entries."""
    if type(value) is list and len(value) == len(order):
        return list(pick(value)) if pick is not None else [value[i] for i in order]
    return value


class TracedStep:
    """:meth:`update` is ``optimizer.update`` with the rule's tensor arithmetic compiled by ``torch.compile``
    (``compile_options`` are passed to it; its ``options`` start from :data:`INDUCTOR_OPTIONS` unless a ``mode`` is
    given). Dense gradients only, no ``multi_precision`` master copies."""

    def __init__(self, optimizer: Optimizer, **compile_options):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"TracedStep expects an optzoo optimizer, got {type(optimizer).__name__}")
        if not supports_tracing(optimizer):
            raise ValueError(f"{type(optimizer).__name__} has no traceable foreach arithmetic; traced steps exist "
                             "for SGD, NAG, Adam, AdamW, AdaBelief, Adamax, Nadam, RMSProp and Lion")
        self.optimizer = optimizer
        if "mode" not in compile_options:  # torch.compile takes a mode or options, not both
            compile_options["options"] = {**INDUCTOR_OPTIONS, **(compile_options.get("options") or {})}
        self._compile_options = compile_options
        self._compiled: dict = {}  # arithmetic function -> its compiled form
        # the scalars once handed over as vectors stay vectors when their values happen to coincide (Nadam's
        # 1 - m_schedule all reach 1.0), so that the graph compiled for vectors is not compiled again for 0-d
        self._vectors: set[str] = set()
        # the last step's weights (their ids) and the order of _smallest_first with its itemgetter: the same
        # weights come every step. A stale order (a weight of that id reshaped since) is a valid order all the same:
        # every list is reordered alike and the arithmetic is per tensor; only the thread barriers may cost more.
        self._order_for: tuple = ()
        self._order: tuple[list[int], object] = ([], None)

    def update(self, indices, weights, grads, states) -> None:
        """Updates ``weights`` and ``states`` in place, as ``optimizer.update(indices, weights, grads, states)``."""
        opt = self.optimizer
        if not isinstance(indices, (list, tuple)):
            indices, weights, grads, states = [indices], [weights], [grads], [states]
        indices, weights, grads, states = list(indices), list(weights), list(grads), list(states)
        if not opt._check_inputs(indices, weights, grads, states):  # the usual case has neither of these
            if any(g.is_sparse for g in grads):
                raise ValueError("TracedStep takes dense gradients only; pass grad.to_dense() or use optimizer.update")
            if len(set(map(id, weights))) != len(weights):
                raise ValueError("TracedStep: a weight is listed twice; use optimizer.update, which updates it twice")
        if not weights:
            return
        opt._update_count(indices)
        lrs, wds = opt._get_lrs(indices), opt._get_wds(indices)
        ts = [opt._index_update_count[i] for i in indices]
        fn, args, kwargs = opt._foreach_parts(weights, grads, states, lrs, wds, ts)
        # the bookkeeping ran in update order (Nadam's shared schedule depends on it); the arithmetic is per tensor,
        # so the graph takes the tensors smallest first (see _smallest_first)
        ids = tuple(map(id, weights))
        if ids != self._order_for:
            order = _smallest_first(weights)
            self._order_for, self._order = ids, (order, operator.itemgetter(*order) if len(order) > 1 else None)
        order, pick = self._order
        args = tuple(_reordered(arg, order, pick) for arg in args)
        kwargs = {name: _reordered(value, order, pick) for name, value in kwargs.items()}
        for name in opt._step_scalars:
            kwargs[name] = _as_tensor(kwargs[name], weights[0].device, name in self._vectors)
            if kwargs[name].dim():
                self._vectors.add(name)
        compiled = self._compiled.get(fn)
        if compiled is None:
            compiled = self._compiled[fn] = torch.compile(fn, **self._compile_options)
        with torch.no_grad():
            compiled(*args, **kwargs)
