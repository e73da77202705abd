"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), exact to ``lion-pytorch``."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Optimizer, f32, f32s, per_tensor, register, rescale_clip, rescale_clip_foreach, state_class
from .reference_names import accepts_reference_names, split_tuple
from .validation import check_bool, check_real

__all__ = ["Lion", "LionState", "lion_foreach", "lion_reference"]


@state_class
class LionState(NamedTuple):
    exp_avg: torch.Tensor  # the momentum m


def lion_reference(weight, grad, state: LionState, *, lr, decay, beta1, beta2, rescale_grad, clip_gradient):
    """One tensor, in lion-pytorch's order (``decay`` is the weight decay factor ``lr*wd``):

    ``g = clip(rg*grad); w *= 1 - decay; w -= lr*sign(b1*m + (1-b1)*g); m = b2*m + (1-b2)*g``
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    weight.mul_(f32(1.0 - decay))
    update = state.exp_avg.mul(f32(beta1)).add_(g, alpha=f32(1.0 - beta1)).sign_()
    weight.add_(update, alpha=-f32(lr))
    state.exp_avg.mul_(f32(beta2)).add_(g, alpha=f32(1.0 - beta2))


def lion_foreach(weights, grads, states, *, lrs, weight_factors, beta1, beta2, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`lion_reference`, with ``weight_factors`` the per-tensor
    ``1 - decay`` (in float64, rounded to float32 here)."""
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    means = [s.exp_avg for s in states]
    torch._foreach_mul_(weights, f32s(weight_factors))
    updates = torch._foreach_mul(means, f32(beta1))
    torch._foreach_add_(updates, gs, alpha=f32(1.0 - beta1))
    torch._foreach_sign_(updates)
    torch._foreach_mul_(updates, f32s(lrs))
    torch._foreach_sub_(weights, updates)  # w - lr*u, exactly w + (-lr)*u
    torch._foreach_mul_(means, f32(beta2))
    torch._foreach_add_(means, gs, alpha=f32(1.0 - beta2))


@register
class Lion(Optimizer):
    r"""Lion: the sign of an interpolated momentum, with decoupled weight decay (exact to ``lion-pytorch`` 0.2).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        w' &= w_{t-1}\,(1 - \eta\,\lambda) \\
        w_t &= w' - \eta\,\mathrm{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t) \\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2) g_t

    with :math:`\lambda` = ``wd`` (times ``wd_mult``), or ``wd / learning_rate`` with
    ``decoupled_weight_decay=True`` (lion-pytorch's switch: the decay then does not scale with the initial rate).
    Every update has magnitude ``lr`` per element, so Lion wants a rate 3-10x smaller than AdamW's and a weight
    decay 3-10x larger.

    Args:
        learning_rate: step size (default 1e-4, lion-pytorch's); ``lr`` is accepted.
        beta1: interpolation of momentum and gradient inside the sign (default 0.9).
        beta2: decay of the momentum (default 0.99); ``betas=(beta1, beta2)`` is accepted.
        decoupled_weight_decay: divide ``wd`` by the initial learning rate (default False).

    Example:
        >>> opt = Lion(learning_rate=1e-4, beta1=0.9, beta2=0.99, wd=0.1)
    """

    default_learning_rate = 1e-4
    native_rule = "lion"
    #: decoupled_weight_decay divides by the initial rate: in TorchOptimizer a group's own lr (optzoo.torch_optimizer)
    reads_initial_lr = True

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "betas": split_tuple("beta1", "beta2")})
    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.99, decoupled_weight_decay=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0)
        self.decoupled_weight_decay = check_bool("decoupled_weight_decay", decoupled_weight_decay)

    def create_state(self, index, weight):
        return LionState(self._zeros(weight))

    def _wd_divisor(self) -> float:
        """What ``wd`` is divided by: the initial learning rate with ``decoupled_weight_decay``, else 1."""
        if not self.decoupled_weight_decay:
            return 1.0
        initial = self.lr if self.lr is not None else getattr(self.lr_scheduler, "base_lr", None)
        if not initial:
            raise ValueError("Lion: decoupled_weight_decay=True divides wd by the initial learning rate, "
                             "which is unknown or zero")
        return float(initial)

    def _decay(self, lr: float, wd: float) -> float:
        return lr * (wd / self._wd_divisor())

    def _hyper(self):
        return dict(beta1=self.beta1, beta2=self.beta2, rescale_grad=self.rescale_grad,
                    clip_gradient=self.clip_gradient)

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.rescale_grad, self._native_clip(), self._wd_divisor()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        lion_reference(weight, grad, state, lr=lr, decay=self._decay(lr, wd), **self._hyper())

    _step_scalars = ("lrs", "weight_factors")

    def _foreach_parts(self, weights, grads, states, lrs, wds, ts):
        weight_factors = per_tensor(lambda lr, wd: 1.0 - self._decay(lr, wd), lrs, wds)
        return lion_foreach, (weights, grads, states), dict(lrs=lrs, weight_factors=weight_factors, **self._hyper())
