"""Learning-rate schedules with MXNet's arguments and numbers, as pure functions of the update count.

``scheduler(num_update) -> float`` never changes the scheduler, so counts may be asked in any order
(5000 then 10). For increasing counts the values equal ``mxnet.lr_scheduler``'s stateful schedulers.
Counts follow MXNet's optimizer: the first update is ``num_update = 1`` (``0`` is "before training").

Every schedule starts with an optional warmup, for ``n < warmup_steps``::

    linear:   lr(n) = warmup_begin_lr + (base_lr - warmup_begin_lr) * n / warmup_steps
    constant: lr(n) = warmup_begin_lr

``base_lr`` is a plain attribute: reassigning it (as an optimizer's ``learning_rate`` does) moves the
whole schedule, warmup target and Poly/Cosine start included. MXNet kept the construction-time value
for those two; that is a deliberate difference.

:class:`TorchScheduler` drives any ``torch.optim`` optimizer from one of these schedules.
"""

from __future__ import annotations

import inspect
import math
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch

from .optimizer.validation import check_int, check_real, reject_unknown_kwargs

__all__ = ["CosineScheduler", "FactorScheduler", "LRScheduler", "MultiFactorScheduler", "PolyScheduler",
           "TorchScheduler", "create", "register"]

WARMUP_MODES = ("linear", "constant")


class LRScheduler:
    """Base class: warmup handling, argument checks, ``repr`` and config round trip.

    Subclasses implement :meth:`_decayed_lr` for ``num_update >= warmup_steps`` and list their
    constructor arguments, in order, in ``_config_keys``.

    Args:
        base_lr: learning rate the warmup reaches and the decay starts from (>= 0).
        warmup_steps: number of counts ``0 .. warmup_steps-1`` that use the warmup formula (>= 0).
        warmup_begin_lr: warmup start, ``0 <= warmup_begin_lr <= base_lr``.
        warmup_mode: ``'linear'`` (ramp to ``base_lr``) or ``'constant'`` (hold ``warmup_begin_lr``).
    """

    type_name: ClassVar[str | None] = None
    _config_keys: ClassVar[tuple[str, ...]] = ("base_lr", "warmup_steps", "warmup_begin_lr", "warmup_mode")

    def __init__(self, base_lr: float = 0.01, warmup_steps: int = 0, warmup_begin_lr: float = 0,
                 warmup_mode: str = "linear") -> None:
        self.base_lr = check_real("base_lr", base_lr, 0.0)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.warmup_begin_lr = check_real("warmup_begin_lr", warmup_begin_lr, 0.0, self.base_lr)
        if not isinstance(warmup_mode, str):
            raise TypeError(f"warmup_mode must be a string, got {warmup_mode!r} "
                            f"of type {type(warmup_mode).__name__}")
        if warmup_mode not in WARMUP_MODES:
            raise ValueError(f"warmup_mode must be one of {', '.join(map(repr, WARMUP_MODES))}; "
                             f"got {warmup_mode!r}")
        self.warmup_mode = warmup_mode

    @property
    def warmup_final_lr(self) -> float:
        """MXNet's name for the warmup target; here always the current ``base_lr``."""
        return self.base_lr

    def get_warmup_lr(self, num_update: int) -> float:
        """Warmup value for ``0 <= num_update < warmup_steps`` (formulas in the module docstring)."""
        num_update = check_int("num_update", num_update, 0)
        if num_update >= self.warmup_steps:
            raise ValueError(f"num_update must be < warmup_steps={self.warmup_steps} for the warmup, "
                             f"got {num_update}")
        if self.warmup_mode == "constant":
            return self.warmup_begin_lr
        # Same operation order as MXNet: ((final - begin) * n) / steps.
        return self.warmup_begin_lr + (self.base_lr - self.warmup_begin_lr) * float(num_update) / float(
            self.warmup_steps)

    def __call__(self, num_update: int) -> float:
        """Learning rate for update number ``num_update`` (an integer >= 0; the first update is 1)."""
        num_update = check_int("num_update", num_update, 0)
        if num_update < self.warmup_steps:
            return self.get_warmup_lr(num_update)
        return self._decayed_lr(num_update)

    def _decayed_lr(self, num_update: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} must implement _decayed_lr(num_update)")

    def _arguments(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._config_keys}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self._arguments().items())
        return f"{type(self).__name__}({args})"

    def get_config(self) -> dict[str, Any]:
        """JSON-able dict ``{"type": <registered name>, <argument>: <value>, ...}`` for :meth:`from_config`."""
        name = type(self).__dict__.get("type_name")
        if name is None:
            raise TypeError(f"{type(self).__name__} is not registered; decorate it with "
                            f"@optzoo.lr_scheduler.register(<name>) to give it a config")
        config: dict[str, Any] = {"type": name}
        for key, value in self._arguments().items():
            config[key] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LRScheduler:
        """Rebuilds a scheduler from :meth:`get_config`'s dict through the registry (no code is run).

        On a concrete class the ``"type"`` key may be left out; the result must be an instance of ``cls``.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {config!r} of type {type(config).__name__}")
        kwargs = dict(config)
        name = kwargs.pop("type", None) or cls.__dict__.get("type_name")
        if name is None:
            raise ValueError(f"config has no 'type' key naming the scheduler; got keys {sorted(config)}")
        scheduler = create(name, **kwargs)
        if not isinstance(scheduler, cls):
            raise TypeError(f"config describes a {type(scheduler).__name__}, not a {cls.__name__}")
        return scheduler


_REGISTRY: dict[str, type[LRScheduler]] = {}
_S = TypeVar("_S", bound=type[LRScheduler])


def register(name: str) -> Callable[[_S], _S]:
    """Class decorator: registers an :class:`LRScheduler` subclass under a new lower-case ``name``."""
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"name must be a non-empty lower-case string, got {name!r}")

    def decorate(cls: _S) -> _S:
        if not (isinstance(cls, type) and issubclass(cls, LRScheduler)):
            raise TypeError(f"only LRScheduler subclasses can be registered, got {cls!r}")
        if name in _REGISTRY:
            raise ValueError(f"an lr scheduler named {name!r} is already registered "
                             f"({_REGISTRY[name].__name__})")
        _REGISTRY[name] = cls
        cls.type_name = name
        return cls

    return decorate


def create(type_name: str, **kwargs: Any) -> LRScheduler:
    """Builds the scheduler registered as ``type_name`` (case-insensitive), e.g. ``create('factor', step=10)``."""
    cls = _REGISTRY.get(type_name.lower()) if isinstance(type_name, str) else None
    if cls is None:
        raise ValueError(f"unknown lr scheduler {type_name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    reject_unknown_kwargs(cls.__name__, {k: v for k, v in kwargs.items() if k not in known}, known)
    return cls(**kwargs)


@register("factor")
class FactorScheduler(LRScheduler):
    """Multiplies the learning rate by ``factor`` every ``step`` updates, down to ``stop_factor_lr``.

    For ``n >= warmup_steps``, with ``k = max(0, floor((n - 1) / step))``::

        lr(n) = base_lr                                    if k == 0
        lr(n) = max(base_lr * factor**k, stop_factor_lr)   otherwise

    i.e. the decay happens when ``n`` exceeds a multiple of ``step`` (step=2: n=1,2 -> base_lr;
    n=3,4 -> base_lr*factor). Warmup updates count toward the decay, as in MXNet. MXNet multiplies
    repeatedly; ``factor**k`` agrees to a few ulp and stays exact for any ``n``.

    Args:
        step: updates between decays (int >= 1).
        factor: multiplier, ``0 < factor <= 1``.
        stop_factor_lr: floor of the decayed rate (>= 0).
        base_lr, warmup_steps, warmup_begin_lr, warmup_mode: see :class:`LRScheduler`.

    Example:
        >>> s = FactorScheduler(step=2, factor=0.5, base_lr=1.0)
        >>> [s(n) for n in (1, 2, 3, 4, 5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    _config_keys = ("step", "factor", "stop_factor_lr", *LRScheduler._config_keys)

    def __init__(self, step: int, factor: float = 1, stop_factor_lr: float = 1e-8, base_lr: float = 0.01,
                 warmup_steps: int = 0, warmup_begin_lr: float = 0, warmup_mode: str = "linear") -> None:
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        self.step = check_int("step", step, 1)
        self.factor = check_real("factor", factor, 0.0, 1.0, low_open=True)
        self.stop_factor_lr = check_real("stop_factor_lr", stop_factor_lr, 0.0)

    def _decayed_lr(self, num_update: int) -> float:
        decays = max(0, (num_update - 1) // self.step)
        if decays == 0:
            return self.base_lr
        # MXNet clamps after every multiplication, so a base_lr below the floor is lifted to it.
        return max(self.base_lr * self.factor**decays, self.stop_factor_lr)


@register("multifactor")
class MultiFactorScheduler(LRScheduler):
    """Multiplies the learning rate by ``factor`` each time the count passes a boundary in ``step``.

    For ``n >= warmup_steps``, with ``k = #{b in step : n > b}``::

        lr(n) = base_lr * factor**k      (k repeated multiplications, as MXNet)

    e.g. step=[3, 6]: n=1..3 -> base_lr, 4..6 -> base_lr*factor, 7.. -> base_lr*factor**2.

    Args:
        step: strictly increasing boundaries, each an int >= 1 (a list or tuple; stored as a tuple).
        factor: multiplier, ``0 < factor <= 1``.
        base_lr, warmup_steps, warmup_begin_lr, warmup_mode: see :class:`LRScheduler`.

    Example:
        >>> s = MultiFactorScheduler(step=[3, 6], factor=0.5, base_lr=1.0)
        >>> [s(n) for n in (3, 4, 6, 7)]
        [1.0, 0.5, 0.5, 0.25]
    """

    _config_keys = ("step", "factor", *LRScheduler._config_keys)

    def __init__(self, step: Sequence[int], factor: float = 1, base_lr: float = 0.01, warmup_steps: int = 0,
                 warmup_begin_lr: float = 0, warmup_mode: str = "linear") -> None:
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        if not isinstance(step, (list, tuple)):
            raise TypeError(f"step must be a list of integers, got {step!r} of type {type(step).__name__}")
        if not step:
            raise ValueError("step must contain at least one boundary, got []")
        boundaries = tuple(check_int(f"step[{i}]", b, 1) for i, b in enumerate(step))
        for i in range(1, len(boundaries)):
            if boundaries[i] <= boundaries[i - 1]:
                raise ValueError(f"step must be strictly increasing, got {list(step)!r} "
                                 f"(step[{i}]={boundaries[i]} <= step[{i - 1}]={boundaries[i - 1]})")
        self.step = boundaries
        self.factor = check_real("factor", factor, 0.0, 1.0, low_open=True)

    def _decayed_lr(self, num_update: int) -> float:
        lr = self.base_lr
        for _ in range(bisect_left(self.step, num_update)):  # boundaries b < num_update
            lr *= self.factor
        return lr


class _AnnealScheduler(LRScheduler):
    """Shared checks for schedules that reach ``final_lr`` at ``max_update`` and stay there."""

    def __init__(self, max_update: int, base_lr: float, final_lr: float, warmup_steps: int,
                 warmup_begin_lr: float, warmup_mode: str) -> None:
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        self.max_update = check_int("max_update", max_update, 1)
        if self.warmup_steps >= self.max_update:
            raise ValueError(f"warmup_steps must be < max_update={self.max_update}, got {self.warmup_steps}")
        self.final_lr = check_real("final_lr", final_lr, 0.0)

    @property
    def max_steps(self) -> int:
        """Length of the decay phase, ``max_update - warmup_steps`` (MXNet's name)."""
        return self.max_update - self.warmup_steps


@register("poly")
class PolyScheduler(_AnnealScheduler):
    """Polynomial decay from ``base_lr`` to ``final_lr`` over ``max_update - warmup_steps`` updates.

    For ``n >= warmup_steps``, with ``m = min(n, max_update)``::

        lr(n) = final_lr + (base_lr - final_lr) * (1 - (m - warmup_steps) / (max_update - warmup_steps))**pwr

    so ``lr(n) = final_lr`` for every ``n >= max_update`` (MXNet instead returns its last computed value,
    which is stale if ``max_update`` itself was never asked for).

    Args:
        max_update: count at which ``final_lr`` is reached (int >= 1, > warmup_steps).
        base_lr: see :class:`LRScheduler`.
        pwr: power of the decay (> 0).
        final_lr: rate at and after ``max_update`` (>= 0).
        warmup_steps, warmup_begin_lr, warmup_mode: see :class:`LRScheduler`.

    Example:
        >>> s = PolyScheduler(max_update=4, base_lr=1.0, pwr=2)
        >>> [s(n) for n in (0, 2, 4, 9)]
        [1.0, 0.25, 0.0, 0.0]
    """

    _config_keys = ("max_update", "base_lr", "pwr", "final_lr", "warmup_steps", "warmup_begin_lr", "warmup_mode")

    def __init__(self, max_update: int, base_lr: float = 0.01, pwr: float = 2, final_lr: float = 0,
                 warmup_steps: int = 0, warmup_begin_lr: float = 0, warmup_mode: str = "linear") -> None:
        super().__init__(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        self.pwr = check_real("pwr", pwr, 0.0, low_open=True)

    def _decayed_lr(self, num_update: int) -> float:
        n = min(num_update, self.max_update)
        fraction = float(n - self.warmup_steps) / float(self.max_steps)
        return self.final_lr + (self.base_lr - self.final_lr) * pow(1 - fraction, self.pwr)


@register("cosine")
class CosineScheduler(_AnnealScheduler):
    """Half-cosine decay from ``base_lr`` to ``final_lr`` over ``max_update - warmup_steps`` updates.

    For ``n >= warmup_steps``, with ``m = min(n, max_update)``::

        lr(n) = final_lr + (base_lr - final_lr) * (1 + cos(pi * (m - warmup_steps) / (max_update - warmup_steps))) / 2

    so ``lr(n) = final_lr`` for every ``n >= max_update`` (see :class:`PolyScheduler` on MXNet's stale value).

    Args:
        max_update: count at which ``final_lr`` is reached (int >= 1, > warmup_steps).
        base_lr: see :class:`LRScheduler`.
        final_lr: rate at and after ``max_update`` (>= 0).
        warmup_steps, warmup_begin_lr, warmup_mode: see :class:`LRScheduler`.

    Example:
        >>> s = CosineScheduler(max_update=4, base_lr=1.0)
        >>> [round(s(n), 4) for n in (0, 1, 2, 3, 4, 6)]
        [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """

    _config_keys = ("max_update", "base_lr", "final_lr", "warmup_steps", "warmup_begin_lr", "warmup_mode")

    def __init__(self, max_update: int, base_lr: float = 0.01, final_lr: float = 0, warmup_steps: int = 0,
                 warmup_begin_lr: float = 0, warmup_mode: str = "linear") -> None:
        super().__init__(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr, warmup_mode)

    def _decayed_lr(self, num_update: int) -> float:
        n = min(num_update, self.max_update)
        # Same operation order as MXNet: (pi * steps_done) / max_steps.
        return self.final_lr + (self.base_lr - self.final_lr) * (
            1 + math.cos(math.pi * (n - self.warmup_steps) / self.max_steps)) / 2


class TorchScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Drives any ``torch.optim`` optimizer with a schedule ``int -> float`` (e.g. an :class:`LRScheduler`).

    Every param group's ``lr`` is set to ``schedule(last_epoch + 1)``: ``last_epoch`` counts completed
    updates and the next update gets MXNet's ``num_update = last_epoch + 1``. Construction sets
    ``schedule(1)``; the n-th ``scheduler.step()`` sets ``schedule(n + 1)``. With the usual loop
    ``optimizer.step(); scheduler.step()`` the k-th ``optimizer.step()`` therefore runs with
    ``schedule(k)``, exactly the rate MXNet's k-th update uses. Per-group multipliers are not applied:
    every group gets the same rate.

    ``state_dict()`` holds torch's counters plus ``schedule_config`` (:meth:`LRScheduler.get_config`, or
    None for other callables); ``load_state_dict`` rebuilds the schedule from that config and puts
    ``schedule(last_epoch + 1)`` into the param groups at once, so resuming needs no extra step.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=123.0)
        >>> sched = TorchScheduler(opt, FactorScheduler(step=2, factor=0.5, base_lr=1.0))
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(opt.param_groups[0]["lr"])
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [1.0, 1.0, 0.5, 0.5]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Callable[[int], float],
                 last_epoch: int = -1) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be callable as schedule(num_update) -> float, got {schedule!r}")
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr = float(self.schedule(self.last_epoch + 1))
        return [lr] * len(self.optimizer.param_groups)

    _get_closed_form_lr = get_lr  # scheduler.step(epoch) jumps straight to the count

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}
        schedule = self.schedule
        registered = isinstance(schedule, LRScheduler) and type(schedule).__dict__.get("type_name")
        state["schedule_config"] = schedule.get_config() if registered else None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        config = state.pop("schedule_config", None)
        self.__dict__.update(state)
        if config is not None:
            self.schedule = LRScheduler.from_config(config)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                         for g in self.optimizer.param_groups]
