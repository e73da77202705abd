"""Hyperparameter names of the reference packages, accepted where a user would paste them.

``optimizer.create("adafactor", lr=0.01, weight_decay=0.1)`` means ``learning_rate=0.01, wd=0.1``: each optimizer
of the modern families lists the names its reference package uses and how they map onto optzoo's (MXNet's)
arguments; tuples such as ``betas=(0.9, 0.95)`` are split. Giving both a reference name and the optzoo name it maps
to is an error, so a pasted configuration is never silently half-applied.

Each optimizer declares its names once, with the :func:`accepts_reference_names` decorator on its ``__init__``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["accepts_reference_names", "split_tuple", "translate_reference_names"]


def split_tuple(*names: str) -> Callable[[str, object], dict]:
    """A mapping for a tuple argument (``betas``, ``eps``): its items go to ``names`` in order."""

    def split(alias: str, value) -> dict:
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"{alias} must be a tuple of {len(names)} values ({', '.join(names)}), got {value!r}")
        if len(value) != len(names):
            raise ValueError(f"{alias} must be a tuple of {len(names)} values ({', '.join(names)}), got {value!r}")
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
                raise ValueError(f"{owner}: pass {name} or its reference name {alias}, not both")
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

