"""The Adam family: Adam, MXNet 2.0 numerics."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Optimizer, f32, one_minus, register, state_class, rescale_clip, rescale_clip_foreach
from .validation import check_bool, check_real

__all__ = ["Adam", "AdamState", "adam_reference", "adam_foreach", "bias_corrected_lr"]


@state_class
class AdamState(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor


def adam_reference(weight, grad, state: AdamState, *, lr_t, wd, beta1, beta2, epsilon, rescale_grad,
                   clip_gradient):
    """One tensor, ``lr_t`` already bias-corrected:

    ``g = clip(rg*grad) + wd*w; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; w -= lr_t*m/(sqrt(v) + eps)``
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient) + f32(wd) * weight
    state.mean.mul_(f32(beta1)).add_(g, alpha=one_minus(beta1))
    state.var.mul_(f32(beta2)).addcmul_(g, g, value=one_minus(beta2))
    weight.addcdiv_(state.mean, state.var.sqrt().add_(f32(epsilon)), value=-f32(lr_t))


def adam_foreach(weights, grads, states, *, lr_ts, wds, beta1, beta2, epsilon, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`adam_reference`."""
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    if any(wds):
        torch._foreach_add_(gs, torch._foreach_mul(weights, [f32(wd) for wd in wds]))
    means = [s.mean for s in states]
    variances = [s.var for s in states]
    torch._foreach_mul_(means, f32(beta1))
    torch._foreach_add_(means, gs, alpha=one_minus(beta1))
    torch._foreach_mul_(variances, f32(beta2))
    torch._foreach_addcmul_(variances, gs, gs, value=one_minus(beta2))
    denoms = torch._foreach_sqrt(variances)
    torch._foreach_add_(denoms, f32(epsilon))
    torch._foreach_addcdiv_(weights, means, denoms, [-f32(lr_t) for lr_t in lr_ts])


def bias_corrected_lr(lr: float, t: int, beta1: float, beta2: float) -> float:
    """``lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` in float64 (MXNet computes it in Python)."""
    return lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)


@register
class Adam(Optimizer):
    r"""Adam (MXNet 2.0 ``adam``), bias correction folded into the learning rate.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \eta_t &= \eta\,\sqrt{1-\beta_2^t}\,/\,(1-\beta_1^t) \\
        w_t &= w_{t-1} - \eta_t\, m_t / (\sqrt{v_t} + \epsilon)

    Compatibility: ``torch.optim.Adam`` computes ``m_hat / (sqrt(v_hat) + eps)``; MXNet's epsilon is added
    to the *uncorrected* ``sqrt(v)``, so the two differ whenever epsilon matters (early steps, tiny
    gradients). Weight decay is L2 (added to the gradient after clipping), not decoupled; see AdamW.

    Args:
        learning_rate: step size (default 0.001).
        beta1, beta2: decay rates of the first and second moment, in [0, 1).
        epsilon: added to ``sqrt(v)`` (default 1e-8).
        lazy_update: with a sparse gradient, update only the rows present (moments and weight decay too).

    Example:
        >>> opt = Adam(learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-08)
    """

    sparse_support = "lazy"
    default_learning_rate = 0.001

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, epsilon=1e-8, lazy_update=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.lazy_update = check_bool("lazy_update", lazy_update)

    def create_state(self, index, weight):
        return AdamState(self._zeros(weight), self._zeros(weight))

    def _hyper(self):
        return dict(beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon, rescale_grad=self.rescale_grad,
                    clip_gradient=self.clip_gradient)

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        lr_t = bias_corrected_lr(lr, t, self.beta1, self.beta2)
        adam_reference(weight, grad, state, lr_t=lr_t, wd=wd, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        lr_ts = [bias_corrected_lr(lr, t, self.beta1, self.beta2) for lr, t in zip(lrs, ts)]
        adam_foreach(weights, grads, states, lr_ts=lr_ts, wds=wds, **self._hyper())
