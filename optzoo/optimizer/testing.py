"""MXNet's ``test`` optimizer: a minimal plain-SGD rule used to exercise the optimizer machinery."""

from __future__ import annotations

import torch

from .base import Optimizer, register
from .sgd import sgd_foreach, sgd_reference

__all__ = ["Test"]


@register
class Test(Optimizer):
    r"""MXNet 2.0's ``test`` optimizer: plain gradient descent with an unused all-zero state.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        w_t &= w_{t-1} - \eta\, g_t

    This is :class:`SGD` without momentum, so the rule runs SGD's kernels. The state is a float32
    all-zero tensor shaped like the weight, as in MXNet 2.0 (which never writes it); it exists so that
    state handling (creation, multi-precision layout, checkpoints) can be tested with a trivial rule.

    Compatibility: MXNet 2.0's ``Test.step`` ignores ``clip_gradient``; optzoo honours it like every
    other optimizer (identical when ``clip_gradient`` is None, the default). MXNet 1.9.1's ``test`` did
    gradient *ascent* ``w += rescale_grad * grad`` and copied the weight into its state; optzoo follows 2.0.

    Args:
        learning_rate: step size (default 0.01, MXNet's base default).

    Example:
        >>> opt = Test(learning_rate=0.1, wd=0.01)
    """

    __test__ = False  # not a pytest test class, despite its name
    default_learning_rate = 0.01
    state_dtype = torch.float32
    sparse_support = "dense"
    native_rule = "test"

    def __init__(self, learning_rate=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)

    def create_state(self, index, weight):
        return self._zeros(weight)

    def _hyper(self):
        return {"momentum": 0.0, "rescale_grad": self.rescale_grad, "clip_gradient": self.clip_gradient}

    def _native_hyper(self):
        return [self.rescale_grad, self._native_clip()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        sgd_reference(weight, grad, None, lr=lr, wd=wd, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        sgd_foreach(weights, grads, None, lrs=lrs, wds=wds, **self._hyper())
