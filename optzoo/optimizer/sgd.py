"""The SGD family: SGD (with momentum) and NAG (Nesterov momentum), MXNet 2.0 numerics."""

from __future__ import annotations

import torch

from .base import Optimizer, decayed_grads_foreach, f32, f32s, register, rescale_clip
from .validation import check_bool, check_real

__all__ = ["SGD", "NAG", "sgd_reference", "sgd_foreach", "momentum_step_foreach", "nag_reference", "nag_foreach"]


def sgd_reference(weight, grad, mom, *, lr, wd, momentum, rescale_grad, clip_gradient):
    """One tensor: ``g = clip(rg*grad) + wd*w``; ``mom = momentum*mom - lr*g; w += mom`` (or ``w -= lr*g``)."""
    g = rescale_clip(grad, rescale_grad, clip_gradient) + f32(wd) * weight
    if mom is None:
        weight.sub_(f32(lr) * g)
    else:
        mom.mul_(f32(momentum)).sub_(f32(lr) * g)
        weight.add_(mom)


def sgd_foreach(weights, grads, moms, *, lrs, wds, momentum, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`sgd_reference`."""
    gs = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    torch._foreach_mul_(gs, f32s(lrs))
    momentum_step_foreach(weights, gs, moms, momentum)


def momentum_step_foreach(weights, steps, moms, momentum):
    """``w -= step`` (``moms`` None) or ``mom = momentum*mom - step; w += mom``, with ``steps = lr * g``."""
    if moms is None:
        torch._foreach_sub_(weights, steps)
    else:
        torch._foreach_mul_(moms, f32(momentum))
        torch._foreach_sub_(moms, steps)
        torch._foreach_add_(weights, moms)


def nag_reference(weight, grad, mom, *, lr, wd, momentum, rescale_grad, clip_gradient):
    """One tensor: ``g = clip(rg*grad) + wd*w``; ``mom = momentum*mom - lr*g; w += momentum*mom - lr*g``."""
    g = rescale_clip(grad, rescale_grad, clip_gradient) + f32(wd) * weight
    step = f32(lr) * g
    if mom is None:
        weight.sub_(step)
    else:
        mom.mul_(f32(momentum)).sub_(step)
        weight.add_(f32(momentum) * mom).sub_(step)


def nag_foreach(weights, grads, moms, *, lrs, wds, momentum, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`nag_reference`."""
    steps = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    torch._foreach_mul_(steps, f32s(lrs))
    if moms is None:
        torch._foreach_sub_(weights, steps)
        return
    torch._foreach_mul_(moms, f32(momentum))
    torch._foreach_sub_(moms, steps)
    torch._foreach_add_(weights, torch._foreach_mul(moms, f32(momentum)))
    torch._foreach_sub_(weights, steps)


class _MomentumSGDBase(Optimizer):
    """Shared constructor and state of SGD and NAG: one momentum buffer, or none when ``momentum == 0``."""

    sparse_support = "lazy"
    default_learning_rate = 0.1
    _reference_kernel = staticmethod(sgd_reference)
    _foreach_kernel = staticmethod(sgd_foreach)

    def __init__(self, learning_rate=None, momentum=0.0, lazy_update=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.lazy_update = check_bool("lazy_update", lazy_update)

    def create_state(self, index, weight):
        return self._zeros(weight) if self.momentum != 0.0 else None

    def _hyper(self):
        return dict(momentum=self.momentum, rescale_grad=self.rescale_grad, clip_gradient=self.clip_gradient)

    def _native_hyper(self):
        return [self.momentum, self.rescale_grad, self._native_clip()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        self._reference_kernel(weight, grad, state, lr=lr, wd=wd, **self._hyper())

    _step_scalars = ("lrs",)

    def _foreach_parts(self, weights, grads, states, lrs, wds, ts):
        moms = None if self.momentum == 0.0 else states
        return self._foreach_kernel, (weights, grads, moms), dict(lrs=lrs, wds=wds, **self._hyper())


@register
class SGD(_MomentumSGDBase):
    r"""Stochastic gradient descent with optional momentum (MXNet 2.0 ``sgd``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        \text{momentum} = 0:&\quad w_t = w_{t-1} - \eta\, g_t \\
        \text{otherwise}:&\quad m_t = \mu\, m_{t-1} - \eta\, g_t,\qquad w_t = w_{t-1} + m_t

    Compatibility: the learning rate lives inside the momentum buffer (``torch.optim.SGD`` keeps
    ``m = mu*m + g`` and multiplies by lr afterwards), so changing the learning rate does not rescale
    the accumulated momentum. With ``momentum=0`` the state is ``None``.

    Args:
        learning_rate: step size (default 0.1).
        momentum: momentum coefficient ``mu`` in [0, 1).
        lazy_update: with a sparse (row-sparse) gradient, update only the rows present in it
            (their momentum and weight decay too); otherwise the gradient is densified.

    Example:
        >>> opt = SGD(learning_rate=0.1, momentum=0.9, wd=1e-4)
    """

    native_rule = "sgd"

    def __init__(self, learning_rate=None, momentum=0.0, lazy_update=False, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, lazy_update=lazy_update, **kwargs)


@register
class NAG(_MomentumSGDBase):
    r"""Nesterov accelerated gradient (MXNet 2.0 ``nag``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        m_t &= \mu\, m_{t-1} - \eta\, g_t \\
        w_t &= w_{t-1} + \mu\, m_t - \eta\, g_t

    With ``momentum=0`` this is plain SGD. Compatibility: equivalent to ``torch.optim.SGD(nesterov=True)``
    up to the learning rate living inside the momentum buffer. MXNet 1.9.1's kernel used the already
    updated weight in the momentum's decay term; 2.0 (and optzoo) use the old weight throughout.

    Args:
        learning_rate: step size (default 0.1).
        momentum: momentum coefficient ``mu`` in [0, 1) (default 0.9).
        lazy_update: as for :class:`SGD`.

    Example:
        >>> opt = NAG(learning_rate=0.1, momentum=0.8)
    """

    _reference_kernel = staticmethod(nag_reference)
    _foreach_kernel = staticmethod(nag_foreach)
    native_rule = "nag"

    def __init__(self, learning_rate=None, momentum=0.9, lazy_update=False, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, lazy_update=lazy_update, **kwargs)
