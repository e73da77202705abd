"""Any optzoo optimizer as a real ``torch.optim.Optimizer``.

    model = torch.nn.Linear(10, 1)
    opt = optzoo.TorchOptimizer(model.parameters(), "adam", learning_rate=1e-3, wd=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)      # torch schedulers work
    loss.backward(); opt.step(); opt.zero_grad(); sched.step()

Each param group carries ``lr``, ``wd`` and every hyperparameter of the wrapped optimizer under its constructor
name (``momentum``, ``beta1``, ``beta2``, ``epsilon``, ``clip_gradient``, ...; plus ``betas=(beta1, beta2)``
kept in sync, for torch's schedulers). All of them are read at every step: changing one between steps changes
the next step exactly as constructing with it would. A parameter's update uses ``group["lr"] * p.lr_mult`` and
``group["wd"] * p.wd_mult`` (``lr_mult``/``wd_mult`` are optional attributes on the parameter, as in Gluon).
torch's names are accepted too: ``lr`` (a float or a 0-d tensor), ``weight_decay``, ``betas`` and ``foreach``.
If the wrapped optimizer has an ``lr_scheduler``, it owns the rate: every step sets ``group["lr"]`` to
``lr_scheduler(num_update)``. Update counts (``t``) are per parameter, as in MXNet. Complex parameters are
updated as their ``torch.view_as_real`` views. Under ``torch.compile`` the whole step is one custom operator
(:mod:`optzoo.compiled`). docs/torch_optim.md lists the contract and where it differs from torch's optimizers.
"""

from __future__ import annotations

from collections import defaultdict
from copy import deepcopy
from itertools import chain

import torch

from . import compiled as _compile
from . import sharding
from .optimizer.base import STATE_CLASSES, Optimizer, create
from .optimizer.validation import check_bool, check_real
from .serialization import CheckpointError

__all__ = ["TorchOptimizer", "hyperparameter_names"]

#: torch's argument names and optzoo's (MXNet's)
_TORCH_NAMES = {"lr": "learning_rate", "weight_decay": "wd"}
#: a group key: the lr a group was added with, where the rule reads the initial rate (Lion's decoupled decay,
#: MARS's 1-D rate): the wrapped optimizer's ``lr`` while that group steps, as for an optimizer built with it
_GROUP_INITIAL_LR = "initial_group_lr"
#: constructor arguments that are not per-group hyperparameters: bookkeeping, or what fixes a state's layout
_NOT_HYPERPARAMETERS = frozenset({
    "learning_rate", "wd", "param_idx2name", "param_dict", "lr_scheduler", "begin_num_update", "multi_precision",
    "aggregate_num", "use_fused_step", "impl", "generator", "seed", "centered", "schedule_scope"})


def hyperparameter_names(optimizer: Optimizer) -> tuple[str, ...]:
    """The constructor arguments of ``optimizer`` that a param group carries (read at every step)."""
    return tuple(sorted(n for n in optimizer._argument_names() - _NOT_HYPERPARAMETERS if hasattr(optimizer, n)))


def _check_lr(name: str, value):
    """A float >= 0 or a 0-d floating-point tensor (torch's tensor lr); returned unchanged."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or not value.is_floating_point() or value.requires_grad:
            raise ValueError(f"{name}: a tensor learning rate must be a 0-d floating-point tensor without grad, "
                             f"got shape {tuple(value.shape)}, dtype {value.dtype}")
        check_real(name, float(value), 0.0)
        return value
    check_real(name, value, 0.0)
    return value


def _check_betas(value) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}")
    return tuple(float(check_real("betas", b)) for b in value)


def _lr_value(lr) -> float:
    return float(lr.item()) if isinstance(lr, torch.Tensor) else lr


def _flat(state, path: str = "state") -> dict:
    """A state as a flat ``{path: tensor}`` dict: ``"state"`` for one tensor, ``"state.mean"`` for a named field,
    ``"state.0"`` for a tuple item (``None`` entries are left out). ``torch.load(weights_only=True)`` reads it and
    torch.distributed.checkpoint saves and reshards these tensors as they are (DTensors included)."""
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {path: state}
    names = state._fields if hasattr(state, "_fields") else range(len(state))
    out = {}
    for name, item in zip(names, state):
        out.update(_flat(item, f"{path}.{name}"))
    return out


def _unplain(raw, device):
    """A state saved in the nested ``{"kind", "items"}`` format of earlier optzoo versions."""
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
        params: parameters, ``(name, parameter)`` pairs or param groups, as for any ``torch.optim.Optimizer``; a
            group may set ``lr``, ``wd`` and any hyperparameter (see :func:`hyperparameter_names`).
        optimizer: registered name (``"adam"``, ``"lamb"``, ...) or an :class:`optzoo.optimizer.Optimizer`.
        foreach: torch's switch: ``True`` runs the ``torch._foreach`` path, ``False`` the readable per-tensor
            path, ``None`` (default) the fastest available (native where built).
        **optimizer_params: constructor arguments when ``optimizer`` is a name (MXNet names:
            ``learning_rate``, ``wd``, ``momentum``, ``clip_gradient``, ...; torch's ``lr``, ``weight_decay``
            and ``betas`` are accepted too). ``learning_rate`` may be a 0-d tensor.
    """

    def __init__(self, params, optimizer="sgd", *, foreach=None, **optimizer_params):
        if isinstance(optimizer, Optimizer) and (optimizer_params or foreach is not None):
            raise ValueError("TorchOptimizer: pass constructor arguments only with an optimizer name, "
                             "not with an optimizer instance")
        for torch_name, name in _TORCH_NAMES.items():
            if torch_name in optimizer_params:
                if name in optimizer_params:
                    raise ValueError(f"TorchOptimizer: pass {name!r} or torch's {torch_name!r}, not both")
                optimizer_params[name] = optimizer_params.pop(torch_name)
        betas = optimizer_params.get("betas")
        if isinstance(betas, (tuple, list)) and len(betas) != 2:
            pass  # not torch's pair: the optimizer reads it as its package does (AdEMAMix's three betas)
        elif "betas" in optimizer_params:
            if "beta1" in optimizer_params or "beta2" in optimizer_params:
                raise ValueError("TorchOptimizer: pass betas or beta1/beta2, not both")
            optimizer_params["beta1"], optimizer_params["beta2"] = _check_betas(optimizer_params.pop("betas"))
        tensor_lr = optimizer_params.get("learning_rate")
        if isinstance(tensor_lr, torch.Tensor):
            optimizer_params["learning_rate"] = float(_check_lr("learning_rate", tensor_lr))
        else:
            tensor_lr = None
        if foreach is not None:
            check_bool("foreach", foreach)
            if "impl" in optimizer_params or "use_fused_step" in optimizer_params:
                raise ValueError("TorchOptimizer: pass foreach or impl/use_fused_step, not both")
            optimizer_params["impl"] = "foreach" if foreach else "reference"
        self.optimizer = create(optimizer, **optimizer_params)
        sharding.check_partitioned(self.optimizer)
        self._param_index: dict[torch.Tensor, int] = {}
        self._hyper_names = hyperparameter_names(self.optimizer)
        self._reset_caches()
        self._handle = _compile.register(self)
        opt = self.optimizer
        lr = opt.lr if opt.lr is not None else opt.learning_rate
        defaults = {"lr": tensor_lr if tensor_lr is not None else lr, "wd": opt.wd}
        defaults.update((name, getattr(opt, name)) for name in self._hyper_names)
        if self._has_betas():
            defaults["betas"] = (opt.beta1, opt.beta2)
        super().__init__(params, defaults)

    def _reset_caches(self) -> None:
        self._checked: dict[int, tuple] = {}  # id(group) -> hyperparameters last validated
        self._seen_betas: dict[int, tuple] = {}  # id(group) -> betas after the last sync

    def _has_betas(self) -> bool:
        return "beta1" in self._hyper_names and "beta2" in self._hyper_names

    def add_param_group(self, param_group: dict) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        for torch_name, name in (("learning_rate", "lr"), ("weight_decay", "wd")):
            if torch_name in param_group:
                if name in param_group:
                    raise ValueError(f"param group: pass {name!r} or {torch_name!r}, not both")
                param_group[name] = param_group.pop(torch_name)
        if "betas" in param_group:
            if not self._has_betas():
                raise ValueError(f"param group: {type(self.optimizer).__name__} has no beta1/beta2 (betas)")
            betas = _check_betas(param_group["betas"])
            for name, value in zip(("beta1", "beta2"), betas):
                if name in param_group and param_group[name] != value:
                    raise ValueError(f"param group: betas={betas} contradicts {name}={param_group[name]}")
                param_group[name] = value
        if "lr" in param_group:
            _check_lr("param group lr", param_group["lr"])
            if getattr(self.optimizer, "reads_initial_lr", False):
                param_group.setdefault(_GROUP_INITIAL_LR, _lr_value(param_group["lr"]))
        if "wd" in param_group:
            check_real("param group wd", param_group["wd"], 0.0)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if self._has_betas():
            group["betas"] = (group["beta1"], group["beta2"])
        self._check_group(group, len(self.param_groups) - 1)
        for p in group["params"]:
            self._param_index.setdefault(p, len(self._param_index))

    def _check_group(self, group: dict, number: int) -> tuple:
        """The group's hyperparameter values, validated as the constructor would (once per new set of values)."""
        if self._has_betas():
            self._sync_betas(group)
        if not isinstance(group["lr"], torch.Tensor):
            check_real(f"param group {number} lr", group["lr"], 0.0)
        values = tuple(group[name] for name in self._hyper_names)
        checked = (*values, group["wd"])
        if self._checked.get(id(group)) != checked:
            try:
                type(self.optimizer)(wd=group["wd"], **dict(zip(self._hyper_names, values)))
            except (TypeError, ValueError) as err:
                raise type(err)(f"param group {number}: {err}") from None
            self._checked[id(group)] = checked
        return values

    def _sync_betas(self, group: dict) -> None:
        """Keeps ``betas`` and ``beta1``/``beta2`` equal (torch's schedulers, ``OneCycleLR(cycle_momentum=True)``
        for one, write ``betas``): whichever was assigned since the last sync wins, at the next step."""
        betas, pair = tuple(group["betas"]), (group["beta1"], group["beta2"])
        if betas != pair:
            if betas == self._seen_betas.get(id(group)):
                group["betas"] = pair
            else:
                group["beta1"], group["beta2"] = _check_betas(betas)
        self._seen_betas[id(group)] = tuple(group["betas"])

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if _compile.is_compiling():
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            if params:
                _compile.optimizer_step(self._handle, params, [p.grad for p in params])
        elif sharding.is_state_init_step(self):  # torch.distributed.checkpoint's: create the states only
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["state"] = sharding.create_state(self.optimizer, self._param_index[p], p)
        else:
            self._update()
        return loss

    def _update(self, targets=None, grads=None) -> None:
        """The step itself. ``targets``/``grads``: the tensors to write and read in place of the parameters and
        their ``.grad`` (the compiled path hands over the graph's tensors), in parameter order."""
        self._adopt_attribute_edits()
        buckets: dict[tuple, list] = {}
        values_of: list[tuple] = []  # one entry per distinct set of hyperparameter values
        given = iter(zip(targets, grads)) if targets is not None else None
        for number, group in enumerate(self.param_groups):
            values = self._check_group(group, number)
            if _GROUP_INITIAL_LR in group:
                values = (*values, group[_GROUP_INITIAL_LR])  # its own bucket, stepped with its initial rate
            if values not in values_of:
                values_of.append(values)
            kind = values_of.index(values)
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                target = p
                if given is not None:
                    target, grad = next(given, (None, None))
                    if target is None:
                        raise RuntimeError("TorchOptimizer: the compiled step saw fewer parameters with gradients")
                buckets.setdefault((p.device, kind), []).append((group, p, target, grad))
        if given is not None and next(given, None) is not None:
            raise RuntimeError("TorchOptimizer: the compiled step saw more parameters with gradients")
        opt = self.optimizer
        if len(buckets) > 1 and getattr(opt, "joint_step", False):
            self._reject_split_joint_step()
        saved = {name: getattr(opt, name) for name in (*self._hyper_names, "lr")}
        try:
            for (device, kind), bucket in buckets.items():
                values = values_of[kind]
                for name, value in zip(self._hyper_names, values):
                    setattr(opt, name, value)
                opt.lr = values[-1] if len(values) > len(self._hyper_names) else saved["lr"]
                self._update_bucket(device, bucket)
        finally:
            for name, value in saved.items():
                setattr(opt, name, value)

    def _reject_split_joint_step(self) -> None:
        """A rule whose step couples every parameter (``joint_step``: Prodigy's one ``d`` estimate) cannot be taken
        in parts: groups may differ in ``lr`` and ``wd`` only, and the parameters must share one device."""
        name, first = type(self.optimizer).__name__, self.param_groups[0]
        for number, group in enumerate(self.param_groups):
            differ = [n for n in self._hyper_names if group[n] != first[n]]
            if differ:
                raise ValueError(f"param group {number}: {name} takes one step over every parameter, so "
                                 f"{', '.join(differ)} must be the same in every param group (lr and wd may differ)")
        raise ValueError(f"{name} takes one step over every parameter: they must all be on one device")

    def _adopt_attribute_edits(self) -> None:
        """A hyperparameter set on the wrapped optimizer itself (``opt.optimizer.momentum = 0.5``, the way before
        param groups carried them) becomes the default, and the value of every group that had the old default."""
        opt = self.optimizer
        for name in self._hyper_names:
            value, default = getattr(opt, name), self.defaults[name]
            if value != default:
                for group in self.param_groups:
                    if group[name] == default:
                        group[name] = value
                self.defaults[name] = value
                if name in ("beta1", "beta2"):
                    self.defaults["betas"] = (self.defaults["beta1"], self.defaults["beta2"])

    def _state_of(self, p, index: int, weight):
        """The parameter's state, created on its first step (and again where a hyperparameter change, such as a
        momentum that was 0, makes a state the rule had no use for necessary)."""
        opt, entry = self.optimizer, self.state[p]
        if "state" not in entry:
            entry["state"] = sharding.create_state(opt, index, weight)
        elif opt._uses_master_copy(weight) and entry["state"][1] is None:
            fresh = opt.create_state(index, entry["state"][0])
            if fresh is not None:
                entry["state"] = (entry["state"][0], fresh)
        elif entry["state"] is None:
            entry["state"] = opt.create_state(index, weight)
        return entry["state"]

    def _update_bucket(self, device, bucket) -> None:
        opt = self.optimizer
        opt._set_current_device(device.index or 0)
        indices = [self._param_index[p] for _, p, _, _ in bucket]
        opt._update_count(indices)
        if opt.lr_scheduler is not None:
            scheduled = opt.lr_scheduler(opt.num_update)
            for group, _, _, _ in bucket:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(scheduled)
                else:
                    group["lr"] = scheduled
        params, grads, states, lrs, wds, ts = [], [], [], [], [], []
        counts, state_of, multi_precision = opt._index_update_count, self.state, opt.multi_precision
        group_lrs = {id(group): _lr_value(group["lr"]) for group in self.param_groups}
        for (group, p, target, grad), index in zip(bucket, indices):
            if target.is_complex():
                target = torch.view_as_real(target)
                grad = torch.view_as_real(grad) if grad.is_complex() else grad
            entry = state_of[p]
            state = entry.get("state")
            if state is None or (multi_precision and isinstance(state, tuple) and state[1] is None):
                state = self._state_of(p, index, target)
            params.append(target)
            grads.append(grad)
            states.append(state)
            lrs.append(group_lrs[id(group)] * getattr(p, "lr_mult", 1.0))
            wds.append(group["wd"] * getattr(p, "wd_mult", 1.0))
            entry["step"] = t = counts[index]
            ts.append(t)
        params, grads, states = sharding.local_views(opt, indices, params, grads, states)
        if opt.impl == "native" and opt._native_call(indices, params, grads, states, lrs, wds, ts,
                                                     opt.multi_precision):
            return
        opt._check_inputs(indices, params, grads, states)
        masters = [opt._uses_master_copy(p) for p in params]
        weights = [s[0] if m else p for p, s, m in zip(params, states, masters)]
        inner_grads = [g.to(torch.float32) if m else g for g, m in zip(grads, masters)]
        inner_states = [s[1] if m else s for s, m in zip(states, masters)]
        opt._apply(indices, weights, inner_grads, inner_states, lrs, wds, ts, fast=opt.impl != "reference")
        for p, w in zip(params, weights):
            if w is not p:
                p.copy_(w)

    def train(self) -> None:
        """Train mode for optimizers that have one (Schedule-Free: the parameters move back to the point where
        gradients are taken); a no-op otherwise."""
        self._swap_mode("train")

    def eval(self) -> None:
        """Eval mode for optimizers that have one (Schedule-Free: the parameters take the averaged weights, which
        evaluation and saved models must use); a no-op otherwise."""
        self._swap_mode("eval")

    def _swap_mode(self, mode: str) -> None:
        swap = getattr(self.optimizer, mode, None)
        if callable(swap):
            params = [p for group in self.param_groups for p in group["params"] if "state" in self.state[p]]
            swap([p.data for p in params], [self.state[p]["state"] for p in params])

    def state_dict(self) -> dict:
        """As torch's (hooks included), with each parameter's state as a flat dict of tensors (``{"step",
        "state.<field>"}``, see :func:`_flat`): ``torch.load(weights_only=True)`` reads it, torch.distributed.checkpoint
        reshards it. Other keys of ``self.state`` are kept as they are."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        if self._has_betas():
            for group in self.param_groups:
                self._sync_betas(group)
        mapping: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            start = len(mapping)
            mapping.update({id(p): i for i, p in enumerate(group["params"], start) if id(p) not in mapping})
            packed["params"] = [mapping[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for key, value in self.state.items():
            if isinstance(key, torch.Tensor):
                # "step" always: torch.distributed.checkpoint loads only the keys of the loading optimizer's own
                # state_dict(), and its state-creating first step sets no count
                flat = {"step": 0, **{k: v for k, v in value.items() if k != "state"}}
                flat.update(_flat(value.get("state")))
                state[mapping[id(key)]] = flat
            else:
                state[key] = value
        progress = {"num_update": self.optimizer.num_update, "extra": self.optimizer.extra_state()}
        # optimizer-wide progress also rides in every param group (torch.distributed.checkpoint keeps only
        # "state" and "param_groups"; every group alike, so a repeated group is represented identically)
        for group in groups:
            group["optzoo"] = dict(progress)
        packed = {"state": state, "param_groups": groups, "optzoo": progress}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, packed)
            if result is not None:
                packed = result
        return packed

    def _load_entry(self, index, p, entry: dict) -> dict:
        """A saved parameter entry as ``self.state`` holds it: ``"state"`` rebuilt from the flat format of
        :func:`_flat` (copied into a fresh state, sharded like ``p``) or from the nested ``{"kind", "items"}``
        format of older checkpoints; other keys kept."""
        if not isinstance(entry, dict):
            raise CheckpointError(f"load_state_dict: the entry of parameter {index} is not a dict")
        kept = {k: v for k, v in entry.items() if k != "state" and not k.startswith("state.")}
        if isinstance(entry.get("state"), dict):
            kept["state"] = _unplain(entry["state"], p.device)
            return kept
        paths = {k: v for k, v in entry.items() if k == "state" or k.startswith("state.")}
        if not paths:
            return kept
        weight = torch.view_as_real(p) if p.is_complex() else p
        state = sharding.create_state(self.optimizer, index, weight)
        expected = _flat(state)
        unknown = sorted(set(paths) - set(expected))
        if unknown:
            raise CheckpointError(f"load_state_dict: parameter {index} has unexpected state entries {unknown}")
        for path, leaf in expected.items():
            value = paths.get(path)
            if not isinstance(value, torch.Tensor) or value.shape != leaf.shape:
                raise CheckpointError(f"load_state_dict: parameter {index} needs a tensor {path!r} of shape "
                                      f"{tuple(leaf.shape)}, got {getattr(value, 'shape', value)!r}")
            leaf.copy_(value)
        kept["state"] = state
        return kept

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores :meth:`state_dict` (hooks included); states keep their dtypes (float32 master copies stay
        float32). Parameters the saved state does not contain start fresh (update count 0). A state that does not
        fit its parameter (shape, dtype, another optimizer's layout) is a ValueError and anything malformed a
        CheckpointError; on error the optimizer is unchanged."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"load_state_dict expects a dict, got {type(state_dict).__name__}")
        try:
            self._load_state_dict(state_dict)
        except (KeyError, TypeError, AttributeError, IndexError, OverflowError, RuntimeError, RecursionError) as err:
            raise CheckpointError(f"corrupt optimizer state_dict: {err!r}") from None

    def _load_state_dict(self, state_dict: dict) -> None:
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        if "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("load_state_dict: expected a dict with 'state' and 'param_groups' (from state_dict())")
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("load_state_dict: the saved optimizer has a different number of param groups")
        for group, saved in zip(self.param_groups, saved_groups):
            if not isinstance(saved, dict) or len(group["params"]) != len(saved.get("params", ())):
                raise ValueError("load_state_dict: a param group has a different number of parameters")
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        state, steps = defaultdict(dict), {}
        for key, entry in state_dict["state"].items():
            p = id_map.get(key)
            if p is None:
                state[key] = entry
                continue
            index = self._param_index[p]
            entry = self._load_entry(index, p, entry)
            if "state" in entry:
                self.optimizer._check_state_layout(index, torch.view_as_real(p) if p.is_complex() else p,
                                                   entry["state"])
            step = entry.get("step", 0)
            if isinstance(step, torch.Tensor) and step.numel() == 1:
                step = step.item()
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step < 0 or step != int(step):
                raise CheckpointError(f"bad update count {entry.get('step')!r} for parameter {index}")
            entry["step"] = steps[p] = int(step)
            state[p] = entry
        groups = []
        # torch.distributed.checkpoint keeps only "state" and "param_groups": the first group carries a copy
        progress = state_dict.get("optzoo") or (saved_groups[0].get("optzoo") if saved_groups else None) or {}
        for number, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            saved.pop("optzoo", None)
            saved["params"] = group["params"]
            if self._has_betas() and "beta1" not in saved and "betas" in saved:
                saved["beta1"], saved["beta2"] = _check_betas(saved["betas"])
            for key, value in group.items():  # older state dicts lack newer keys (and the param names)
                saved.setdefault(key, value)
            if self._has_betas():
                saved["betas"] = (saved["beta1"], saved["beta2"])
            self._check_group(saved, number)  # before anything changes: a bad dict leaves the optimizer as it was
            groups.append(saved)
        # every check passed: commit. Parameters without a saved state start fresh (no state, count 0).
        opt = self.optimizer
        for counts in opt._all_index_update_counts.values():
            for p in id_map.values():
                counts.pop(self._param_index[p], None)
        for p, step in steps.items():
            opt._all_index_update_counts.setdefault(p.device.index or 0, {})[self._param_index[p]] = step
        self.param_groups = groups
        self.state = state
        self._reset_caches()
        for number, group in enumerate(groups):
            self._check_group(group, number)
        counts = [c for d in opt._all_index_update_counts.values() for c in d.values()]
        opt.num_update = int(progress.get("num_update", max(counts, default=opt.begin_num_update)))
        opt.load_extra_state(progress.get("extra") or {})
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict:
        """torch keeps ``defaults``, ``state`` and ``param_groups``; the wrapped optimizer (with its update
        counts) and the parameter index travel too, so a copy continues exactly where the original is."""
        state = super().__getstate__()
        state.update(optimizer=self.optimizer, _param_index=self._param_index, _hyper_names=self._hyper_names)
        return state

    def __setstate__(self, state: dict) -> None:
        had_differentiable = "differentiable" in state["defaults"]
        super().__setstate__(state)
        if not had_differentiable:  # torch adds this flag for its own optimizers; it means nothing here
            self.defaults.pop("differentiable", None)
        self._reset_caches()
        self._handle = _compile.register(self)

    def __repr__(self) -> str:
        return f"TorchOptimizer({self.optimizer!r}, groups={len(self.param_groups)})"
