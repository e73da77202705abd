"""ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate"),
exact to ``pytorch-optimizer`` 4.1, plus the weight-decay convention shared with AdEMAMix and MARS."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Optimizer, f32, f32s, register, rescale_clip, rescale_clip_foreach, state_class
from .reference_names import accepts_reference_names, split_tuple
from .validation import check_bool, check_real

__all__ = ["ADOPT", "AdoptState", "adopt_foreach", "adopt_reference", "decay_factor", "weight_decay_",
           "weight_decay_foreach_"]


def decay_factor(lr: float, wd: float, fixed_decay: bool) -> float:
    """The factor a decoupled decay multiplies the weight by: ``1 - wd*lr`` (``1 - wd`` with ``fixed_decay``)."""
    return 1.0 - wd * (1.0 if fixed_decay else lr)


def weight_decay_(weight, g, lr: float, wd: float, weight_decouple: bool, fixed_decay: bool) -> None:
    """pytorch-optimizer's weight decay, in place: decoupled (``w *= decay_factor``) or L2 (``g += wd*w``)."""
    if not wd:
        return
    if weight_decouple:
        weight.mul_(f32(decay_factor(lr, wd, fixed_decay)))
    else:
        g.add_(weight, alpha=f32(wd))


def weight_decay_foreach_(weights, gs, lrs, wds, weight_decouple: bool, fixed_decay: bool) -> None:
    """:func:`weight_decay_` for every tensor (each with its own ``lr`` and ``wd``)."""
    if not any(wds):
        return
    if weight_decouple:
        torch._foreach_mul_(weights, [f32(decay_factor(lr, wd, fixed_decay)) for lr, wd in zip(lrs, wds)])
    else:
        torch._foreach_add_(gs, torch._foreach_mul(weights, f32s(wds)))


@state_class
class AdoptState(NamedTuple):
    exp_avg: torch.Tensor     # m: momentum of the normalised gradient
    exp_avg_sq: torch.Tensor  # v: second moment of the raw gradient, one step behind


def adopt_reference(weight, grad, state: AdoptState, *, lr, wd, first, clip, beta1, beta2, epsilon,
                    weight_decouple, fixed_decay, rescale_grad, clip_gradient):
    """One tensor. The first step only records ``v = g^2``; then

    ``n = clamp(g / max(sqrt(v), eps), -clip, clip); m = lerp(m, n, 1-b1); w -= lr*m; v = b2*v + (1-b2)*g^2``
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    weight_decay_(weight, g, lr, wd, weight_decouple, fixed_decay)
    if first:
        state.exp_avg_sq.addcmul_(g, g)
        return
    normed = g / state.exp_avg_sq.sqrt().clamp_(min=f32(epsilon))
    if clip is not None:
        normed.clamp_(-f32(clip), f32(clip))
    state.exp_avg.lerp_(normed, f32(1.0 - beta1))
    weight.add_(state.exp_avg, alpha=-f32(lr))
    state.exp_avg_sq.mul_(f32(beta2)).addcmul_(g, g, value=f32(1.0 - beta2))


def adopt_foreach(weights, grads, states, *, lrs, wds, firsts, clips, beta1, beta2, epsilon, weight_decouple,
                  fixed_decay, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`adopt_reference`."""
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    weight_decay_foreach_(weights, gs, lrs, wds, weight_decouple, fixed_decay)
    first = [i for i, f in enumerate(firsts) if f]
    if first:
        torch._foreach_addcmul_([states[i].exp_avg_sq for i in first], [gs[i] for i in first],
                                [gs[i] for i in first])
    rest = [i for i, f in enumerate(firsts) if not f]
    if not rest:
        return
    weights = [weights[i] for i in rest]
    gs = [gs[i] for i in rest]
    means = [states[i].exp_avg for i in rest]
    variances = [states[i].exp_avg_sq for i in rest]
    denoms = torch._foreach_sqrt(variances)
    torch._foreach_clamp_min_(denoms, f32(epsilon))
    normed = torch._foreach_div(gs, denoms)
    if clips[rest[0]] is not None:
        for n, i in zip(normed, rest):
            n.clamp_(-f32(clips[i]), f32(clips[i]))
    torch._foreach_lerp_(means, normed, f32(1.0 - beta1))
    torch._foreach_add_(weights, torch._foreach_mul(means, [-f32(lrs[i]) for i in rest]))
    torch._foreach_mul_(variances, f32(beta2))
    torch._foreach_addcmul_(variances, gs, gs, value=f32(1.0 - beta2))


@register
class ADOPT(Optimizer):
    r"""ADOPT: Adam with the current gradient normalised by the *previous* second moment, then clipped
    (exact to ``pytorch-optimizer`` 4.1 ``ADOPT``, which follows the authors' code).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient})
               \;(+\,\lambda w_{t-1}\text{ unless weight\_decouple}) \\
        v_1 &= g_1^2 \quad\text{(first step: nothing else moves)} \\
        n_t &= \mathrm{clamp}\big(g_t / \max(\sqrt{v_{t-1}}, \epsilon), \pm t^{c}\big) \\
        m_t &= m_{t-1} + (1-\beta_1)(n_t - m_{t-1}) \\
        w_t &= w_{t-1}\,(1-\eta\lambda)^{[\text{weight\_decouple}]} - \eta\, m_t \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    :math:`t` counts this parameter's updates (``begin_num_update`` included: the step with
    ``t = begin_num_update + 1`` is the initialising one) and :math:`c` is ``clip_exponent`` (the package's default
    ``clip_lambda = step ** 0.25``; ``None``: no clipping).

    Args:
        learning_rate: step size (default 1e-3); ``lr`` is accepted.
        beta1, beta2: decay rates (defaults 0.9, 0.9999); ``betas=(beta1, beta2)`` is accepted.
        epsilon: lower bound of ``sqrt(v)`` (default 1e-6); ``eps`` is accepted.
        clip_exponent: the normalised gradient is clipped to ``[-t^c, t^c]`` (default 0.25; None: no clip).
        weight_decouple: ``wd`` decays the weight (``w *= 1 - lr*wd``) instead of adding ``wd*w`` to the
            gradient (default False, as in the package and the paper).
        fixed_decay: with ``weight_decouple``, ``w *= 1 - wd`` (not scaled by the learning rate).

    Example:
        >>> opt = ADOPT(learning_rate=1e-3, beta1=0.9, beta2=0.9999, epsilon=1e-6)
    """

    default_learning_rate = 1e-3
    native_rule = "adopt"

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "eps": "epsilon",
                              "betas": split_tuple("beta1", "beta2")})
    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.9999, epsilon=1e-6, clip_exponent=0.25,
                 weight_decouple=False, fixed_decay=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.clip_exponent = check_real("clip_exponent", clip_exponent, allow_none=True)
        self.weight_decouple = check_bool("weight_decouple", weight_decouple)
        self.fixed_decay = check_bool("fixed_decay", fixed_decay)

    def create_state(self, index, weight):
        return AdoptState(self._zeros(weight), self._zeros(weight))

    def _clip(self, t: int) -> float | None:
        return None if self.clip_exponent is None else math.pow(t, self.clip_exponent)

    def _hyper(self):
        return dict(beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon, weight_decouple=self.weight_decouple,
                    fixed_decay=self.fixed_decay, rescale_grad=self.rescale_grad, clip_gradient=self.clip_gradient)

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.epsilon, float(self.weight_decouple), float(self.fixed_decay),
                self.rescale_grad, self._native_clip(), float(self.begin_num_update),
                float(self.clip_exponent is not None), self.clip_exponent or 0.0]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        adopt_reference(weight, grad, state, lr=lr, wd=wd, first=t == self.begin_num_update + 1,
                        clip=self._clip(t), **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        adopt_foreach(weights, grads, states, lrs=lrs, wds=wds, firsts=[t == self.begin_num_update + 1 for t in ts],
                      clips=[self._clip(t) for t in ts], **self._hyper())
