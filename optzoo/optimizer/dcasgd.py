"""DCASGD: asynchronous SGD with delay compensation (MXNet 2.0 ``dcasgd``), momentum included."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Optimizer, decayed_grads_foreach, f32, f32s, register, rescale_clip, state_class
from .validation import check_real

__all__ = ["DCASGD", "DCASGDState", "dcasgd_foreach", "dcasgd_reference"]


@state_class
class DCASGDState(NamedTuple):
    #: momentum buffer, ``None`` when ``momentum == 0``
    mom: torch.Tensor | None
    #: the weight before the latest update (the point the incoming gradient is assumed to come from)
    previous_weight: torch.Tensor


def dcasgd_reference(weight, grad, state: DCASGDState, *, lr, wd, momentum, lamda, rescale_grad, clip_gradient):
    """One tensor: ``g = clip(rg*grad) + wd*w``; ``d = g + lamda*g^2*(w - prev)``;
    ``mom = momentum*mom - lr*d`` (or ``-lr*d`` without momentum); ``prev = w``; ``w += mom``."""
    g = rescale_clip(grad, rescale_grad, clip_gradient) + f32(wd) * weight
    d = g * g
    d.mul_(weight - state.previous_weight).mul_(f32(lamda)).add_(g)
    if state.mom is None:
        step = d.mul_(-f32(lr))
    else:
        step = state.mom.mul_(f32(momentum)).sub_(f32(lr) * d)
    state.previous_weight.copy_(weight)
    weight.add_(step)


def dcasgd_foreach(weights, grads, moms, previous_weights, *, lrs, wds, momentum, lamda, rescale_grad,
                   clip_gradient):
    """All tensors at once (``moms`` is ``None`` without momentum); the same arithmetic as :func:`dcasgd_reference`."""
    gs = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    ds = torch._foreach_mul(gs, gs)
    torch._foreach_mul_(ds, torch._foreach_sub(weights, previous_weights))
    torch._foreach_mul_(ds, f32(lamda))
    torch._foreach_add_(ds, gs)
    if moms is None:
        torch._foreach_mul_(ds, f32s([-lr for lr in lrs]))
        steps = ds
    else:
        torch._foreach_mul_(ds, f32s(lrs))
        torch._foreach_mul_(moms, f32(momentum))
        torch._foreach_sub_(moms, ds)
        steps = moms
    torch._foreach_copy_(previous_weights, weights)
    torch._foreach_add_(weights, steps)


@register
class DCASGD(Optimizer):
    r"""Delay-compensated asynchronous SGD (MXNet 2.0 ``dcasgd``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        d_t &= g_t + \lambda\, g_t \odot g_t \odot (w_{t-1} - w_{\mathrm{prev}}) \\
        m_t &= \mu\, m_{t-1} - \eta\, d_t \quad(\text{momentum} = 0:\ m_t = -\eta\, d_t) \\
        w_{\mathrm{prev}} &\leftarrow w_{t-1},\qquad w_t = w_{t-1} + m_t

    In asynchronous training a gradient arrives after the weight has moved on. DCASGD assumes it was
    computed at ``w_prev`` (the weight before the previous update) and corrects it to the current weight
    with a first-order Taylor term, approximating the Hessian's diagonal by ``lamda * g*g``
    (``lamda`` is MXNet's spelling).

    Compatibility: no torch.optim equivalent; with ``lamda=0`` it is :class:`SGD` (learning rate inside
    the momentum buffer). MXNet 2.0 includes the weight decay in ``g`` (also inside the compensation
    term); MXNet 1.9.1 used the gradient without decay there and crashed for ``momentum != 0``. The state
    is ``(mom or None, previous_weight)`` with ``previous_weight`` starting as a copy of the weight.
    MXNet has no fused path; optzoo's fast path computes the same arithmetic.

    Args:
        learning_rate: step size (default 0.1).
        momentum: momentum coefficient ``mu`` in [0, 1) (default 0).
        lamda: scale ``lambda >= 0`` of the delay compensation (default 0.04).

    Example:
        >>> opt = DCASGD(learning_rate=0.1, momentum=0.9, lamda=0.04)

    References:
        Zheng et al., "Asynchronous Stochastic Gradient Descent with Delay Compensation", ICML 2017
        (arXiv:1609.08326).
    """

    default_learning_rate = 0.1
    sparse_support = "dense"
    native_rule = "dcasgd"

    def __init__(self, learning_rate=None, momentum=0.0, lamda=0.04, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.lamda = check_real("lamda", lamda, 0.0)

    def create_state(self, index, weight):
        mom = self._zeros(weight) if self.momentum != 0.0 else None
        return DCASGDState(mom, weight.detach().clone(memory_format=torch.contiguous_format))

    def _hyper(self):
        return {"momentum": self.momentum, "lamda": self.lamda, "rescale_grad": self.rescale_grad,
                "clip_gradient": self.clip_gradient}

    def _native_hyper(self):
        return [self.momentum, self.lamda, self.rescale_grad, self._native_clip()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        dcasgd_reference(weight, grad, state, lr=lr, wd=wd, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        moms = [s.mom for s in states]
        if all(m is None for m in moms):
            moms = None
        elif any(m is None for m in moms):
            raise ValueError("DCASGD: some states have a momentum buffer and some do not (states made with "
                             "different momentum settings); recreate them with create_state")
        dcasgd_foreach(weights, grads, moms, [s.previous_weight for s in states], lrs=lrs, wds=wds,
                       **self._hyper())
