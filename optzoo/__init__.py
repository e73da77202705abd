"""optzoo: the complete Apache MXNet optimizer family, its Gluon Trainer and learning-rate schedulers, on PyTorch."""

from . import kvstore, lr_scheduler, mxnet, optimizer
from .factory import create_optimizer
from .torch_optimizer import TorchOptimizer
from .trainer import StaleGradientError, Trainer

__version__ = "0.1.0"
__all__ = ["optimizer", "lr_scheduler", "kvstore", "mxnet", "TorchOptimizer", "create_optimizer", "Trainer",
           "StaleGradientError", "__version__"]
