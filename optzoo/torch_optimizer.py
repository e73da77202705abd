"""Any optzoo optimizer as a real ``torch.optim.Optimizer``.

    model = torch.nn.Linear(10, 1)
    opt = optzoo.TorchOptimizer(model.parameters(), "adam", learning_rate=1e-3, wd=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)      # torch schedulers work
    loss.backward(); opt.step(); opt.zero_grad(); sched.step()

Each param group carries ``lr`` and ``wd``; a parameter's update uses ``group["lr"] * p.lr_mult`` and
``group["wd"] * p.wd_mult`` (``lr_mult``/``wd_mult`` are optional attributes on the parameter, as in Gluon).
If the wrapped optimizer has an ``lr_scheduler``, it owns the rate: every step sets ``group["lr"]`` to
``lr_scheduler(num_update)``. Update counts (``t``) are per parameter, as in MXNet.
"""

from __future__ import annotations

import torch

from .optimizer.base import STATE_CLASSES, Optimizer, create
from .optimizer.validation import check_real
from .serialization import CheckpointError

__all__ = ["TorchOptimizer"]


def _plain(state):
    """A state as nested dicts/lists of tensors, loadable with ``torch.load(weights_only=True)``."""
    if state is None or isinstance(state, torch.Tensor):
        return state
    items = [_plain(item) for item in state]
    kind = type(state).__name__ if hasattr(state, "_fields") else "tuple"
    return {"kind": kind, "items": items}


def _unplain(raw, device):
    if raw is None:
        return None
    if isinstance(raw, torch.Tensor):
        return raw.to(device)
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), (list, tuple)):
        raise CheckpointError(f"bad optimizer state entry {raw!r}")
    items = [_unplain(item, device) for item in raw["items"]]
    if raw["kind"] == "tuple":
        return tuple(items)
    if raw["kind"] in STATE_CLASSES:
        return STATE_CLASSES[raw["kind"]](*items)
    raise CheckpointError(f"unknown state type {raw['kind']!r}")


class TorchOptimizer(torch.optim.Optimizer):
    """Wraps an optzoo optimizer (a registered name plus its arguments, or an instance) as a torch optimizer.

    Args:
        params: parameters or param groups, as for any ``torch.optim.Optimizer``; a group may set ``lr`` and ``wd``.
        optimizer: registered name (``"adam"``, ``"lamb"``, ...) or an :class:`optzoo.optimizer.Optimizer`.
        **optimizer_params: constructor arguments when ``optimizer`` is a name (MXNet names:
            ``learning_rate``, ``wd``, ``momentum``, ``clip_gradient``, ...).
    """

    def __init__(self, params, optimizer="sgd", **optimizer_params):
        if isinstance(optimizer, Optimizer) and optimizer_params:
            raise ValueError("TorchOptimizer: pass constructor arguments only with an optimizer name, "
                             "not with an optimizer instance")
        self.optimizer = create(optimizer, **optimizer_params)
        self._param_index: dict[torch.Tensor, int] = {}
        lr = self.optimizer.lr if self.optimizer.lr is not None else self.optimizer.learning_rate
        super().__init__(params, {"lr": lr, "wd": self.optimizer.wd})

    def add_param_group(self, param_group: dict) -> None:
        for key in ("lr", "wd"):
            if key in param_group:
                check_real(f"param group {key}", param_group[key], 0.0)
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self._param_index.setdefault(p, len(self._param_index))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        opt = self.optimizer
        by_device: dict[torch.device, list] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    by_device.setdefault(p.device, []).append((group, p))
        for device, items in by_device.items():
            opt._set_current_device(device.index or 0)
            indices = [self._param_index[p] for _, p in items]
            opt._update_count(indices)
            if opt.lr_scheduler is not None:
                scheduled = opt.lr_scheduler(opt.num_update)
                for group, _ in items:
                    group["lr"] = scheduled
            params, states, lrs, wds, ts = [], [], [], [], []
            for (group, p), index in zip(items, indices):
                entry = self.state[p]
                if "state" not in entry:
                    entry["state"] = opt.create_state_multi_precision(index, p)
                params.append(p)
                states.append(entry["state"])
                lrs.append(group["lr"] * getattr(p, "lr_mult", 1.0))
                wds.append(group["wd"] * getattr(p, "wd_mult", 1.0))
                t = opt._index_update_count[index]
                entry["step"] = t
                ts.append(t)
            grads = [p.grad for p in params]
            if opt.impl == "native" and opt._native_call(indices, params, grads, states, lrs, wds, ts,
                                                         opt.multi_precision):
                continue
            opt._check_inputs(indices, params, grads, states)
            masters = [opt._uses_master_copy(p) for p in params]
            weights = [s[0] if m else p for p, s, m in zip(params, states, masters)]
            inner_grads = [g.to(torch.float32) if m else g for g, m in zip(grads, masters)]
            inner_states = [s[1] if m else s for s, m in zip(states, masters)]
            opt._apply(indices, weights, inner_grads, inner_states, lrs, wds, ts, fast=opt.impl != "reference")
            for p, w in zip(params, weights):
                if w is not p:
                    p.copy_(w)
        return loss

    def state_dict(self) -> dict:
        """As torch's, with each state stored as plain containers (``torch.load(weights_only=True)`` reads it)."""
        packed = super().state_dict()
        packed["state"] = {k: {"step": v.get("step", 0), "state": _plain(v.get("state"))}
                           for k, v in packed["state"].items()}
        packed["optzoo"] = {"num_update": self.optimizer.num_update, "extra": self.optimizer.extra_state()}
        return packed

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores :meth:`state_dict`; states keep their dtypes (float32 master copies stay float32). A state
        that does not fit its parameter (shape, dtype, another optimizer's layout) is a ValueError and anything
        malformed a CheckpointError; on error the optimizer is unchanged."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"load_state_dict expects the dict state_dict() returns, got {type(state_dict).__name__}")
        try:
            self._load_state_dict(state_dict)
        except (KeyError, TypeError, AttributeError, IndexError, OverflowError, RuntimeError, RecursionError) as err:
            raise CheckpointError(f"corrupt optimizer state_dict: {err!r}") from None

    def _load_state_dict(self, state_dict: dict) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        saved_groups = state_dict.get("param_groups")
        if saved_groups is None or len(saved_groups) != len(self.param_groups):
            raise ValueError("load_state_dict: the saved optimizer has a different number of param groups")
        for group, saved in zip(self.param_groups, saved_groups):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError("load_state_dict: a param group has a different number of parameters")
            for key in ("lr", "wd"):
                if key in saved:
                    check_real(f"saved param group {key}", saved[key], 0.0)
        saved_ids = [i for g in saved_groups for i in g["params"]]
        restored, steps = {}, {}
        for param_id, p in zip(saved_ids, params):
            entry = state_dict["state"].get(param_id)
            if entry is None:
                continue
            state = _unplain(entry["state"], p.device)
            index = self._param_index[p]
            self.optimizer._check_state_layout(index, p, state)
            step = entry["step"]
            if isinstance(step, torch.Tensor) and step.numel() == 1:
                step = step.item()
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step < 0 or step != int(step):
                raise CheckpointError(f"bad update count {entry['step']!r} for parameter {index}")
            restored[p], steps[index] = {"step": int(step), "state": state}, int(step)
        extra = state_dict.get("optzoo", {})
        num_update = int(extra.get("num_update", max(steps.values(), default=0)))
        for group, saved in zip(self.param_groups, saved_groups):  # nothing changes before every check passed
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state.clear()
        self.state.update(restored)
        self.optimizer._index_update_count.update(steps)
        self.optimizer.num_update = num_update
        self.optimizer.load_extra_state(extra.get("extra") or {})

    def __repr__(self) -> str:
        return f"TorchOptimizer({self.optimizer!r}, groups={len(self.param_groups)})"
