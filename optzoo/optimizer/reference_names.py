"""The argument names of the optimizers' reference packages, accepted next to optzoo's MXNet names.

A user who pastes ``Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)`` from ``lion-pytorch`` gets
the same optimizer: ``lr`` is ``learning_rate``, ``betas`` fills ``beta1, beta2[, beta3]``, ``eps`` is
``epsilon`` and ``weight_decay`` is ``wd``. Passing both spellings of one argument is an error.
"""

from __future__ import annotations

import inspect

from .validation import check_real

__all__ = ["map_reference_names"]

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
