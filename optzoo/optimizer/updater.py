"""``Updater``/``get_updater`` (MXNet's per-device update driver) and the safe optimizer-state format."""

from __future__ import annotations

import math

import torch

from .. import sharding
from ..serialization import CheckpointError, dumps, loads
from .base import STATE_CLASSES, Optimizer, _leaves, create, registered_name

__all__ = ["Updater", "get_updater", "encode_states", "decode_states", "optimizer_to_meta",
           "optimizer_from_meta"]

def _encode_key(key):
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"state keys must be int or str, got {key!r}")
    return {"int": key} if isinstance(key, int) else {"str": key}


def _decode_key(raw):
    if set(raw) == {"int"} and isinstance(raw["int"], int):
        return raw["int"]
    if set(raw) == {"str"} and isinstance(raw["str"], str):
        return raw["str"]
    raise CheckpointError(f"bad state key {raw!r}")


def encode_states(states: dict, prefix: str = "s") -> tuple[dict[str, torch.Tensor], list]:
    """Splits ``{key: state}`` into named tensors and a JSON structure."""
    tensors: dict[str, torch.Tensor] = {}

    def node(state, path):
        if state is None:
            return None
        if isinstance(state, torch.Tensor):
            tensors[path] = state
            return {"tensor": path}
        if isinstance(state, (tuple, list)):
            out = {"items": [node(item, f"{path}.{i}") for i, item in enumerate(state)],
                   "kind": "list" if isinstance(state, list) else "tuple"}
            if hasattr(state, "_fields"):
                name = type(state).__name__
                if STATE_CLASSES.get(name) is not type(state):
                    raise TypeError(f"state type {name} is not registered with @state_class")
                out["kind"] = name
            return out
        raise TypeError(f"cannot store state of type {type(state).__name__}")

    structure = [[_encode_key(key), node(state, f"{prefix}/{n}")] for n, (key, state) in enumerate(states.items())]
    return tensors, structure


def decode_states(tensors: dict[str, torch.Tensor], structure: list) -> dict:
    def node(raw):
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise CheckpointError(f"bad state node {raw!r}")
        if "tensor" in raw:
            if raw["tensor"] not in tensors:
                raise CheckpointError(f"state tensor {raw['tensor']!r} missing from checkpoint")
            return tensors[raw["tensor"]]
        items = [node(item) for item in raw.get("items", [])]
        kind = raw.get("kind")
        if kind == "tuple":
            return tuple(items)
        if kind == "list":
            return items
        if kind in STATE_CLASSES:
            return STATE_CLASSES[kind](*items)
        raise CheckpointError(f"unknown state type {kind!r} in checkpoint")

    try:
        return {_decode_key(key): node(raw) for key, raw in structure}
    except (TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"corrupt state structure: {err}") from None


def _counts_to_json(counts: dict) -> list:
    return [[device, [[_encode_key(k), v] for k, v in table.items()]] for device, table in counts.items()]


def optimizer_to_meta(optimizer: Optimizer) -> dict:
    """Everything needed to rebuild ``optimizer`` (constructor arguments and progress), JSON-able."""
    name = registered_name(type(optimizer))
    if name is None:
        raise TypeError(f"{type(optimizer).__name__} is not registered; only registered optimizers can be saved "
                        "with their configuration (use @optzoo.optimizer.register)")
    scheduler = optimizer.lr_scheduler
    if scheduler is not None and not hasattr(scheduler, "get_config"):
        raise TypeError(f"lr_scheduler {scheduler!r} cannot be saved: it has no get_config()")
    return {
        "name": name,
        "config": optimizer.get_config(),
        "lr_scheduler": None if scheduler is None else scheduler.get_config(),
        "num_update": optimizer.num_update,
        "counts": _counts_to_json(optimizer._all_index_update_counts),
        "lr_mult": [[_encode_key(k), v] for k, v in optimizer.lr_mult.items()],
        "wd_mult": [[_encode_key(k), v] for k, v in optimizer.wd_mult.items()],
        "extra": optimizer.extra_state(),
    }


def optimizer_from_meta(meta: dict, param_dict=None) -> Optimizer:
    """Inverse of :func:`optimizer_to_meta`."""
    from .. import lr_scheduler as schedulers

    try:
        config = {k: (math.inf if v == "inf" else v) for k, v in meta["config"].items()}
        if config.get("param_idx2name"):
            config["param_idx2name"] = {int(k) if k.lstrip("-").isdigit() else k: v
                                        for k, v in config["param_idx2name"].items()}
        sched = meta.get("lr_scheduler")
        if sched is not None:
            sched = dict(sched)
            config["lr_scheduler"] = schedulers.create(sched.pop("type"), **sched)
            config["learning_rate"] = None
        optimizer = create(meta["name"], param_dict=param_dict, **config)
        optimizer.num_update = int(meta["num_update"])
        optimizer._all_index_update_counts = {
            int(device): {_decode_key(k): int(v) for k, v in table} for device, table in meta["counts"]}
        optimizer._index_update_count = optimizer._all_index_update_counts.setdefault(0, {})
        optimizer.lr_mult = {_decode_key(k): float(v) for k, v in meta["lr_mult"]}
        optimizer.wd_mult = {_decode_key(k): float(v) for k, v in meta["wd_mult"]}
        optimizer.load_extra_state(meta.get("extra") or {})
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"corrupt optimizer description in checkpoint: {err!r}") from None
    return optimizer


class Updater:
    """Applies an optimizer to (index, grad, weight) triples, creating each index's state on first use.

    ``updater(index, grad, weight)`` takes one index and tensors, or lists of them (MXNet's argument order).
    """

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Updater needs an optzoo Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.states: dict = {}
        self.states_synced: dict = {}

    def __call__(self, index, grad, weight) -> None:
        if not isinstance(index, (list, tuple)):
            index, grad, weight = [index], [grad], [weight]
        if not (len(index) == len(grad) == len(weight)):
            raise ValueError(f"Updater needs as many indices, grads and weights; got {len(index)}, {len(grad)}, "
                             f"{len(weight)}")
        by_device: dict[torch.device, list] = {}
        for i, g, w in zip(index, grad, weight):
            if not isinstance(w, torch.Tensor):
                raise TypeError(f"weight of parameter {i!r} must be a torch.Tensor, got {type(w).__name__}")
            if isinstance(i, bytes):
                i = i.decode()
            by_device.setdefault(w.device, []).append((i, g, w))
        for device, items in by_device.items():
            self.optimizer._set_current_device(device.index or 0)
            for i, _, w in items:
                if i not in self.states:
                    self.states[i] = sharding.create_state(self.optimizer, i, w)
                    self.states_synced[i] = True
                elif not self.states_synced.get(i, True):
                    self.states[i] = sharding.place_state(self.optimizer, i, w, self.states[i])
                    self.states_synced[i] = True
            indices = [i for i, _, _ in items]
            weights, grads, states = sharding.local_views(self.optimizer, indices, [w for _, _, w in items],
                                                          [g for _, g, _ in items], [self.states[i] for i in indices])
            self.optimizer.update_multi_precision(indices, weights, grads, states)

    def get_states(self, dump_optimizer: bool = False) -> bytes:
        """The states (and, with ``dump_optimizer``, the optimizer's configuration and progress) as bytes."""
        tensors, structure = encode_states(self.states)
        meta = {"kind": "optzoo.updater", "states": structure,
                "optimizer": optimizer_to_meta(self.optimizer) if dump_optimizer else None}
        return dumps(tensors, meta)

    def set_states(self, states: bytes, allow_optimizer_change: bool = False) -> None:
        """Restores :meth:`get_states` output; tensors move to each weight's device at its next update (where a
        state that does not fit its weight is a ValueError). A blob holding another optimizer class (with
        ``dump_optimizer``) is a ValueError unless ``allow_optimizer_change=True``; anything that is not an intact
        blob is a CheckpointError. On error the Updater is unchanged. MXNet's ``get_states()`` bytes (a pickle,
        read safely by :mod:`optzoo.mxnet`) are accepted too."""
        from ..mxnet.ndarray import sniff

        if isinstance(states, (bytes, bytearray, memoryview)) and sniff(bytes(states[:16])) == "pickle":
            from ..mxnet import set_updater_states

            set_updater_states(self, bytes(states))
            return
        tensors, meta = loads(states)
        if not isinstance(meta, dict) or meta.get("kind") != "optzoo.updater" or "states" not in meta:
            raise CheckpointError("not an optzoo Updater state blob")
        from ..checkpoint import check_same_optimizer

        check_same_optimizer(meta.get("optimizer"), self.optimizer, allow_optimizer_change)
        try:
            decoded = decode_states(tensors, meta["states"])
            optimizer = None
            if meta.get("optimizer") is not None:
                optimizer = optimizer_from_meta(meta["optimizer"], param_dict=self.optimizer.param_dict)
        except (KeyError, TypeError, AttributeError, IndexError, OverflowError, RuntimeError, RecursionError) as err:
            raise CheckpointError(f"corrupt Updater state blob: {err!r}") from None
        for key, state in decoded.items():
            if any(not leaf.is_floating_point() for leaf in _leaves(state)):
                raise CheckpointError(f"the state of {key!r} holds a tensor that is not floating point")
        self.states = decoded
        self.states_synced = dict.fromkeys(self.states, False)
        if optimizer is not None:
            self.optimizer = optimizer


def get_updater(optimizer: Optimizer) -> Updater:
    """MXNet's ``get_updater``: an :class:`Updater` for ``optimizer``."""
    return Updater(optimizer)
