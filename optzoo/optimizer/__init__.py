"""MXNet 2.0's optimizers on PyTorch tensors: ``create``, ``register``, ``Optimizer``, ``get_updater`` and
every registered optimizer class."""

from .adam import Adam
from .base import Optimizer, create, register, state_class
from .sgd import NAG, SGD
from .updater import Updater, get_updater

create_optimizer = create

__all__ = ["Optimizer", "create", "create_optimizer", "register", "state_class", "Updater", "get_updater",
           "SGD", "NAG", "Adam"]
