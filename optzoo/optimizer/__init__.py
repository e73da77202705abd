"""MXNet 2.0's optimizers on PyTorch tensors: ``create``, ``register``, ``Optimizer``, ``get_updater`` and
every registered optimizer class (one module per family)."""

from .adagrad import AdaDelta, AdaGrad, GroupAdaGrad, RMSProp
from .adam import AdaBelief, Adam, Adamax, AdamW, Nadam
from .ademamix import AdEMAMix
from .adopt import ADOPT
from .base import Optimizer, create, register, state_class
from .dcasgd import DCASGD
from .factored import CAME, Adafactor
from .ftrl import FTML, Ftrl
from .legacy import LBSGD, ccSGD
from .lion import Lion
from .mars import MARS
from .muon import Muon
from .prodigy import Prodigy
from .schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD
from .sgd import NAG, SGD
from .sgld import SGLD
from .signum import Signum
from .soap import SOAP
from .testing import Test
from .trust_ratio import LAMB, LANS, LARS
from .updater import Updater, get_updater

create_optimizer = create

__all__ = [
    "Optimizer", "create", "create_optimizer", "register", "state_class", "Updater", "get_updater",
    "SGD", "NAG", "Signum", "SGLD", "DCASGD", "AdaGrad", "GroupAdaGrad", "RMSProp", "AdaDelta",
    "Adam", "AdamW", "Adamax", "Nadam", "AdaBelief", "Ftrl", "FTML", "LARS", "LAMB", "LANS", "Test",
    "LBSGD", "ccSGD",
    "Lion", "ADOPT", "AdEMAMix", "MARS", "ScheduleFreeAdamW", "ScheduleFreeSGD", "Prodigy",
]
__all__ += ["Adafactor", "CAME", "Muon", "SOAP"]
