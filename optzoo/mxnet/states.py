"""MXNet optimizer-state files (``Trainer.save_states``, ``Updater.get_states``, ``Module.save_optimizer_states``)
read without MXNet, and turned into an optzoo optimizer and optzoo states.

What such a file holds (MXNet 1.x and 2.0): ``pickle((states, optimizer))`` when the optimizer was dumped
(Gluon's ``Trainer.save_states``, ``get_states(dump_optimizer=True)``), else ``pickle(states)``
(``Module.save_optimizer_states`` without a kvstore). ``states`` maps the optimizer index (Gluon: position of
the parameter in *sorted-name* order of ``collect_params()``, including parameters without gradient; Module:
position in ``symbol.list_arguments()`` without data and label) to ``None``, an NDArray or a tuple of them.
The optimizer is the live object: ``lr`` is the learning rate given at construction (or set later),
``rescale_grad`` is ``1/batch_size`` of the last step, and the scheduler has already advanced.

State layouts. optzoo's state of every optimizer holds MXNet 2.0's tensors in MXNet 2.0's order (the
parity tests check every leaf), so a 2.0 state maps leaf by leaf. 1.x differs for:

* multi-precision SGD, NAG, ccSGD, LARS: 1.x ``(momentum, master_weight)``, 2.0 ``(master_weight, momentum)``;
* RMSProp: 1.x ``(n,)`` / centered ``(n, g, delta)``, 2.0 ``var`` / centered ``(mean=g, var=n, mom=delta)``;
* AdaGrad / GroupAdaGrad: 1.x's ``float_stable_eps`` is added *inside* the square root (``g / sqrt(h + eps)``),
  2.0's ``epsilon`` outside (``g / (sqrt(h) + eps)``); a resumed 1.x AdaGrad run continues with 2.0's rule
  and ``epsilon = float_stable_eps`` (a warning says so; the difference is of the order of ``eps / sqrt(h)``);
* Adamax: 1.x has no epsilon (``m / u``); it resumes with ``epsilon=0``, the same rule;
* LARS and Test: 1.x's rules are not 2.0's; such files are refused.

Schedulers are rebuilt from what they were *constructed* with, not from the advanced state: MXNet's
optimizer sets ``scheduler.base_lr = learning_rate`` at construction, and Factor/MultiFactor schedulers then
multiply ``base_lr`` in place as they advance, so the original base rate is the optimizer's ``lr`` (or, without
one, the warmup target ``warmup_final_lr``); Poly and Cosine keep it in ``base_lr_orig``. The rebuilt optzoo
scheduler (a pure function of the update count) is checked against the pickled one: replaying MXNet's
in-place decay from the original rate must give the pickled ``base_lr``, else the file is refused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import lr_scheduler as schedulers
from ..optimizer.base import _LOW_PRECISION, Optimizer, _leaves
from ..serialization import CheckpointError
from .ndarray import parse_record, sniff
from .pickled import MXNetObject, NDArrayHandle, safe_loads

__all__ = ["MXNetStates", "load_states", "build_optimizer", "convert_state", "mxnet_version"]

#: optimizers whose 1.x multi-precision state is ``(state, master_weight)``
_MOM_FIRST_1X = {"sgd", "nag", "ccsgd", "lars"}
#: 1.x optimizers whose update rule is not 2.0's (optzoo's)
_OTHER_RULE_1X = {"lars": "momentum_correction, eps, skip", "test": "weight += rescaled grad"}
#: optzoo arguments that are not hyperparameters of the update rule
_NOT_HYPER = {"param_dict", "lr_scheduler", "impl", "use_fused_step", "param_idx2name", "learning_rate",
              "rescale_grad", "aggregate_num", "begin_num_update"}


@dataclass
class MXNetStates:
    """Everything an MXNet optimizer-state file holds, with torch tensors and plain Python values."""

    path: str
    #: ``{index: state}``; a state is ``None``, a tensor or a tuple (MXNet's layout for ``version``)
    states: dict
    #: ``"1.x"`` or ``"2.0"`` (from the optimizer's module; ``None`` when no optimizer was dumped)
    version: str | None = None
    #: the pickled optimizer's class name (``"Adam"``), ``None`` when the file holds only states
    optimizer_class: str | None = None
    #: the optimizer's attributes (numbers, strings, dicts); tensors and objects left out
    optimizer_attrs: dict = field(default_factory=dict)
    #: scheduler class name and attributes (already advanced), or ``None``
    scheduler_class: str | None = None
    scheduler_attrs: dict = field(default_factory=dict)

    @property
    def has_optimizer(self) -> bool:
        return self.optimizer_class is not None

    @property
    def num_update(self) -> int | None:
        return self.optimizer_attrs.get("num_update")

    @property
    def begin_num_update(self) -> int | None:
        return self.optimizer_attrs.get("begin_num_update")

    @property
    def index_update_counts(self) -> dict:
        """``{index: count}`` merged over devices (the largest count of an index)."""
        merged: dict = {}
        for table in (self.optimizer_attrs.get("_all_index_update_counts") or {}).values():
            for index, count in table.items():
                merged[index] = max(count, merged.get(index, 0))
        return merged or dict(self.optimizer_attrs.get("_index_update_count") or {})

    @property
    def idx2name(self) -> dict:
        return dict(self.optimizer_attrs.get("idx2name") or {})

    @property
    def lr_mult(self) -> dict:
        return dict(self.optimizer_attrs.get("lr_mult") or {})

    @property
    def wd_mult(self) -> dict:
        return dict(self.optimizer_attrs.get("wd_mult") or {})

    @property
    def optimizer_name(self) -> str | None:
        """The registry name (``"adam"``) of the pickled optimizer."""
        return None if self.optimizer_class is None else self.optimizer_class.lower()


def mxnet_version(module: str, attrs: dict) -> str:
    """``"2.0"`` for 2.0's optimizers: their own modules (``mxnet.optimizer.adam``) or, for the few that stayed
    in ``mxnet.optimizer.optimizer`` / ``contrib``, the ``use_fused_step`` attribute 1.x does not have."""
    if module not in ("mxnet.optimizer.optimizer", "mxnet.optimizer", "mxnet.optimizer.contrib"):
        return "2.0"
    return "2.0" if "use_fused_step" in attrs else "1.x"


def _tensors(value, source: str, where: str):
    """Pickled state -> torch tensors: NDArray records parsed, tuples/lists kept as tuples."""
    if value is None:
        return None
    if isinstance(value, NDArrayHandle):
        if value.handle is None:
            raise CheckpointError(f"{source}: {where} is an NDArray without data")
        return parse_record(value.handle, f"{source}: {where}")
    if isinstance(value, (tuple, list)):
        return tuple(_tensors(item, source, f"{where}[{i}]") for i, item in enumerate(value))
    raise CheckpointError(f"{source}: {where} is a {type(value).__name__}, not an NDArray or a tuple of them")


def _plain(value, depth: int = 0):
    """Attribute values kept from a pickled object: numbers, strings, None, and containers of them."""
    if depth > 8:
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _plain(v, depth + 1) for k, v in value.items() if isinstance(k, (int, str))}
    if isinstance(value, (tuple, list)):
        return [_plain(v, depth + 1) for v in value]
    return None


def load_states(path) -> MXNetStates:
    """Reads an MXNet ``.states`` file (1.x or 2.0; with or without the dumped optimizer) without MXNet.

    Raises :class:`~optzoo.serialization.CheckpointError` naming the file for anything else, including a
    pickle that references any global besides MXNet's NDArray, optimizer and lr-scheduler classes.
    """
    path = Path(path)
    return loads_states(path.read_bytes(), str(path))


def loads_states(data: bytes, source: str = "MXNet states") -> MXNetStates:
    """:func:`load_states` of bytes (``Updater.get_states()`` output)."""
    if sniff(data) != "pickle":
        raise CheckpointError(f"{source}: not an MXNet optimizer-state file (expected a pickle; the file starts "
                              f"with {bytes(data[:8]).hex() or 'nothing'})")
    obj = safe_loads(data, source)
    optimizer = None
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], MXNetObject):
        obj, optimizer = obj
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of states (index -> state), found "
                              f"{type(obj).__name__}")
    states = {}
    for index, value in obj.items():
        if isinstance(index, bool) or not isinstance(index, (int, str)):
            raise CheckpointError(f"{source}: state key {index!r} is not an index")
        states[index] = _tensors(value, source, f"state {index!r}")
    out = MXNetStates(str(source), states)
    if optimizer is not None:
        if not optimizer.module.startswith("mxnet.optimizer"):
            raise CheckpointError(f"{source}: the dumped optimizer is a {optimizer.qualname}, not an MXNet "
                                  "optimizer")
        out.version = mxnet_version(optimizer.module, optimizer.attrs)
        out.optimizer_class = optimizer.name
        attrs = optimizer.attrs
        out.optimizer_attrs = {k: _plain(v) for k, v in attrs.items() if k not in ("lr_scheduler", "param_dict")}
        sched = attrs.get("lr_scheduler")
        if sched is not None:
            if not isinstance(sched, MXNetObject) or sched.module != "mxnet.lr_scheduler":
                raise CheckpointError(f"{source}: the optimizer's lr_scheduler is {sched!r}, not an MXNet "
                                      "lr_scheduler")
            out.scheduler_class = sched.name
            out.scheduler_attrs = {k: _plain(v) for k, v in sched.attrs.items()}
    return out


# ---------------------------------------------------------------------------------------------- optimizer
def _number(attrs: dict, key: str, source: str, kind=(int, float)):
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise CheckpointError(f"{source}: the pickled lr scheduler's {key!r} is {value!r}")
    return value


def _rebuild_scheduler(mx: MXNetStates):
    """An optzoo scheduler equal to the pickled one from now on (see the module docstring)."""
    name, a, src = mx.scheduler_class, mx.scheduler_attrs, mx.path
    warm = {"warmup_steps": int(_number(a, "warmup_steps", src)),
            "warmup_begin_lr": float(_number(a, "warmup_begin_lr", src)),
            "warmup_mode": a.get("warmup_mode", "linear")}
    lr = mx.optimizer_attrs.get("lr")
    target = float(_number(a, "warmup_final_lr", src))
    original = float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else target
    if name in ("FactorScheduler", "MultiFactorScheduler") and original != target and (
            (mx.num_update or 0) < warm["warmup_steps"]):
        warnings.warn(f"{src}: the warmup ramps to {target} but the decay starts from the optimizer's learning rate "
                      f"{original} (MXNet keeps both); optzoo's scheduler ramps to {original}", stacklevel=4)
    if name == "FactorScheduler":
        step, factor = int(_number(a, "step", src)), float(_number(a, "factor", src))
        stop = float(_number(a, "stop_factor_lr", src))
        replay, count = original, 0
        while count < int(_number(a, "count", src)):  # MXNet's in-place decay, replayed
            count += step
            replay *= factor
            if replay < stop:
                replay = stop
        _check_replay(replay, a, mx)
        return schedulers.FactorScheduler(step=step, factor=factor, stop_factor_lr=stop, base_lr=original, **warm)
    if name == "MultiFactorScheduler":
        steps, factor = [int(s) for s in a.get("step") or []], float(_number(a, "factor", src))
        done = int(_number(a, "cur_step_ind", src))
        _check_replay(original * factor ** done, a, mx)
        return schedulers.MultiFactorScheduler(step=steps, factor=factor, base_lr=original, **warm)
    if name in ("PolyScheduler", "CosineScheduler"):
        base = float(_number(a, "base_lr_orig", src))
        kwargs = {"max_update": int(_number(a, "max_update", src)), "base_lr": base,
                  "final_lr": float(_number(a, "final_lr", src)), **warm}
        if name == "PolyScheduler":
            return schedulers.PolyScheduler(pwr=float(_number(a, "power", src)), **kwargs)
        return schedulers.CosineScheduler(**kwargs)
    raise CheckpointError(f"{src}: unsupported lr scheduler {name!r} (optzoo rebuilds FactorScheduler, "
                          "MultiFactorScheduler, PolyScheduler and CosineScheduler)")


def _check_replay(expected: float, attrs: dict, mx: MXNetStates) -> None:
    pickled = attrs.get("base_lr")
    if not isinstance(pickled, (int, float)) or not math.isclose(expected, pickled, rel_tol=1e-9, abs_tol=1e-15):
        raise CheckpointError(f"{mx.path}: the pickled {mx.scheduler_class} has base_lr={pickled!r}, but decaying "
                              f"the optimizer's learning rate {mx.optimizer_attrs.get('lr')!r} as often as its "
                              f"count says gives {expected!r}; was the learning rate changed during training?")


def _aliases(name: str, version: str | None) -> dict[str, str]:
    """optzoo argument -> MXNet attribute, where they differ."""
    out = {"learning_rate": "lr", "param_idx2name": "idx2name"}
    if version == "1.x":
        if name == "rmsprop":
            out.update(rho="gamma1", momentum="gamma2")
        if name in ("adagrad", "groupadagrad"):
            out["epsilon"] = "float_stable_eps"
    return out


def optimizer_arguments(mx: MXNetStates) -> dict:
    """optzoo constructor arguments (without scheduler) equal to the pickled optimizer's settings."""
    name = mx.optimizer_name
    klass = Optimizer.opt_registry.get(name)
    if klass is None:
        raise CheckpointError(f"{mx.path}: optimizer {mx.optimizer_class!r} has no optzoo counterpart")
    if mx.version == "1.x" and name in _OTHER_RULE_1X:
        raise CheckpointError(f"{mx.path}: MXNet 1.x's {mx.optimizer_class} ({_OTHER_RULE_1X[name]}) is a different "
                              "rule from 2.0's, which optzoo implements; it cannot be resumed exactly")
    attrs = mx.optimizer_attrs
    aliases = _aliases(name, mx.version)
    kwargs = {}
    for arg in klass._argument_names() - {"param_dict", "lr_scheduler", "impl", "param_idx2name"}:
        key = aliases.get(arg, arg)
        if key in attrs:
            kwargs[arg] = attrs[key]
    for key in ("aggregate_num", "rescale_grad"):  # 2.0's AdamW/AdaBelief pickle rescale_grad=None
        if not isinstance(kwargs.get(key), (int, float)):
            kwargs.pop(key, None)
    if name == "adamax" and mx.version == "1.x":
        kwargs["epsilon"] = 0.0
    if name == "lbsgd" and "init_updates" in attrs and attrs.get("updates_per_epoch"):
        kwargs["begin_epoch"] = int(attrs["init_updates"]) // int(attrs["updates_per_epoch"])
    if name in ("adagrad", "groupadagrad") and mx.version == "1.x":
        warnings.warn(f"{mx.path}: MXNet 1.x {mx.optimizer_class} adds epsilon inside the square root; optzoo "
                      "continues with MXNet 2.0's rule (epsilon outside) and epsilon = float_stable_eps",
                      stacklevel=3)
    return kwargs


def build_optimizer(mx: MXNetStates, param_dict=None, index_map: Mapping | None = None) -> Optimizer:
    """The optzoo optimizer that continues the pickled one: class, hyperparameters, scheduler, ``num_update``,
    per-index update counts, lr/wd multipliers. ``index_map`` renumbers MXNet indices (``{mx: optzoo}``)."""
    if not mx.has_optimizer:
        raise CheckpointError(f"{mx.path}: holds only states (no dumped optimizer): build the optimizer yourself")
    kwargs = optimizer_arguments(mx)

    def remap(table: dict, value=lambda v: v) -> dict:
        """Integer keys renumbered by ``index_map`` (indices without a parameter dropped); names kept."""
        try:
            return {(k if index_map is None or isinstance(k, str) else index_map[k]): value(v)
                    for k, v in table.items() if index_map is None or isinstance(k, str) or k in index_map}
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{mx.path}: corrupt optimizer table {table!r} ({err})") from None

    idx2name = remap(mx.idx2name)
    scheduler = _rebuild_scheduler(mx) if mx.scheduler_class else None
    if scheduler is not None:
        kwargs["learning_rate"] = None
    if kwargs.get("use_fused_step") is None:
        kwargs.pop("use_fused_step", None)
    try:
        optimizer = Optimizer.opt_registry[mx.optimizer_name](
            param_dict=param_dict, lr_scheduler=scheduler, param_idx2name=idx2name or None, **kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{mx.path}: the pickled {mx.optimizer_class} settings are not valid: {err}") from None
    num_update = mx.num_update
    if isinstance(num_update, bool) or not isinstance(num_update, int) or num_update < 0:
        raise CheckpointError(f"{mx.path}: bad num_update {num_update!r}")
    optimizer.num_update = num_update
    tables = {}
    for device, table in (mx.optimizer_attrs.get("_all_index_update_counts") or {0: {}}).items():
        if not isinstance(device, int) or not isinstance(table, dict):
            raise CheckpointError(f"{mx.path}: corrupt update-count table")
        for key, count in table.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise CheckpointError(f"{mx.path}: bad update count {count!r} for index {key!r}")
        tables[device] = remap(table)
    tables.setdefault(0, {})
    optimizer._all_index_update_counts = tables
    optimizer._index_update_count = tables[0]
    optimizer.lr_mult = remap(mx.lr_mult, float)
    optimizer.wd_mult = remap(mx.wd_mult, float)
    m_schedule = mx.optimizer_attrs.get("m_schedule")  # Nadam's running product of momenta
    if mx.optimizer_name == "nadam" and isinstance(m_schedule, (int, float)):
        optimizer.load_extra_state({"m_schedule": float(m_schedule)})
    return optimizer


# ---------------------------------------------------------------------------------------------- states
def _to_2x_layout(state, name: str, version: str | None):
    """A 1.x state in 2.0's layout (see the module docstring); 2.0 states are returned unchanged."""
    if version != "1.x" or state is None:
        return state
    if name in _MOM_FIRST_1X and isinstance(state, tuple) and len(state) == 2:
        return (state[1], state[0])
    if name == "rmsprop":
        def fix(s):
            if isinstance(s, tuple) and len(s) == 1:
                return s[0]
            if isinstance(s, tuple) and len(s) == 3 and all(isinstance(t, torch.Tensor) for t in s):
                return (s[1], s[0], s[2])
            return s
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], torch.Tensor) and isinstance(
                state[1], tuple):  # multi-precision (master, inner)
            return (state[0], fix(state[1]))
        return fix(state)
    return state


def _fill(template, leaves: list):
    if template is None:
        return None
    if isinstance(template, torch.Tensor):
        return leaves.pop(0)
    items = [_fill(item, leaves) for item in template]
    return type(template)(*items) if hasattr(template, "_fields") else type(template)(items)


def _weight_like(state, optimizer: Optimizer) -> torch.Tensor:
    """A stand-in weight for a state when the real weight is not at hand (Updater.set_states): float16 when
    the state is a ``(float32 master weight, state)`` pair of a multi-precision optimizer, else the dtype of the
    state's first tensor."""
    leaves = _leaves(state)
    if not leaves:
        return torch.empty(0)
    first = leaves[0]
    if (optimizer.multi_precision and isinstance(state, tuple) and len(state) == 2
            and isinstance(state[0], torch.Tensor) and state[0].dtype == torch.float32):
        low = torch.empty(first.shape, dtype=torch.float16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(_leaves(optimizer.create_state_multi_precision(0, low))) == len(leaves):
                return low
    return torch.empty(first.shape, dtype=first.dtype)


def convert_state(state, optimizer: Optimizer, weight: torch.Tensor | None, version: str | None, where: str):
    """MXNet's state of one parameter as optzoo's: ``optimizer.create_state_multi_precision`` of the weight gives
    the structure, filled leaf by leaf with MXNet's tensors (after :func:`_to_2x_layout`)."""
    name = type(optimizer).__name__.lower()
    state = _to_2x_layout(state, name, version)
    if weight is None:
        weight = _weight_like(state, optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        template = optimizer.create_state_multi_precision(0, weight.detach())
    ours, theirs = _leaves(template), [t for t in _leaves(state) if isinstance(t, torch.Tensor)]
    if len(ours) != len(theirs):
        mp = " (multi-precision: is multi_precision set the same?)" if weight.dtype in _LOW_PRECISION else ""
        raise CheckpointError(f"{where}: MXNet's {name} state has {len(theirs)} tensors, optzoo's has "
                              f"{len(ours)}{mp}")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a.shape != b.shape:
            raise CheckpointError(f"{where}: state tensor {i} has shape {tuple(b.shape)}, the parameter needs "
                                  f"{tuple(a.shape)}")
        if a.dtype != b.dtype:
            raise CheckpointError(f"{where}: state tensor {i} is {b.dtype}, the parameter needs {a.dtype}")
    return _fill(template, [t.to(a.device).contiguous() for a, t in zip(ours, theirs)])
