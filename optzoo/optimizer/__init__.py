"""MXNet 2.0's optimizers on PyTorch tensors: ``create``, ``register``, ``Optimizer``, ``get_updater`` and
every registered optimizer class (one module per family)."""

import importlib

from .base import Optimizer, create, register, state_class
from .updater import Updater, get_updater

create_optimizer = create

#: the optimizer family modules; each defines ``__all__`` with its public classes and kernels
FAMILIES = ("sgd", "adam", "adagrad", "trust_ratio", "ftrl", "signum", "sgld", "dcasgd", "testing", "legacy")

__all__ = ["Optimizer", "create", "create_optimizer", "register", "state_class", "Updater", "get_updater"]
for _family in FAMILIES:
    try:
        _module = importlib.import_module(f".{_family}", __name__)
    except ModuleNotFoundError as _err:  # a family still being written
        if _err.name != f"{__name__}.{_family}":
            raise
        continue
    for _name in _module.__all__:
        _value = getattr(_module, _name)
        if isinstance(_value, type) and issubclass(_value, Optimizer):
            globals()[_name] = _value
            __all__.append(_name)
