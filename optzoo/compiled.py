"""``torch.compile`` support: an optzoo step is one PyTorch custom operator.

Dynamo cannot trace into the native C++ kernels, and the Python bookkeeping around every rule (per-parameter
update counts, MXNet's optimizer-wide schedules such as Nadam's momentum product or LBSGD's macro-batches, the
learning-rate scheduler) would become guarded constants that recompile the graph at every step. So
:class:`optzoo.TorchOptimizer` hands the whole step to one custom operator, ``optzoo::optimizer_step``, registered
with ``torch.library``: it declares the parameters it writes (``mutates_args``), has a fake kernel (no output, so
tracing needs no data), and runs the eager step, native kernel included, when the graph runs. A compiled
function that calls ``opt.step()`` is therefore one graph without breaks, and its result is the eager step's, bit
for bit. Hyperparameters and the learning rate are read from the param groups when the operator runs, not baked
into the graph, so a scheduler changing a 0-d tensor learning rate causes no recompilation (Dynamo guards on
the Python numbers of an optimizer's param groups: a changing float lr costs one recompilation, as for torch's
own optimizers).

The operator is opaque to Inductor: on CUDA the step runs as the eager ``torch._foreach`` path inside it (a few
kernels per rule), not fused into the surrounding graph. docs/native.md, "What runs where", has the details.
"""

from __future__ import annotations

import itertools
import weakref

import torch

__all__ = ["is_compiling", "optimizer_step", "register"]

#: True while Dynamo traces (torch >= 2.3); always False on older torch
is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)

_OPTIMIZERS: dict[int, weakref.ReferenceType] = {}
_HANDLES = itertools.count()


def register(optimizer) -> int:
    """A handle for ``optimizer`` (held weakly) that the compiled graph passes to the operator."""
    handle = next(_HANDLES)
    _OPTIMIZERS[handle] = weakref.ref(optimizer, lambda _, handle=handle: _OPTIMIZERS.pop(handle, None))
    return handle


def _optimizer_step(handle: int, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """One eager step of the :class:`optzoo.TorchOptimizer` registered as ``handle``, writing ``params`` (the
    parameters that have a gradient, in param-group order) from ``grads``. Its state is updated in place."""
    ref = _OPTIMIZERS.get(handle)
    optimizer = ref() if ref is not None else None
    if optimizer is None:
        raise RuntimeError(f"optzoo::optimizer_step: no live optimizer has handle {handle}")
    with torch.no_grad():
        optimizer._update(params, grads)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4; on older torch a compiled step is traced as Python
    optimizer_step = torch.library.custom_op("optzoo::optimizer_step", mutates_args=("params",))(_optimizer_step)

    @optimizer_step.register_fake
    def _optimizer_step_fake(handle, params, grads) -> None:
        return None
else:  # pragma: no cover - old torch
    optimizer_step = _optimizer_step
