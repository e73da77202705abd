"""Trainer checkpoints keyed by parameter name: the optimizer, its update counts and every state tensor.

A checkpoint is ``{"meta": <JSON-able dict>, "tensors": {path: tensor}}``; on disk it is
:func:`optzoo.serialization.dumps` of those two (a safetensors file with the JSON metadata and a sha256 checksum
in its metadata: nothing is unpickled, no code runs on load), written atomically. ``meta`` holds::

    format   "optzoo.trainer"            version  TRAINER_STATE_VERSION (loading a newer one is an error)
    params   [{"name", "shape", "dtype"}, ...] of the saving Trainer, in its index order
    optimizer                            optimizer_to_meta(): class, arguments, scheduler, num_update
    counts   {name: update count}        states   encode_states() structure keyed by name, sorted

Parameters are matched by name on load, so indices may differ between the saving and the loading
Trainer (a model whose parameter order changed). A checkpoint of another optimizer class is a ValueError unless
``allow_optimizer_change=True``; every state must have the shape and dtype its parameter's state has. Update
counts are restored per parameter into the count table of the device the parameter lives on now, so a
checkpoint moves between CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .optimizer.base import _leaves
from .optimizer.updater import Updater, decode_states, encode_states, optimizer_from_meta, optimizer_to_meta
from .serialization import CheckpointError

__all__ = ["TRAINER_STATE_FORMAT", "TRAINER_STATE_VERSION", "check_same_optimizer", "restore_trainer_state",
           "trainer_state"]

TRAINER_STATE_FORMAT = "optzoo.trainer"
#: layout version of ``meta``; bump it (and add a migration in ``_migrate``) when the layout changes.
TRAINER_STATE_VERSION = 1


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def trainer_state(names: list[str], params: list[torch.Tensor], updater: Updater) -> dict:
    """The checkpoint of a Trainer's updater (see the module docstring). Tensors are the live states."""
    optimizer = updater.optimizer
    counts: dict[str, int] = {}
    for table in optimizer._all_index_update_counts.values():
        for index, count in table.items():
            if isinstance(index, int) and 0 <= index < len(names):
                counts[names[index]] = max(count, counts.get(names[index], 0))
    opt_meta = optimizer_to_meta(optimizer)
    opt_meta["counts"] = []  # stored per name in "counts"
    unknown = [i for i in updater.states if not (isinstance(i, int) and 0 <= i < len(names))]
    if unknown:
        raise ValueError(f"the updater holds states for indices {unknown[:5]}, which are not Trainer "
                         "parameters")
    # sorted by name: the same training state gives the same file whatever the Trainer's parameter order
    by_name = {names[i]: s for i, s in updater.states.items()}
    tensors, structure = encode_states({name: by_name[name] for name in sorted(by_name)})
    meta = {
        "format": TRAINER_STATE_FORMAT,
        "version": TRAINER_STATE_VERSION,
        "params": [{"name": n, "shape": list(p.shape), "dtype": _dtype_name(p.dtype)}
                   for n, p in zip(names, params)],
        "optimizer": opt_meta,
        "counts": counts,
        "states": structure,
    }
    return {"meta": meta, "tensors": tensors}


def _migrate(meta: dict) -> dict:
    """Upgrades older layouts to :data:`TRAINER_STATE_VERSION` (none exist yet)."""
    return meta


def _check_header(state) -> tuple[dict, dict]:
    if not isinstance(state, Mapping) or "meta" not in state or "tensors" not in state:
        raise TypeError("a Trainer state must be a dict with 'meta' and 'tensors' (as Trainer.state_dict() "
                        "returns)")
    meta, tensors = state["meta"], state["tensors"]
    if not isinstance(meta, Mapping) or not isinstance(tensors, Mapping):
        raise CheckpointError("Trainer state: 'meta' and 'tensors' must be dicts")
    kind = meta.get("format", meta.get("kind"))
    if kind != TRAINER_STATE_FORMAT:
        hint = " (an Updater blob: load it with Updater.set_states)" if kind == "optzoo.updater" else ""
        raise CheckpointError(f"not an optzoo Trainer checkpoint: format is {kind!r}{hint}")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"Trainer checkpoint has an invalid version {version!r}")
    if version > TRAINER_STATE_VERSION:
        raise CheckpointError(f"Trainer checkpoint version {version} is newer than this optzoo reads "
                              f"({TRAINER_STATE_VERSION}); upgrade optzoo")
    for key in ("params", "optimizer", "counts", "states"):
        if key not in meta:
            raise CheckpointError(f"Trainer checkpoint is missing {key!r}")
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"Trainer checkpoint entry {bad[0]!r} is not a tensor")
    return _migrate(dict(meta)), dict(tensors)


def _check_params(saved, names: list[str], params: list[torch.Tensor]) -> None:
    try:
        saved = {entry["name"]: (list(entry["shape"]), entry["dtype"]) for entry in saved}
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"corrupt parameter list in Trainer checkpoint: {err!r}") from None
    problems = []
    missing = [n for n in names if n not in saved]
    extra = [n for n in saved if n not in set(names)]
    if missing:
        problems.append(f"parameters not in the checkpoint: {missing[:10]}")
    if extra:
        problems.append(f"checkpoint parameters this Trainer does not have: {extra[:10]}")
    for name, p in zip(names, params):
        if name in saved and saved[name] != (list(p.shape), _dtype_name(p.dtype)):
            shape, dtype = saved[name]
            problems.append(f"{name!r} was saved with shape {tuple(shape)} and dtype {dtype}, but is "
                            f"{tuple(p.shape)} {_dtype_name(p.dtype)} now")
    if problems:
        raise ValueError("the checkpoint does not fit this Trainer's parameters: " + "; ".join(problems))


def check_same_optimizer(saved_meta, current, allow_optimizer_change: bool) -> None:
    """ValueError when a checkpoint's optimizer is another class than ``current`` (loading it would silently
    switch the optimizer), unless ``allow_optimizer_change``."""
    saved = saved_meta.get("name") if isinstance(saved_meta, Mapping) else None
    if current is None or allow_optimizer_change or saved not in type(current).opt_registry:
        return  # an unknown name is reported when the optimizer is rebuilt
    registry = type(current).opt_registry
    if registry[saved] is not type(current):  # by class: a name given with register(name=...) is not the class's
        name = next((n for n, k in registry.items() if k is type(current)), type(current).__name__.lower())
        raise ValueError(f"the checkpoint holds the states of a {saved!r} optimizer, but this one uses {name!r}; "
                         "pass allow_optimizer_change=True to replace the optimizer with the saved one")


def restore_trainer_state(state: Mapping, names: list[str], params: list[torch.Tensor], param_dict: dict,
                          copy: bool = True, current=None, allow_optimizer_change: bool = False):
    """Checks ``state`` against the Trainer's parameters and rebuilds ``(optimizer, states by index)``.

    The optimizer is the saved one (class, arguments, scheduler, ``num_update``) with ``param_dict``
    attached and each parameter's update count in the table of its current device. A saved optimizer of
    another class than ``current`` is a ValueError unless ``allow_optimizer_change``; every state must have
    the shape and dtype the saved optimizer gives that parameter's state.
    """
    meta, tensors = _check_header(state)
    try:
        return _restore(meta, tensors, names, params, param_dict, copy, current, allow_optimizer_change)
    except (KeyError, TypeError, AttributeError, IndexError, OverflowError, RuntimeError, RecursionError) as err:
        raise CheckpointError(f"corrupt Trainer checkpoint: {err!r}") from None


def _restore(meta, tensors, names, params, param_dict, copy, current, allow_optimizer_change):
    _check_params(meta["params"], names, params)
    index = {name: i for i, name in enumerate(names)}
    if copy:
        tensors = {k: v.detach().clone() for k, v in tensors.items()}
    by_name = decode_states(tensors, meta["states"])
    for name, st in by_name.items():
        if name not in index:
            raise CheckpointError(f"Trainer checkpoint has a state for unknown parameter {name!r}")
        for leaf in _leaves(st):
            if not leaf.is_floating_point():
                raise CheckpointError(f"state of {name!r} holds a {leaf.dtype} tensor; optimizer states are "
                                      "floating point")
    counts = meta["counts"]
    if not isinstance(counts, Mapping):
        raise CheckpointError("Trainer checkpoint: 'counts' must map parameter names to update counts")
    for name, count in counts.items():
        if name not in index or isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise CheckpointError(f"Trainer checkpoint: bad update count {count!r} for parameter {name!r}")
    check_same_optimizer(meta["optimizer"], current, allow_optimizer_change)
    optimizer = optimizer_from_meta(meta["optimizer"], param_dict=param_dict)
    tables: dict[int, dict] = {0: {}}
    for name, count in counts.items():
        device = params[index[name]].device
        tables.setdefault(device.index or 0, {})[index[name]] = count
    optimizer._all_index_update_counts = tables
    optimizer._index_update_count = tables[0]
    for name, st in by_name.items():
        i = index[name]
        optimizer._check_state_layout(name, params[i], st, check_device=False)
    return optimizer, {index[name]: st for name, st in by_name.items()}
