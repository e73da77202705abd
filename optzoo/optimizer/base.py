"""The optimizer base class: MXNet 2.0's scalar bookkeeping, written once.

Everything an update needs besides the rule itself lives here: learning rate and scheduler, per-parameter
``lr_mult``/``wd_mult`` (``param_dict`` > index > name), update counting per index and device,
gradient rescaling and clipping, weight decay, multi-precision master copies, row-sparse (lazy)
updates, argument validation and the choice between the readable and the fast implementation.
An optimizer family writes its rule as ``_reference_rule`` (one tensor, mirrors the equation) and
``_foreach_rule`` (all tensors at once with ``torch._foreach_*``), and names its native kernel
(``native_rule``, see :mod:`optzoo.native`) with the hyperparameters it takes (``_native_hyper``).

The fast path (``impl="auto"``) is the native kernel where it is built: one C++/OpenMP call per step that
checks every tensor, reads each element once and writes it once. A step the kernel cannot take (CUDA or
float64 tensors, non-contiguous views, sparse gradients of a rule without a lazy kernel...) runs the
``torch._foreach`` path instead, so ``impl="native"`` never changes what is accepted, only how fast.
"""

from __future__ import annotations

import inspect
import itertools
import math
import operator
import warnings
from typing import ClassVar

import numpy as np
import torch

from .. import native
from .input_checks import _flat as _flat_state
from .input_checks import (
    _may_share_memory,
    check_no_shared_memory,
    check_state_layout,
    native_positions,
    repeat_rounds,
)
from .validation import check_bool, check_choice, check_int, check_real, reject_unknown_kwargs

__all__ = [
    "IMPLS",
    "Optimizer",
    "any_decay",
    "create",
    "f32",
    "f32s",
    "one_minus",
    "per_tensor",
    "register",
    "registered_name",
    "rescale_clip",
    "rescale_clip_foreach",
    "rescale_clip_readonly_foreach",
    "sparse_rows",
    "state_class",
]

#: implementation names accepted by ``impl=``; "auto" resolves to the fastest one available.
IMPLS = ("auto", "reference", "foreach", "native")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SHAPE, _DTYPE, _IS_SPARSE = (operator.attrgetter(name) for name in ("shape", "dtype", "is_sparse"))
_KEPT_LAYOUTS = 8  # states' layouts an optimizer keeps as checked (Optimizer._inputs_usual): a few parameter lists


def _state_kind(state):
    """A state's nesting of tuple types (``AdamState``, a master copy's plain tuple...), tensors and None as None:
    what a state's flat layout does not show and its rule reads (``state.mean``)."""
    if isinstance(state, tuple):
        return type(state), tuple(_state_kind(item) for item in state)
    return None


def _kind_name(kind) -> str:
    if kind is None:
        return "tensor or None"
    return f"{kind[0].__name__}({', '.join(_kind_name(item) for item in kind[1])})"


#: NamedTuple state classes a checkpoint may name (nothing else is ever instantiated while loading).
STATE_CLASSES: dict[str, type] = {}


def state_class(klass: type) -> type:
    """Decorator for an optimizer's NamedTuple state, so checkpoints can restore its type."""
    STATE_CLASSES[klass.__name__] = klass
    return klass


def f32(x: float) -> float:
    """Rounds a Python scalar to float32, as MXNet's kernels receive every hyperparameter."""
    return float(np.float32(x))


def f32s(values) -> float | list[float]:
    """Per-tensor scalars rounded to float32 as :func:`f32` does, for a ``torch._foreach_*`` op: ONE float when
    they are all equal (the usual case: one rounding per step, and the op takes a plain scalar), else a list.
    Scalars a traced step hands over as float32 tensors (:mod:`optzoo.optimizer.traced`) are rounded already:
    a 0-d tensor (one value for all) is returned as it is, a 1-d one as its elements."""
    if isinstance(values, torch.Tensor):
        return values if values.dim() == 0 else list(values.unbind(0))
    values = values if isinstance(values, list) else list(values)
    if values and values.count(values[0]) == len(values):
        return f32(values[0])
    return np.asarray(values, dtype=np.float64).astype(np.float32).tolist()


def any_decay(wds) -> bool:
    """Whether some tensor has weight decay: ``any(wds)`` for Python rates; a chunked traced step's rates that
    differ between tensors come as a float32 vector (:mod:`optzoo.optimizer.traced`) and always add ``wd * w``
    (0 where a tensor has none), so that its graph does not depend on their values."""
    return isinstance(wds, torch.Tensor) or any(wds)


def per_tensor(fn, *columns) -> list:
    """``[fn(*args) for args in zip(*columns)]``, calling ``fn`` once per distinct ``args``: per-tensor scalars
    (bias corrections, decay factors) usually share one update count and one learning rate."""
    keys = list(zip(*columns))
    if keys and keys.count(keys[0]) == len(keys):
        return [fn(*keys[0])] * len(keys)
    cache: dict = {}
    return [cache[key] if key in cache else cache.setdefault(key, fn(*key)) for key in keys]


def one_minus(x: float) -> float:
    """``1 - x`` evaluated in float32, as MXNet's kernels do (``1 - 0.999`` is 0.000999987 there)."""
    return f32(1.0 - f32(x))


def rescale_clip(grad: torch.Tensor, rescale_grad: float, clip_gradient: float | None) -> torch.Tensor:
    """``clip(rescale_grad * grad, clip_gradient)`` as a new tensor (the caller's gradient is never modified)."""
    g = grad * f32(rescale_grad)
    if clip_gradient is not None:
        c = f32(clip_gradient)
        g.clamp_(-c, c)
    return g


def rescale_clip_foreach(grads, rescale_grad: float, clip_gradient: float | None) -> list[torch.Tensor]:
    """:func:`rescale_clip` for a list of gradients (new tensors)."""
    gs = torch._foreach_mul(list(grads), f32(rescale_grad))
    if clip_gradient is not None:
        c = f32(clip_gradient)
        torch._foreach_clamp_min_(gs, -c)
        torch._foreach_clamp_max_(gs, c)
    return gs


def rescale_clip_readonly_foreach(grads, rescale_grad: float, clip_gradient: float | None) -> list[torch.Tensor]:
    """:func:`rescale_clip_foreach` for a rule that only reads the result: the caller's gradients themselves when
    there is nothing to rescale or clip (no copy), else new tensors."""
    if f32(rescale_grad) == 1.0 and clip_gradient is None:
        return list(grads)
    return rescale_clip_foreach(grads, rescale_grad, clip_gradient)


def sparse_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, values)`` of a sparse COO gradient seen as MXNet's row_sparse: duplicate indices summed,
    rows sorted; a gradient sparse in more than its first dimension is gathered row by row."""
    grad = grad.coalesce()
    if grad.sparse_dim() == 1:
        return grad.indices()[0], grad.values()
    rows = torch.unique(grad.indices()[0])
    return rows, grad.to_dense().index_select(0, rows)


def decayed_grads_foreach(weights, grads, wds, rescale_grad: float, clip_gradient: float | None):
    """MXNet 2.0's canonical gradient for every tensor, ``clip(rescale_grad * grad) + wd * weight`` (new tensors)."""
    if any_decay(wds) and f32(rescale_grad) == 1.0 and clip_gradient is None:  # the same sum in one pass fewer
        gs = torch._foreach_mul(list(weights), f32s(wds))
        torch._foreach_add_(gs, list(grads))
        return gs
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    if any_decay(wds):
        torch._foreach_add_(gs, torch._foreach_mul(list(weights), f32s(wds)))
    return gs


def _leaves(state):
    """Tensors of a (nested tuple) state, depth first; ``None`` entries are skipped."""
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    out = []
    for item in state:
        out.extend(_leaves(item))
    return out


def _map_state(fn, state):
    """Applies ``fn`` to every tensor of a state, keeping its (named) tuple structure."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    items = [_map_state(fn, item) for item in state]
    return type(state)(*items) if hasattr(state, "_fields") else type(state)(items)


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _update_takes_lists(update) -> bool:
    """Whether an overridden ``update`` is MXNet 2.0's (lists: its first argument is ``indices`` or another
    plural name) rather than MXNet 1.x's (``index``, ``i``, ...: one parameter per call)."""
    try:
        names = [p for p in inspect.signature(update).parameters if p != "self"]
    except (TypeError, ValueError):
        return False
    return bool(names) and (names[0] == "indices" or (names[0].endswith("s") and names[0] != "index"))


class Optimizer:
    """Base class of every optzoo optimizer (MXNet 2.0 ``mxnet.optimizer.Optimizer``).

    Args:
        rescale_grad: multiplies every gradient before clipping (the Trainer sets ``1/batch_size``).
        param_idx2name: ``{index: name}``; names are used for ``lr_mult``/``wd_mult`` lookups.
        wd: weight decay (L2 penalty coefficient).
        clip_gradient: clip the rescaled gradient to ``[-clip_gradient, clip_gradient]``; ``None``: no clipping.
        learning_rate: the learning rate; ``None`` means the optimizer's default, or the scheduler's when one is given.
        lr_scheduler: a callable ``num_update -> lr`` (see :mod:`optzoo.lr_scheduler`).
        begin_num_update: update count to start from (the first update of an index sees ``t = begin_num_update + 1``).
        multi_precision: keep a float32 master copy (and float32 state) for float16/bfloat16 weights.
        param_dict: ``{index: obj}`` where ``obj.lr_mult``/``obj.wd_mult`` are read at every update.
        aggregate_num: accepted for MXNet compatibility; optzoo's fast path always updates all tensors at once.
        use_fused_step: MXNet's switch: ``True`` = fast path, ``False`` = readable path.
        impl: ``"auto"`` (the fastest available: ``"native"``, else ``"foreach"``), ``"reference"`` (readable,
            one tensor at a time), ``"foreach"`` (``torch._foreach_*``) or ``"native"`` (the C++ kernel; an
            error where it cannot be built).
    """

    opt_registry: ClassVar[dict[str, type]] = {}
    #: how row-sparse gradients are handled: "lazy" (``lazy_update`` decides), "dense" (densified) or "none".
    sparse_support = "dense"
    #: dtype of the state tensors (None: the weight's dtype), e.g. MXNet's always-float32 AdaGrad history.
    state_dtype: torch.dtype | None = None
    #: default learning rate (the subclass's MXNet 2.0 default).
    default_learning_rate = 0.01
    #: name of the rule's native kernel (optzoo/native/src), or None
    native_rule: ClassVar[str | None] = None
    #: the rule reads whole-tensor norms (trust ratios): a sharded step must add up the shards' partial sums
    uses_tensor_norms: ClassVar[bool] = False
    #: ``reduce(sums, owners)`` while :mod:`optzoo.sharding` runs a step on local shards, else None
    #: (see ``optzoo.optimizer.trust_ratio._tensor_norms``)
    norm_sum_reducer = None
    #: a state that matches its template (:meth:`_state_template`: shape and dtype per entry, by the weight's shape
    #: and dtype alone) needs no other shape check: set where ``_state_shape_fits`` is overridden only to accept the
    #: shapes ``create_state`` makes (factored moments, preconditioners), so that such states take the list-level
    #: check of :meth:`_inputs_usual` instead of the entry-by-entry one
    template_fixes_state_shapes: ClassVar[bool] = False

    def __init__(self, rescale_grad=1.0, param_idx2name=None, wd=0.0, clip_gradient=None, learning_rate=None,
                 lr_scheduler=None, begin_num_update=0, multi_precision=False, param_dict=None,
                 aggregate_num=None, use_fused_step=None, impl=None, **kwargs):
        reject_unknown_kwargs(type(self).__name__, kwargs, self._argument_names() if kwargs else ())
        self.rescale_grad = check_real("rescale_grad", rescale_grad)
        self.wd = check_real("wd", wd, 0.0)
        self.clip_gradient = check_real("clip_gradient", clip_gradient, 0.0, low_open=True, allow_none=True)
        if lr_scheduler is not None and not callable(lr_scheduler):
            raise TypeError(f"lr_scheduler must be callable (num_update -> lr) or None, got {lr_scheduler!r}")
        self.lr_scheduler = lr_scheduler
        if learning_rate is None and lr_scheduler is None:
            learning_rate = self.default_learning_rate
        self.lr = check_real("learning_rate", learning_rate, 0.0, allow_none=True)
        if self.lr is not None and lr_scheduler is not None and hasattr(lr_scheduler, "base_lr"):
            lr_scheduler.base_lr = self.lr  # an explicit learning_rate rescales the whole schedule
        self.begin_num_update = check_int("begin_num_update", begin_num_update, 0)
        self.num_update = self.begin_num_update
        self._all_index_update_counts: dict[int, dict] = {0: {}}
        self._index_update_count = self._all_index_update_counts[0]
        self.multi_precision = check_bool("multi_precision", multi_precision)
        if aggregate_num is not None and aggregate_num != math.inf:
            check_int("aggregate_num", aggregate_num, 0)
        self.aggregate_num = 1 if aggregate_num is None else aggregate_num
        if param_idx2name is not None and not isinstance(param_idx2name, dict):
            raise TypeError(f"param_idx2name must be a dict {{index: name}}, got {type(param_idx2name).__name__}")
        self.idx2name = dict(param_idx2name or {})
        if param_dict is not None and not isinstance(param_dict, dict):
            raise TypeError(f"param_dict must be a dict {{index: parameter}}, got {type(param_dict).__name__}")
        self.param_dict = param_dict if param_dict is not None else {}
        self._impl_request = impl if impl is not None else "auto" if use_fused_step in (None, True) else "reference"
        self.impl = self._resolve_impl(impl, use_fused_step)
        self.lr_mult: dict = {}
        self.wd_mult: dict = {}
        self._warned_low_precision = False

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def _argument_names(cls) -> set[str]:
        names = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None and klass is not object:
                names.update(p for p in inspect.signature(init).parameters if p not in ("self", "kwargs"))
        return names

    def _has_fast_rule(self) -> bool:
        cls = type(self)
        return cls._foreach_rule is not Optimizer._foreach_rule or cls._foreach_parts is not Optimizer._foreach_parts

    def _overrides_fused_step_only(self) -> bool:
        """An MXNet 2.0-style custom optimizer writing its own ``fused_step`` (not ``_foreach_rule``): as in MXNet,
        ``fused_step`` runs when ``use_fused_step=True`` (or ``impl="foreach"``), ``step`` otherwise."""
        return type(self).fused_step is not Optimizer.fused_step and not self._has_fast_rule()

    def _resolve_impl(self, impl, use_fused_step) -> str:
        if use_fused_step is not None:
            check_bool("use_fused_step", use_fused_step)
        if impl is not None:
            check_choice("impl", impl, IMPLS)
            if use_fused_step is not None and (impl == "reference") == use_fused_step:
                raise ValueError(f"impl={impl!r} contradicts use_fused_step={use_fused_step}; pass only one of them")
        elif use_fused_step is not None:
            impl = "auto" if use_fused_step else "reference"
        else:
            impl = "auto"
        if impl != "reference" and self._overrides_fused_step_only():
            self._native_id = -1
            if impl == "native":
                raise ValueError(f"{type(self).__name__} has no native kernel; use impl='foreach' (its fused_step)")
            return "foreach" if (impl == "foreach" or use_fused_step) else "reference"
        if impl != "reference" and not self._has_fast_rule():
            if impl in ("foreach", "native") or use_fused_step:
                raise ValueError(f"{type(self).__name__} has no fast implementation; use impl='reference'")
            impl = "reference"
        self._native_id = -1
        if impl in ("auto", "native") and self.native_rule is not None and self._native_rule_applies():
            self._native_id = native.rule_id(self.native_rule)
        if impl == "native" and self._native_id < 0:
            reason = native.unavailable_reason() or f"no native kernel named {self.native_rule!r}"
            raise ValueError(f"{type(self).__name__}: impl='native' is not available here ({reason}); "
                             "use impl='auto' or 'foreach'")
        if impl == "auto":
            impl = "native" if self._native_id >= 0 else "foreach"
        return impl

    @property
    def use_fused_step(self) -> bool:
        return self.impl != "reference"

    def get_config(self) -> dict:
        """The constructor arguments (JSON-able) that rebuild this optimizer, without its state."""
        config = {}
        for name in self._argument_names() - {"param_dict", "lr_scheduler", "use_fused_step"}:
            if name == "learning_rate":
                value = self.lr
            elif name == "impl":
                value = self._impl_request  # "auto" stays "auto": the native kernels may be missing elsewhere
            elif name == "param_idx2name":
                value = {str(k): v for k, v in self.idx2name.items()} or None
            else:
                value = getattr(self, name, None)
            if isinstance(value, float) and math.isinf(value):
                value = "inf"
            config[name] = value
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_config().items()) if v is not None)
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ learning rate and multipliers
    @property
    def learning_rate(self) -> float:
        if self.lr_scheduler is not None:
            return self.lr_scheduler(self.num_update)
        return self.lr

    def set_learning_rate(self, lr: float) -> None:
        if self.lr_scheduler is not None:
            raise ValueError("set_learning_rate: this optimizer's learning rate is owned by its lr_scheduler; "
                             "change the scheduler instead")
        self.lr = check_real("learning_rate", lr, 0.0)

    def set_lr_mult(self, args_lr_mult: dict) -> None:
        """Per-parameter learning-rate multipliers, keyed by index or name (replaces earlier ones)."""
        self.lr_mult = self._check_mults("set_lr_mult", args_lr_mult)

    def set_wd_mult(self, args_wd_mult: dict) -> None:
        """Per-parameter weight-decay multipliers, keyed by index or name (replaces earlier ones)."""
        self.wd_mult = self._check_mults("set_wd_mult", args_wd_mult)

    @staticmethod
    def _check_mults(owner, mults) -> dict:
        if not isinstance(mults, dict):
            raise TypeError(f"{owner} expects a dict {{index or name: multiplier}}, got {type(mults).__name__}")
        return {k: check_real(f"{owner}[{k!r}]", v, 0.0) for k, v in mults.items()}

    def _set_current_device(self, device_id: int) -> None:
        self._index_update_count = self._all_index_update_counts.setdefault(device_id, {})

    _set_current_context = _set_current_device

    def _update_count(self, index) -> None:
        indices = _as_list(index)
        if len(indices) > 1 and len(set(indices)) == len(indices):  # each counted once: one pass for the list
            get, begin = self._index_update_count.get, self.begin_num_update
            counts = [get(i, begin) + 1 for i in indices]
            self._index_update_count.update(zip(indices, counts))
            self.num_update = max(self.num_update, max(counts))
            return
        for idx in indices:
            count = self._index_update_count.get(idx, self.begin_num_update) + 1
            self._index_update_count[idx] = count
            self.num_update = max(count, self.num_update)

    def _multiplier(self, index, attr: str, table: dict) -> float:
        if index in self.param_dict:
            return getattr(self.param_dict[index], attr, 1.0)
        if index in table:
            return table[index]
        if index in self.idx2name:
            return table.get(self.idx2name[index], 1.0)
        return 1.0

    def _get_lrs(self, indices) -> list[float]:
        base = self.lr_scheduler(self.num_update) if self.lr_scheduler is not None else self.lr
        if not (self.param_dict or self.lr_mult):
            return [base] * len(indices)  # no multipliers: ``base * 1.0`` for every index
        return [base * self._multiplier(i, "lr_mult", self.lr_mult) for i in indices]

    def _get_wds(self, indices) -> list[float]:
        if not (self.param_dict or self.wd_mult):
            return [self.wd] * len(indices)
        return [self.wd * self._multiplier(i, "wd_mult", self.wd_mult) for i in indices]

    def _get_lr(self, index) -> float:
        return self._get_lrs([index])[0]

    def _get_wd(self, index) -> float:
        return self._get_wds([index])[0]

    def extra_state(self) -> dict:
        """JSON-able optimizer-wide state beyond the per-parameter tensors (e.g. Nadam's momentum schedule)."""
        return {}

    def load_extra_state(self, extra: dict) -> None:
        """Restores :meth:`extra_state`."""

    # ------------------------------------------------------------------ states
    def create_state(self, index, weight: torch.Tensor):
        """The optimizer state of one weight (``None`` if the rule has none)."""
        return None

    def _zeros(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(weight, dtype=self.state_dtype or weight.dtype,
                                memory_format=torch.contiguous_format)

    def _uses_master_copy(self, weight: torch.Tensor, masters: bool = True) -> bool:
        """Whether ``weight`` is stepped through a float32 master copy; ``masters``: whether the caller unwraps
        master copies at all (see :meth:`_check_inputs`)."""
        return masters and self.multi_precision and weight.dtype in _LOW_PRECISION

    def create_state_multi_precision(self, index, weight: torch.Tensor):
        """``(weight32, state)`` for low-precision weights with ``multi_precision``, else ``create_state``."""
        if self._uses_master_copy(weight):
            weight32 = weight.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
            return (weight32, self.create_state(index, weight32))
        if weight.dtype in _LOW_PRECISION and not self._warned_low_precision:
            warnings.warn(f"Accumulating with {weight.dtype} in optimizer can lead to poor accuracy or slow "
                          "convergence. Consider using multi_precision=True.", stacklevel=2)
            self._warned_low_precision = True
        return self.create_state(index, weight)

    # ------------------------------------------------------------------ updates
    def update(self, indices, weights, grads, states) -> None:
        """Updates ``weights`` (and ``states``) in place. Lists as in MXNet 2.0, or one index and tensors as in 1.x."""
        if self.impl == "native" and self._native_update(indices, weights, grads, states, False):
            return
        if not isinstance(indices, (list, tuple)):
            indices, weights, grads, states = [indices], [weights], [grads], [states]
        indices, weights, grads, states = list(indices), list(weights), list(grads), list(states)
        self._check_inputs(indices, weights, grads, states, masters=False)  # update steps the states as given
        if self.impl == "reference":
            self.step(indices, weights, grads, states)
        else:
            self.fused_step(indices, weights, grads, states)

    def update_multi_precision(self, indices, weights, grads, states) -> None:
        """As :meth:`update`; low-precision weights with ``multi_precision`` are updated through their float32
        master copy (the first element of their state) and then rounded back."""
        if self.impl == "native" and self._native_update(indices, weights, grads, states, self.multi_precision):
            return
        if not isinstance(indices, (list, tuple)):
            indices, weights, grads, states = [indices], [weights], [grads], [states]
        masters = [self._uses_master_copy(w) for w in weights] if self.multi_precision else [False]
        if not any(masters):
            return self._dispatch_update(indices, weights, grads, states)
        for w, s, master in zip(weights, states, masters):
            if master and not (isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], torch.Tensor)
                               and s[0].dtype == torch.float32 and s[0].shape == w.shape):
                raise ValueError("multi_precision state must be (weight32, state) as made by "
                                 "create_state_multi_precision")
        inner_w = [s[0] if m else w for w, s, m in zip(weights, states, masters)]
        inner_g = [g.to(torch.float32) if m else g for g, m in zip(grads, masters)]
        inner_s = [s[1] if m else s for s, m in zip(states, masters)]
        for w, g in zip(weights, grads):  # checked here: the master copies hide the caller's tensors
            self._check_pair(w, g)
        self._dispatch_update(list(indices), inner_w, inner_g, inner_s)
        with torch.no_grad():
            for w, w32, m in zip(weights, inner_w, masters):
                if m:
                    w.copy_(w32)

    def _dispatch_update(self, indices, weights, grads, states):
        # A custom optimizer overriding update: MXNet 2.0 style takes lists (update(self, indices, weights, grads,
        # states)), MXNet 1.x style one parameter (update(self, index, weight, grad, state)); the name of its first
        # argument tells them apart (see _update_takes_lists).
        if type(self).update is not Optimizer.update and not _update_takes_lists(type(self).update):
            for i, w, g, s in zip(indices, weights, grads, states):
                self.update(i, w, g, s)
        else:
            self.update(indices, weights, grads, states)

    def step(self, indices, weights, grads, states) -> None:
        """Readable path: one tensor at a time through ``_reference_rule``."""
        self._run(indices, weights, grads, states, fast=False)

    def fused_step(self, indices, weights, grads, states) -> None:
        """Fast path: all dense tensors at once through ``_foreach_rule``."""
        self._run(indices, weights, grads, states, fast=True)

    def _run(self, indices, weights, grads, states, fast: bool) -> None:
        self._update_count(indices)
        lrs, wds = self._get_lrs(indices), self._get_wds(indices)
        ts = list(map(self._index_update_count.__getitem__, indices))
        self._apply(indices, weights, grads, states, lrs, wds, ts, fast)

    def _apply(self, indices, weights, grads, states, lrs, wds, ts, fast: bool) -> None:
        """Runs the rule with finished per-tensor scalars (lr, wd, t); used by the torch adapter too."""
        if not weights:
            return
        rounds = None if len(set(map(id, weights))) == len(weights) else repeat_rounds(indices, weights, states)
        if rounds is not None:  # the same entry listed twice: one update after the other, as MXNet
            columns = (indices, weights, grads, states, lrs, wds, ts)
            for r in rounds:
                self._apply(*([column[k] for k in r] for column in columns), fast)
            return
        with torch.no_grad():
            if fast and not any(g.is_sparse for g in grads):  # all dense: the lists as they are
                if self.impl != "native" or not self._native_call(indices, weights, grads, states, lrs, wds, ts,
                                                                  False):
                    self._foreach_rule(weights, grads, states, lrs, wds, ts)
                return
            dense = ([], [], [], [], [], [], [])
            for item in zip(indices, weights, grads, states, lrs, wds, ts):
                grad = item[2]
                if grad.is_sparse:
                    if self.sparse_support == "lazy" and getattr(self, "lazy_update", False):
                        self._lazy_update(*item)
                        continue
                    item = item[:2] + (grad.to_dense(),) + item[3:]
                for column, value in zip(dense, item):
                    column.append(value)
            if not dense[0]:
                return
            if fast:
                if self.impl != "native" or not self._native_call(*dense[:4], *dense[4:], False):
                    self._foreach_rule(*dense[1:])
            else:
                for _, w, g, s, lr, wd, t in zip(*dense):
                    self._reference_rule(w, g, s, lr, wd, t)

    def _lazy_update(self, index, weight, grad, state, lr, wd, t) -> None:
        """Row-sparse lazy update: the dense rule applied to the rows present in the gradient only."""
        rows, values = sparse_rows(grad)
        if rows.numel() == 0:
            return
        if self.impl == "native":
            aux, commit = self._native_aux([index], [lr], [t])
            values = values.contiguous()
            with native_positions([index]):
                done = native.load().step_rows(self._native_kernel(), weight, rows, values, state, lr, wd, t,
                                               self._native_hyper(), False, aux)
            if done:
                if commit is not None:
                    commit()
                return
        sub_weight = weight.index_select(0, rows)
        sub_state = _map_state(lambda s: s.index_select(0, rows), state)
        self._reference_rule(sub_weight, values, sub_state, lr, wd, t)
        weight.index_copy_(0, rows, sub_weight)
        for full, part in zip(_leaves(state), _leaves(sub_state)):
            full.index_copy_(0, rows, part)

    # ------------------------------------------------------------------ the native kernel
    def _native_rule_applies(self) -> bool:
        """False for a subclass of the class naming the native kernel that overrides anything but ``__init__``:
        its Python code must run, so it gets the foreach path."""
        for klass in type(self).__mro__:
            if "native_rule" in klass.__dict__:
                return True
            if any(callable(v) or isinstance(v, property) for k, v in klass.__dict__.items() if k != "__init__"):
                return False
        return True  # pragma: no cover - only called when some class names a rule

    def _native_clip(self) -> float:
        """``clip_gradient`` as the native rules take it (-1: no clipping)."""
        return -1.0 if self.clip_gradient is None else float(self.clip_gradient)

    def _native_hyper(self) -> list[float]:
        """The hyperparameters the native rule takes, in its order (see the rule's source file)."""
        raise NotImplementedError(f"{type(self).__name__} names a native rule but not its hyperparameters")

    def _native_kernel(self) -> int:
        """The id of the native rule this step runs (an optimizer whose state layout depends on a setting, like
        RMSProp's ``centered``, picks its rule here)."""
        return self._native_id

    def _native_aux(self, indices, lrs, ts):
        """``(aux, commit)``: extra per-tensor values for the native rule (``None``: none) and a callable that
        records any optimizer-wide state they advance once the kernel has run (``None``: nothing to record)."""
        return None, None

    def _native_call(self, indices, weights, grads, states, lrs, wds, ts, multi_precision: bool) -> bool:
        """Runs the native rule over the lists; False (nothing written) when some tensor is not one it takes."""
        if self.norm_sum_reducer is not None:
            return False  # the kernel would take the local shards' norms; the foreach path reduces them
        aux, commit = self._native_aux(indices, lrs, ts)
        with native_positions(indices):  # the core names bad tensors by position: name the parameters
            done = native.load().step(self._native_kernel(), weights, grads, states, lrs, wds, ts,
                                      self._native_hyper(), multi_precision, aux)
        if not done:
            return False
        if commit is not None:
            commit()
        return True

    def _native_update(self, indices, weights, grads, states, multi_precision: bool) -> bool:
        """The whole of :meth:`update` in one native call when every tensor qualifies (dense CPU float32, or
        float16/bfloat16 with a master copy): update counts, learning rates and the rule, with no per-tensor
        Python work beyond the counts. False, with nothing changed, otherwise."""
        if isinstance(indices, tuple):
            indices, weights, grads, states = list(indices), list(weights), list(grads), list(states)
        elif not isinstance(indices, list):
            indices, weights, grads, states = [indices], [weights], [grads], [states]
        if not (isinstance(weights, list) and isinstance(grads, list) and isinstance(states, list)):
            return False
        if not indices or len(set(indices)) != len(indices):
            return False  # repeated indices count twice: the general path handles them
        get, begin = self._index_update_count.get, self.begin_num_update
        ts = [get(i, begin) + 1 for i in indices]
        num_update = max(self.num_update, max(ts))
        base_lr = float(self.lr_scheduler(num_update) if self.lr_scheduler is not None else self.lr)
        if self.param_dict or self.lr_mult:
            lrs = [base_lr * self._multiplier(i, "lr_mult", self.lr_mult) for i in indices]
        else:
            lrs = base_lr
        if self.param_dict or self.wd_mult:
            wds = [self.wd * self._multiplier(i, "wd_mult", self.wd_mult) for i in indices]
        else:
            wds = float(self.wd)
        if not self._native_call(indices, weights, grads, states, lrs, wds, ts, multi_precision):
            return False
        self._index_update_count.update(zip(indices, ts))
        self.num_update = num_update
        return True

    # ------------------------------------------------------------------ the rule (subclasses)
    def _reference_rule(self, weight, grad, state, lr: float, wd: float, t: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement an update rule")

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts) -> None:
        """The fast path over all tensors; by default the arithmetic and scalars of :meth:`_foreach_parts` (only
        called when one of the two is overridden, see ``_has_fast_rule``)."""
        fn, args, kwargs = self._foreach_parts(weights, grads, states, lrs, wds, ts)
        fn(*args, **kwargs)

    #: the keyword arguments of :meth:`_foreach_parts` that change from step to step (a traced step passes them
    #: as float32 tensors, so that a new learning rate or update count is new data, not a new graph)
    _step_scalars: ClassVar[tuple[str, ...]] = ()

    def _foreach_parts(self, weights, grads, states, lrs, wds, ts):
        """``(fn, args, kwargs)`` such that ``fn(*args, **kwargs)`` is this step of ``_foreach_rule``: ``fn`` the
        rule's tensor arithmetic (a module-level function torch.compile can trace), the per-tensor scalars in
        ``kwargs`` computed here in Python, rounded as MXNet rounds them. ``None``: the rule is not split this
        way (:mod:`optzoo.optimizer.traced` refuses it)."""
        return None

    # ------------------------------------------------------------------ input checks
    def _check_pair(self, weight, grad) -> None:
        if not isinstance(weight, torch.Tensor) or not isinstance(grad, torch.Tensor):
            raise TypeError(f"weights and grads must be torch.Tensor, got {type(weight).__name__} and "
                            f"{type(grad).__name__}")
        if weight.shape != grad.shape:
            raise ValueError(f"grad shape {tuple(grad.shape)} does not match weight shape {tuple(weight.shape)}")
        if weight.dtype != grad.dtype:
            raise ValueError(f"grad dtype {grad.dtype} does not match weight dtype {weight.dtype}")
        if weight.device != grad.device:
            raise ValueError(f"grad is on {grad.device} but weight is on {weight.device}")
        if not weight.is_floating_point():
            raise TypeError(f"weights must be floating point tensors, got {weight.dtype}")
        if grad.is_sparse and self.sparse_support == "none":
            raise ValueError(f"{type(self).__name__} cannot take a sparse gradient; pass grad.to_dense()")

    def _state_shape_fits(self, weight, leaf) -> bool:
        """Whether a state tensor can belong to ``weight``: states share the weight's first dimension (scalars fit
        any weight); an optimizer with other state shapes (factored moments, preconditioners) overrides this."""
        return leaf.shape[:1] == weight.shape[:1] or leaf.numel() == 1

    def _check_inputs(self, indices, weights, grads, states, masters: bool = True) -> bool:
        """ValueError/TypeError naming the entry for bad input. True when the lists are the usual case
        (:meth:`_inputs_usual`: then no gradient is sparse and no entry repeats), False when they were checked
        entry by entry. ``masters``: whether the caller unwraps master copies (``update_multi_precision``, the
        torch.optim step), so that a low-precision weight's state is the ``(weight32, state)`` pair with
        ``multi_precision``; :meth:`update` steps the states as they are given (False)."""
        if not (len(indices) == len(weights) == len(grads) == len(states)):
            raise ValueError(f"update needs as many indices, weights, grads and states; got {len(indices)}, "
                             f"{len(weights)}, {len(grads)} and {len(states)}")
        if self._inputs_usual(indices, weights, grads, states, masters):
            return True
        for index, w, g, s in zip(indices, weights, grads, states):
            self._check_pair(w, g)
            self._check_state_layout(index, w, s, masters=masters)
            for leaf in _leaves(s):
                if leaf.device != w.device:
                    raise ValueError(f"state of parameter {index!r} is on {leaf.device} but its weight is on "
                                     f"{w.device}")
                if not self._state_shape_fits(w, leaf):
                    raise ValueError(f"state of parameter {index!r} has shape {tuple(leaf.shape)}, which does not "
                                     f"fit weight shape {tuple(w.shape)}")
        rounds = repeat_rounds(indices, weights, states) or [range(len(indices))]
        for r in rounds:  # a repeated entry is updated once per occurrence, round by round (see _apply)
            check_no_shared_memory(*([column[k] for k in r] for column in (indices, weights, grads, states)))
        return False

    def _inputs_usual(self, indices, weights, grads, states, masters: bool = True) -> bool:
        """True when every entry certainly passes :meth:`_check_inputs`: the usual case (dense floating-point
        pairs of equal shapes and dtypes, one device, states exactly as ``create_state`` makes them, no entry
        repeated, no shared memory), checked in a few passes over the lists instead of entry by entry. False
        means "check entry by entry" (which names what is wrong), not that something is.

        With the native kernels built (:func:`optzoo.native.built`) one C++ pass makes every check but the states'
        comparison with ``create_state``'s, and hands back the states' layout (every shape and dtype) as bytes:
        a layout that matched once is kept (a few per optimizer), so a step whose layout is one of them compares
        no template at all."""
        klass = type(self)
        if klass._check_pair is not Optimizer._check_pair:
            return False
        if klass._state_shape_fits is not Optimizer._state_shape_fits and not (
                klass.template_fixes_state_shapes and self.norm_sum_reducer is None):  # a shard's template: whole
            return False
        lib = native.built()
        if lib is None:
            return self._inputs_usual_python(indices, weights, grads, states, masters)
        kept = self.__dict__.setdefault("_usual_layouts", {})
        layouts = kept.setdefault(bool(self.multi_precision and masters), [])
        found = lib.usual_inputs(*(v if type(v) is list else list(v) for v in (weights, grads, states)), layouts)
        if found is None:
            return False
        if found is not True:
            if not self._states_as_made(indices, weights, states, masters=masters):
                return False
            layouts.append(found)
            del layouts[:-_KEPT_LAYOUTS]
        return self._state_types_as_made(states)

    def _state_types_as_made(self, states) -> bool:
        """Whether every state's own type (not its entries') is one ``create_state`` made: a plain tuple where the
        rule reads ``AdamState``'s names goes to the entry-by-entry check, which names it."""
        made = {kind[0] if kind else None for kind in self.__dict__.get("_state_kinds", {}).values()}
        return {t if issubclass(t, tuple) else None for t in set(map(type, states))} <= made

    def _states_as_made(self, indices, weights, states, flats=None, masters: bool = True) -> bool:
        """Whether every state has the flat entries (None, or a tensor's shape and dtype) of the state
        ``create_state`` makes for its weight (one template per weight shape and dtype); False, never an error,
        where it has not. ``flats``: the states already flattened (their leaves tensors or None); ``masters`` as
        in :meth:`_check_inputs`."""
        if flats is None:
            flats = ([state] if isinstance(state, torch.Tensor) else _flat_state(state) for state in states)
        expected = {}  # (shape, dtype) -> the flat state create_state makes
        for index, weight, flat in zip(indices, weights, flats):
            key = (weight.shape, weight.dtype)
            template = expected.get(key)
            if template is None:
                template = expected[key] = self._state_template(index, weight, masters=masters)
                if template is None:
                    return False
            if [None if leaf is None else (leaf.shape, leaf.dtype) for leaf in flat] != template:
                return False
        return True

    def _inputs_usual_python(self, indices, weights, grads, states, masters: bool = True) -> bool:
        """:meth:`_inputs_usual` without the native kernels."""
        if not all(map(isinstance, itertools.chain(weights, grads), itertools.repeat(torch.Tensor))):
            return False
        shapes, dtypes = list(map(_SHAPE, weights)), list(map(_DTYPE, weights))
        if shapes != list(map(_SHAPE, grads)) or dtypes != list(map(_DTYPE, grads)):
            return False
        if not all(dtype.is_floating_point for dtype in set(dtypes)) or any(map(_IS_SPARSE, grads)):
            return False
        if len(set(map(id, weights))) != len(weights):
            return False  # a repeated entry: updated round by round (see _apply)
        flats = [[state] if isinstance(state, torch.Tensor) else _flat_state(state) for state in states]
        leaves = [leaf for flat in flats for leaf in flat if leaf is not None]
        if not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
            return False
        if not self._states_as_made(indices, weights, states, flats, masters):
            return False
        return self._state_types_as_made(states) and not _may_share_memory(list(weights) + leaves, list(grads))

    def _check_state_layout(self, index, weight, state, check_device: bool = True, masters: bool = True) -> None:
        """ValueError unless ``state`` has the layout, shapes and dtypes of the state this optimizer makes for
        ``weight`` (see :func:`~optzoo.optimizer.input_checks.check_state_layout`; ``masters`` as in
        :meth:`_check_inputs`)."""
        try:
            check_state_layout(index, weight, state, self._state_template(index, weight, masters=masters),
                               check_device)
        except ValueError:  # the cached template may predate a settings change (RMSProp's centered): once more
            check_state_layout(index, weight, state, self._state_template(index, weight, fresh=True, masters=masters),
                               check_device)
        made = self.__dict__.get("_state_kinds", {}).get(
            (tuple(weight.shape), weight.dtype, self._uses_master_copy(weight, masters)), None)
        if made is not None and _state_kind(state) != made:
            given = _kind_name(_state_kind(state)) if isinstance(state, tuple) else type(state).__name__
            raise ValueError(f"the state of parameter {index!r} is a {given}, expected a {_kind_name(made)} as "
                             "create_state makes it (its rule reads the entries by name)")

    def _state_template(self, index, weight, fresh: bool = False, masters: bool = True):
        """``[(shape, dtype) or None, ...]``: the flat entries of the state ``create_state_multi_precision`` makes
        for ``weight`` (``create_state`` without ``masters``; made once per shape and dtype on the meta device,
        again with ``fresh``), or None where it cannot tell."""
        key = (tuple(weight.shape), weight.dtype, self._uses_master_copy(weight, masters))
        templates = self.__dict__.setdefault("_state_templates", {})
        if fresh:
            self.__dict__.pop("_usual_layouts", None)  # found with the templates replaced here
        if fresh or key not in templates:
            try:
                meta = torch.empty(key[0], dtype=torch.float32 if key[2] else weight.dtype, device="meta")
                state = self.create_state(index, meta)
                if key[2]:
                    state = (meta, state)
                templates[key] = [None if leaf is None else (tuple(leaf.shape), leaf.dtype)
                                  for leaf in _flat_state(state)]
                self.__dict__.setdefault("_state_kinds", {})[key] = _state_kind(state)
            except Exception:  # a custom create_state that cannot run on meta tensors: no template
                templates[key] = None
        return templates[key]

    # ------------------------------------------------------------------ registry
    @staticmethod
    def register(klass: type | None = None, *, name: str | None = None):
        return register(klass, name=name)

    @staticmethod
    def create_optimizer(name: str, **kwargs) -> Optimizer:
        return create(name, **kwargs)


def register(klass: type | None = None, *, name: str | None = None):
    """Class decorator: registers an optimizer under its lower-case class name (``create`` finds it), or under
    ``name`` with ``@register(name="schedulefree_adamw")``.

    Registering a different class under a name that is taken raises ValueError; re-registering the same
    class (e.g. on module reload) is allowed.
    """
    if klass is None:
        return lambda k: register(k, name=name)
    if not (isinstance(klass, type) and issubclass(klass, Optimizer)):
        raise TypeError(f"register expects a subclass of optzoo.optimizer.Optimizer, got {klass!r}")
    if name is not None and not (isinstance(name, str) and name):
        raise TypeError(f"register: name must be a non-empty string, got {name!r}")
    name = (name or klass.__name__).lower()
    existing = Optimizer.opt_registry.get(name)
    if existing is not None and existing.__qualname__ != klass.__qualname__:
        raise ValueError(f"an optimizer named {name!r} is already registered ({existing.__module__}."
                         f"{existing.__qualname__}); rename the class or unregister it first")
    Optimizer.opt_registry[name] = klass
    return klass


def registered_name(klass: type) -> str | None:
    """The name ``klass`` is registered under (``None`` if it is not registered)."""
    return next((name for name, k in Optimizer.opt_registry.items() if k is klass), None)


def create(name: str, **kwargs) -> Optimizer:
    """Creates a registered optimizer by (case-insensitive) name: ``create('adam', learning_rate=0.1)``."""
    if isinstance(name, Optimizer):
        if kwargs:
            raise ValueError("create: keyword arguments cannot be applied to an optimizer instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a string, got {type(name).__name__}")
    klass = Optimizer.opt_registry.get(name.lower())
    if klass is None:
        raise ValueError(f"unknown optimizer {name!r}; registered optimizers: "
                         f"{', '.join(sorted(Optimizer.opt_registry))}")
    return klass(**kwargs)
