"""Signum and signSGD (Signum with ``momentum=0``): steps of size lr along the sign of the momentum or
gradient, MXNet 2.0 numerics (``signum_update`` / ``signsgd_update`` kernels)."""

from __future__ import annotations

import torch

from .base import Optimizer, decayed_grads_foreach, f32, f32s, one_minus, register, rescale_clip
from .validation import check_real

__all__ = [
    "Signum",
    "decay_factor",
    "signsgd_foreach",
    "signsgd_reference",
    "signum_foreach",
    "signum_reference",
]


def decay_factor(lr: float, wd: float) -> float:
    """``1 - lr*wd`` in float32, as the kernels compute it from their float32 parameters."""
    return f32(1.0 - f32(f32(lr) * f32(wd)))


def signum_reference(weight, grad, mom, *, lr, wd, momentum, wd_lh, rescale_grad, clip_gradient):
    """One tensor with momentum (``signum_update``):

    ``g = clip(rg*grad) + wd*w; mom = momentum*mom - (1-momentum)*g; w = (1 - lr*wd_lh)*w + lr*sign(mom)``
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient) + f32(wd) * weight
    mom.mul_(f32(momentum)).sub_(g.mul_(one_minus(momentum)))
    weight.mul_(decay_factor(lr, wd_lh)).add_(torch.sign(mom).mul_(f32(lr)))


def signum_foreach(weights, grads, moms, *, lrs, wds, momentum, wd_lh, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`signum_reference`."""
    gs = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    torch._foreach_mul_(moms, f32(momentum))
    torch._foreach_mul_(gs, one_minus(momentum))
    torch._foreach_sub_(moms, gs)
    steps = torch._foreach_sign(moms)
    torch._foreach_mul_(steps, f32s(lrs))
    torch._foreach_mul_(weights, [decay_factor(lr, wd_lh) for lr in lrs])
    torch._foreach_add_(weights, steps)


def signsgd_reference(weight, grad, *, lr, wd, wd_lh):
    """One tensor without momentum (``signsgd_update``): ``w = (1 - lr*(wd + wd_lh))*w - lr*sign(grad)``.

    The sign of the raw gradient: rescale_grad and clip_gradient cannot change it and are ignored.
    """
    weight.mul_(decay_factor(lr, wd + wd_lh)).sub_(torch.sign(grad).mul_(f32(lr)))


def signsgd_foreach(weights, grads, *, lrs, wds, wd_lh):
    """All tensors at once; the same arithmetic as :func:`signsgd_reference`."""
    steps = torch._foreach_sign(list(grads))
    torch._foreach_mul_(steps, f32s(lrs))
    torch._foreach_mul_(weights, [decay_factor(lr, wd + wd_lh) for lr, wd in zip(lrs, wds)])
    torch._foreach_sub_(weights, steps)


@register
class Signum(Optimizer):
    r"""Signum, signSGD with momentum (MXNet 2.0 ``signum``); ``momentum=0`` is signSGD.

    .. math::
        \mu > 0:&\quad g_t = \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient})
            + \mathrm{wd}\cdot w_{t-1} \\
        &\quad m_t = \mu\, m_{t-1} - (1-\mu)\, g_t \\
        &\quad w_t = (1 - \eta\,\mathrm{wd\_lh})\, w_{t-1} + \eta\,\mathrm{sign}(m_t) \\
        \mu = 0:&\quad w_t = (1 - \eta\,(\mathrm{wd} + \mathrm{wd\_lh}))\, w_{t-1}
            - \eta\,\mathrm{sign}(\nabla)

    ``sign(0) = 0``. The momentum buffer holds the *negative* descent direction (hence ``+ sign(m)``).
    ``wd`` is L2 decay folded into the gradient (and hence into the sign); ``wd_lh`` is decoupled decay
    (Loshchilov & Hutter) applied to the weight directly. Without momentum the state is ``None`` and the
    sign is that of the raw gradient: rescale_grad and clip_gradient do not change a sign and are
    ignored, and ``wd`` acts as decoupled decay together with ``wd_lh``.

    Compatibility: no torch.optim equivalent. Bernstein et al.'s Signum keeps ``m = mu*m + (1-mu)*g``
    and steps ``-lr*sign(m)``: the same update with the buffer's sign flipped. A NaN gradient makes the
    weight NaN (MXNet's ``(x > 0) - (x < 0)`` would treat it as 0 and hide it). Row-sparse gradients are
    densified (MXNet 2.0 has no sparse kernel for either op: every row decays and its momentum moves).

    Args:
        learning_rate: step size (default 0.01).
        momentum: ``mu`` in [0, 1) (default 0.9); 0 gives signSGD.
        wd_lh: decoupled weight decay >= 0 (default 0.0).

    Example:
        >>> opt = Signum(learning_rate=0.01, momentum=0.9, wd_lh=1e-4)

    References:
        Bernstein et al., *signSGD: Compressed Optimisation for Non-Convex Problems*, ICML 2018.
    """

    default_learning_rate = 0.01
    native_rule = "signum"

    def __init__(self, learning_rate=None, momentum=0.9, wd_lh=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.wd_lh = check_real("wd_lh", wd_lh, 0.0)

    def create_state(self, index, weight):
        return self._zeros(weight) if self.momentum != 0.0 else None

    def _check_states(self, states) -> None:
        if self.momentum != 0.0 and any(s is None for s in states):
            raise ValueError("Signum with momentum needs the state made by create_state, got None")

    def _native_hyper(self):
        return [self.momentum, self.wd_lh, self.rescale_grad, self._native_clip()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        self._check_states([state])
        if self.momentum == 0.0:
            signsgd_reference(weight, grad, lr=lr, wd=wd, wd_lh=self.wd_lh)
        else:
            signum_reference(weight, grad, state, lr=lr, wd=wd, momentum=self.momentum, wd_lh=self.wd_lh,
                             rescale_grad=self.rescale_grad, clip_gradient=self.clip_gradient)

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        self._check_states(states)
        if self.momentum == 0.0:
            signsgd_foreach(weights, grads, lrs=lrs, wds=wds, wd_lh=self.wd_lh)
        else:
            signum_foreach(weights, grads, states, lrs=lrs, wds=wds, momentum=self.momentum, wd_lh=self.wd_lh,
                           rescale_grad=self.rescale_grad, clip_gradient=self.clip_gradient)
