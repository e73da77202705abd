"""Hyperparameter names of the reference packages, accepted where a user would paste them.

``optimizer.create("adafactor", lr=0.01, weight_decay=0.1)`` means ``learning_rate=0.01, wd=0.1``: each optimizer
of the modern families lists the names its reference package uses and how they map onto optzoo's (MXNet's)
arguments; tuples such as ``betas=(0.9, 0.95)`` are split. Giving both a reference name and the optzoo name it maps
to is an error, so a pasted configuration is never silently half-applied.

Two forms exist: the :func:`accepts_reference_names` decorator (a mapping per optimizer: Adafactor, CAME, Muon,
SOAP) and :func:`map_reference_names`, called inside ``__init__`` with the values as passed (Lion, ADOPT,
AdEMAMix, MARS, Schedule-Free, Prodigy), which also refuses an optzoo argument changed from its default next to
its reference name.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from .validation import check_real

__all__ = ["accepts_reference_names", "map_reference_names", "split_tuple", "translate_reference_names"]


def split_tuple(*names: str) -> Callable[[str, object], dict]:
    """A mapping for a tuple argument (``betas``, ``eps``): its items go to ``names`` in order."""

    def split(alias: str, value) -> dict:
        if not isinstance(value, (tuple, list)) or len(value) != len(names):
            raise TypeError(f"{alias} must be a tuple of {len(names)} values ({', '.join(names)}), got {value!r}")
        return dict(zip(names, value))

    return split


def translate_reference_names(owner: str, kwargs: dict,
                              mapping: dict[str, str | Callable[[str, object], dict]]) -> dict:
    """``kwargs`` with every reference name in ``mapping`` replaced by the optzoo argument(s) it stands for."""
    out = {k: v for k, v in kwargs.items() if k not in mapping}
    for alias, target in mapping.items():
        if alias not in kwargs:
            continue
        translated = target(alias, kwargs[alias]) if callable(target) else {target: kwargs[alias]}
        for name, value in translated.items():
            if name in out:
                raise TypeError(f"{owner}() got both {alias!r} (the reference package's name) and {name!r}; "
                                "pass only one")
            out[name] = value
    return out


def accepts_reference_names(mapping: dict[str, str | Callable[[str, object], dict]]):
    """Decorator for an optimizer's ``__init__``: keyword arguments named as in the reference package are mapped
    (:func:`translate_reference_names`) before the real ``__init__`` binds them; its signature stays the documented
    one."""

    def decorate(init):
        @functools.wraps(init)
        def init_with_reference_names(self, *args, **kwargs):
            init(self, *args, **translate_reference_names(type(self).__name__, kwargs, mapping))

        init_with_reference_names.reference_names = dict(mapping)
        return init_with_reference_names

    return decorate


#: reference name -> optzoo name (``betas`` is spread over ``beta1``, ``beta2``, ...)
ALIASES = {"lr": "learning_rate", "eps": "epsilon", "weight_decay": "wd"}


def map_reference_names(klass: type, kwargs: dict, values: dict, betas=("beta1", "beta2")) -> dict:
    """Moves the reference names found in ``kwargs`` onto ``values`` (optzoo name -> value as passed to
    ``klass.__init__``) and returns the updated ``values``.

    An optzoo argument that differs from its default counts as passed, so giving it under both names raises
    ValueError. ``weight_decay`` goes back into ``kwargs`` as ``wd`` (the base class takes it).
    """
    owner = klass.__name__
    defaults = {p.name: p.default for p in inspect.signature(klass.__init__).parameters.values()}
    values = dict(values)
    for alias, name in ALIASES.items():
        if alias not in kwargs:
            continue
        value = kwargs.pop(alias)
        if name == "wd":
            if "wd" in kwargs:
                raise ValueError(f"{owner}: pass weight decay as wd or weight_decay, not both")
            kwargs["wd"] = value
            continue
        if name not in values:
            raise TypeError(f"{owner}() got an unexpected keyword argument {alias!r}")
        if values[name] != defaults.get(name):
            raise ValueError(f"{owner}: pass {name} or its reference name {alias}, not both")
        values[name] = value
    if "betas" in kwargs:
        given = kwargs.pop("betas")
        if not isinstance(given, (tuple, list)) or len(given) != len(betas):
            raise ValueError(f"{owner}: betas must be a tuple of {len(betas)} numbers ({', '.join(betas)}), "
                             f"got {given!r}")
        for name, value in zip(betas, given):
            if values[name] != defaults.get(name):
                raise ValueError(f"{owner}: pass {name} or betas, not both")
            values[name] = check_real(f"betas ({name})", value)
    return values
