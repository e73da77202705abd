"""Gluon / Module parameter names -> a ``torch.nn.Module``'s ``state_dict`` keys.

Rules, in order (the first that applies to a file decides):

1. ``mapping``: a dict ``{mxnet_name: torch_key}`` or a callable ``mxnet_name -> torch_key`` (``None``: skip
   the name). Names in a dict are looked up with and without their ``arg:``/``aux:`` prefix.
2. Structural names (MXNet 2.0 ``save_parameters``, 1.x ``save_parameters``: ``0.weight``, ``features.3.bias``)
   are used as they are when the torch module mirrors the Gluon block; Gluon's BatchNorm names
   (``gamma``, ``beta``, ``running_mean``, ``running_var``) become torch's (``weight``, ``bias``, same, same).
3. Prefixed names (``save_checkpoint`` / ``export``: ``arg:dense0_weight``, ``aux:batchnorm0_moving_mean``):
   ``<layer>_<param>`` is split at the parameter suffix (``weight``, ``bias``, ``gamma``, ``beta``,
   ``running_mean``/``moving_mean``, ``running_var``/``moving_var``), the parameter renamed as in rule 2, and
   the layers, in the order they first appear in the file (MXNet writes them in graph order), are paired with
   the torch submodules that hold parameters, in registration order. The pairing is only used when the
   counts agree and every pair has the same parameter names and shapes; otherwise a dict mapping is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["SUFFIXES", "strip_prefix", "torch_param_name", "resolve_names"]

#: Gluon parameter suffix -> torch parameter name
SUFFIXES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "running_mean": "running_mean",
            "running_var": "running_var", "moving_mean": "running_mean", "moving_var": "running_var"}


def strip_prefix(name: str) -> str:
    return name[4:] if name.startswith(("arg:", "aux:")) else name


def torch_param_name(name: str) -> str:
    """``1.gamma`` -> ``1.weight`` (rule 2)."""
    head, _, last = strip_prefix(name).rpartition(".")
    if last in ("gamma", "beta"):
        last = SUFFIXES[last]
    return f"{head}.{last}" if head else last


def _split_prefixed(name: str) -> tuple[str, str] | None:
    bare = strip_prefix(name)
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if bare.endswith("_" + suffix) and len(bare) > len(suffix) + 1:
            return bare[: -len(suffix) - 1], SUFFIXES[suffix]
    return None


def _positional(names: list[str], shapes: dict[str, tuple], module: torch.nn.Module) -> dict[str, str] | None:
    """Rule 3: pairs prefixed layers with the module's parameter-holding submodules in order."""
    layers: dict[str, dict[str, str]] = {}
    for name in names:
        split = _split_prefixed(name)
        if split is None:
            return None
        layer, param = split
        layers.setdefault(layer, {})[param] = name
    state = module.state_dict()
    owners: dict[str, dict[str, str]] = {}
    for key in state:
        head, _, last = key.rpartition(".")
        if last in ("num_batches_tracked",):
            continue
        owners.setdefault(head, {})[last] = key
    if len(owners) != len(layers):
        return None
    out = {}
    for (_, theirs), (_, ours) in zip(layers.items(), owners.items()):
        if set(theirs) != set(ours):
            return None
        for param, name in theirs.items():
            if tuple(state[ours[param]].shape) != shapes[name]:
                return None
            out[name] = ours[param]
    return out


def resolve_names(names: list[str], shapes: dict[str, tuple], module: torch.nn.Module,
                  mapping: Mapping | Callable | None = None) -> dict[str, str | None]:
    """``{mxnet_name: torch_key or None}`` by the rules in the module docstring."""
    if mapping is not None:
        if isinstance(mapping, Mapping):
            return {n: mapping.get(n, mapping.get(strip_prefix(n))) for n in names}
        if callable(mapping):
            return {n: mapping(n) for n in names}
        raise TypeError(f"mapping must be a dict or a callable, got {type(mapping).__name__}")
    keys = set(module.state_dict())
    structural = {n: torch_param_name(n) for n in names}
    if any(v in keys for v in structural.values()):
        return {n: (v if v in keys else None) for n, v in structural.items()}
    positional = _positional(names, shapes, module)
    if positional is not None:
        return positional
    return dict.fromkeys(names)
