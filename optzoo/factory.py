"""Creating an optimizer for a model by name, with the weight-decay grouping timm users know.

    opt = optzoo.create_optimizer(model, "lamb", lr=2e-3, weight_decay=0.02)

is ``optzoo.TorchOptimizer`` over two param groups: one with ``wd=weight_decay`` and one with ``wd=0`` for the
parameters that conventionally take no decay (biases and every other 1-D tensor: norm scales and shifts, and
whatever the model's ``no_weight_decay()`` names), which is the rule of timm's ``create_optimizer_v2`` /
``param_groups_weight_decay``. The result is a real ``torch.optim.Optimizer``: torch schedulers, Lightning's
``configure_optimizers`` and ``transformers.Trainer(optimizers=(opt, sched))`` take it as it is.

The decay is optzoo's (MXNet's) ``wd`` of the chosen optimizer: an L2 term added to the gradient for most rules,
decoupled for AdamW (as MXNet defines each one; docs/torch_optim.md lists the differences from torch.optim).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection

import torch

from .optimizer.validation import check_real
from .torch_optimizer import TorchOptimizer

__all__ = ["create_optimizer", "param_groups_weight_decay"]


def _model_no_decay(model: torch.nn.Module) -> set[str]:
    method = getattr(model, "no_weight_decay", None)
    if not callable(method):
        return set()
    names = method()
    if isinstance(names, str) or not isinstance(names, Collection):
        raise TypeError(f"{type(model).__name__}.no_weight_decay() must return a collection of parameter names, "
                        f"got {names!r}")
    return set(names)


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float,
                              no_weight_decay: Collection[str] | Callable[[str, torch.nn.Parameter], bool] = (),
                              exclude_1d: bool = True) -> list[dict]:
    """``[{"params": decayed, "wd": weight_decay}, {"params": not_decayed, "wd": 0.0}]`` (empty groups dropped).

    A trainable parameter goes to the no-decay group when it is 1-D or a scalar (``exclude_1d``), when its name
    matches one of ``no_weight_decay`` (exact names or ``fnmatch`` patterns such as ``"*.pos_embed"``; or a
    callable ``(name, param) -> bool``), or when the model's own ``no_weight_decay()`` names it. Parameters with
    ``requires_grad=False`` are left out, as torch's and timm's factories do.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_real("weight_decay", weight_decay, 0.0)
    if callable(no_weight_decay):
        excluded = no_weight_decay
    else:
        if isinstance(no_weight_decay, str) or not isinstance(no_weight_decay, Collection):
            raise TypeError(f"no_weight_decay must be a collection of names/patterns or a callable, "
                            f"got {no_weight_decay!r}")
        patterns = set(no_weight_decay) | _model_no_decay(model)

        def excluded(name, _param):
            return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if (exclude_1d and param.ndim <= 1) or excluded(name, param):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "wd": float(weight_decay)}, {"params": no_decay, "wd": 0.0}]
    return [group for group in groups if group["params"]]


def create_optimizer(model: torch.nn.Module, name: str, lr: float | None = None, weight_decay: float = 0.0,
                     *, no_weight_decay: Collection[str] | Callable = (), filter_bias_and_bn: bool = True,
                     **optimizer_params) -> TorchOptimizer:
    """A :class:`optzoo.TorchOptimizer` named ``name`` over ``model``'s parameters, timm-style.

    Args:
        model: the module whose trainable parameters are optimized.
        name: a registered optimizer (``optzoo list`` prints them), case-insensitive.
        lr: the learning rate (``learning_rate`` in optzoo's MXNet names); ``None``: the optimizer's default.
        weight_decay: ``wd`` for the decayed group.
        no_weight_decay: names or patterns (or a callable) kept free of decay, besides 1-D tensors.
        filter_bias_and_bn: put biases and other 1-D tensors (norm layers) in a ``wd=0`` group (timm's name for
            the switch); ``False``: every parameter in one group with ``weight_decay`` unless named.
        **optimizer_params: the optimizer's other arguments, MXNet names (``momentum``, ``beta1``, ...).
    """
    if "learning_rate" in optimizer_params:
        if lr is not None:
            raise ValueError("create_optimizer: pass lr or learning_rate, not both")
        lr = optimizer_params.pop("learning_rate")
    if "wd" in optimizer_params:
        raise ValueError("create_optimizer: pass weight_decay (applied per group), not wd")
    if not isinstance(filter_bias_and_bn, bool):
        raise TypeError(f"filter_bias_and_bn must be a bool, got {filter_bias_and_bn!r}")
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay, exclude_1d=filter_bias_and_bn)
    if not groups:
        raise ValueError(f"create_optimizer: {type(model).__name__} has no trainable parameters")
    if lr is not None:
        optimizer_params["learning_rate"] = lr
    return TorchOptimizer(groups, name, wd=float(weight_decay), **optimizer_params)
