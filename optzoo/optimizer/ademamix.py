"""AdEMAMix (Pagliardini et al. 2024, "The AdEMAMix Optimizer: Better, Faster, Older"), exact to
``pytorch-optimizer`` 4.1."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .adopt import weight_decay_, weight_decay_foreach_
from .base import Optimizer, f32, f32s, register, rescale_clip, rescale_clip_foreach, state_class
from .reference_names import accepts_reference_names, split_tuple
from .validation import check_bool, check_real

__all__ = ["AdEMAMix", "AdemamixState", "ademamix_foreach", "ademamix_reference", "ademamix_schedule"]


@state_class
class AdemamixState(NamedTuple):
    exp_avg: torch.Tensor       # fast EMA m1
    exp_avg_sq: torch.Tensor    # second moment v
    exp_avg_slow: torch.Tensor  # slow EMA m2


def ademamix_schedule(t: int, alpha: float, beta1: float, beta3: float, t_alpha_beta3) -> tuple[float, float]:
    """``(alpha_t, beta3_t)``: the paper's warmups of the slow EMA's weight and rate (constant without
    ``t_alpha_beta3``); float64, as the package computes them."""
    if t_alpha_beta3 is None:
        return alpha, beta3
    alpha_t = min(t * alpha / t_alpha_beta3, alpha)
    log1, log3 = math.log(beta1), math.log(beta3)
    frac = t / t_alpha_beta3
    beta3_t = min(math.exp(log1 * log3 / ((1.0 - frac) * log3 + frac * log1)), beta3)
    return alpha_t, beta3_t


def ademamix_reference(weight, grad, state: AdemamixState, *, lr, wd, bias_correction1, bias_correction2_sq,
                       alpha_t, beta3_t, beta1, beta2, epsilon, weight_decouple, fixed_decay, rescale_grad,
                       clip_gradient):
    """One tensor:

    ``m1 = lerp(m1, g, 1-b1); v = b2*v + (1-b2)*g^2; m2 = lerp(m2, g, 1-b3_t);
    w -= lr*(m1/bc1 + alpha_t*m2) / (sqrt(v)/sqrt(bc2) + eps)``
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    weight_decay_(weight, g, lr, wd, weight_decouple, fixed_decay)
    state.exp_avg.lerp_(g, f32(1.0 - beta1))
    state.exp_avg_sq.mul_(f32(beta2)).addcmul_(g, g, value=f32(1.0 - beta2))
    state.exp_avg_slow.lerp_(g, f32(1.0 - beta3_t))
    denom = state.exp_avg_sq.sqrt().div_(f32(bias_correction2_sq)).add_(f32(epsilon))
    update = state.exp_avg.div(f32(bias_correction1)).add_(state.exp_avg_slow, alpha=f32(alpha_t))
    weight.addcdiv_(update, denom, value=-f32(lr))


def ademamix_foreach(weights, grads, states, *, lrs, wds, bias_correction1s, bias_correction2_sqs, alpha_ts,
                     beta3_ts, beta1, beta2, epsilon, weight_decouple, fixed_decay, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`ademamix_reference`."""
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    weight_decay_foreach_(weights, gs, lrs, wds, weight_decouple, fixed_decay)
    fast, second, slow = ([s[k] for s in states] for k in range(3))
    torch._foreach_lerp_(fast, gs, f32(1.0 - beta1))
    torch._foreach_mul_(second, f32(beta2))
    torch._foreach_addcmul_(second, gs, gs, value=f32(1.0 - beta2))
    for m2, g, b3 in zip(slow, gs, beta3_ts):
        m2.lerp_(g, f32(1.0 - b3))
    denoms = torch._foreach_sqrt(second)
    torch._foreach_div_(denoms, f32s(bias_correction2_sqs))
    torch._foreach_add_(denoms, f32(epsilon))
    updates = torch._foreach_div(fast, f32s(bias_correction1s))
    torch._foreach_add_(updates, torch._foreach_mul(slow, f32s(alpha_ts)))
    torch._foreach_addcdiv_(weights, updates, denoms, f32s([-lr for lr in lrs]))


@register
class AdEMAMix(Optimizer):
    r"""AdEMAMix: Adam whose numerator mixes the usual fast EMA with a slow EMA of the gradients
    (exact to ``pytorch-optimizer`` 4.1 ``AdEMAMix``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient})
               \;(+\,\lambda w_{t-1}\text{ unless weight\_decouple}) \\
        m_{1,t} &= \beta_1 m_{1,t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        m_{2,t} &= \beta_{3,t}\, m_{2,t-1} + (1-\beta_{3,t}) g_t \\
        w_t &= w_{t-1}\,(1-\eta\lambda)^{[\text{weight\_decouple}]}
               - \eta\,\frac{m_{1,t}/(1-\beta_1^t) + \alpha_t m_{2,t}}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    With ``t_alpha_beta3`` (the paper's :math:`T_{\alpha,\beta_3}`) :math:`\alpha_t` rises linearly to
    ``alpha`` and :math:`\beta_{3,t}` follows the paper's half-life warmup from :math:`\beta_1` to ``beta3``;
    without it both are constant.

    Weight decay: the package's default adds ``wd*w`` to the gradient (``weight_decouple=False``); the paper's
    Algorithm 1 (and the authors' code) decays the weight, ``weight_decouple=True``. Both are exact to the
    package (see docs/deviations.md).

    Args:
        learning_rate: step size (default 1e-3); ``lr`` is accepted.
        beta1, beta2, beta3: fast EMA, second moment and slow EMA rates (0.9, 0.999, 0.9999);
            ``betas=(beta1, beta2, beta3)`` is accepted.
        alpha: weight of the slow EMA (default 5).
        t_alpha_beta3: warmup length of ``alpha`` and ``beta3`` in steps (default None: no warmup).
        epsilon: added to the corrected ``sqrt(v)`` (default 1e-8); ``eps`` is accepted.
        weight_decouple, fixed_decay: weight-decay style, as for :class:`ADOPT`.

    Example:
        >>> opt = AdEMAMix(learning_rate=1e-3, alpha=5.0, beta3=0.9999, t_alpha_beta3=10000)
    """

    default_learning_rate = 1e-3
    native_rule = "ademamix"

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "eps": "epsilon",
                              "betas": split_tuple("beta1", "beta2", "beta3")})
    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, beta3=0.9999, alpha=5.0, t_alpha_beta3=None,
                 epsilon=1e-8, weight_decouple=False, fixed_decay=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.beta3 = check_real("beta3", beta3, 0.0, 1.0, high_open=True)
        self.alpha = check_real("alpha", alpha, 0.0)
        self.t_alpha_beta3 = check_real("t_alpha_beta3", t_alpha_beta3, 0.0, low_open=True, allow_none=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.weight_decouple = check_bool("weight_decouple", weight_decouple)
        self.fixed_decay = check_bool("fixed_decay", fixed_decay)
        if self.t_alpha_beta3 is not None and not (0.0 < self.beta1 and 0.0 < self.beta3):
            raise ValueError("AdEMAMix: the t_alpha_beta3 warmup needs beta1 > 0 and beta3 > 0 (it takes their logs)")

    def create_state(self, index, weight):
        return AdemamixState(self._zeros(weight), self._zeros(weight), self._zeros(weight))

    def _scalars(self, t: int) -> dict:
        alpha_t, beta3_t = ademamix_schedule(t, self.alpha, self.beta1, self.beta3, self.t_alpha_beta3)
        return dict(bias_correction1=1.0 - math.pow(self.beta1, t),
                    bias_correction2_sq=math.sqrt(1.0 - math.pow(self.beta2, t)), alpha_t=alpha_t, beta3_t=beta3_t)

    def _hyper(self):
        return dict(beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon, weight_decouple=self.weight_decouple,
                    fixed_decay=self.fixed_decay, rescale_grad=self.rescale_grad, clip_gradient=self.clip_gradient)

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.epsilon, float(self.weight_decouple), float(self.fixed_decay),
                self.rescale_grad, self._native_clip()]

    def _native_aux(self, indices, lrs, ts):
        aux = []
        for t in ts:
            s = self._scalars(t)
            aux += [s["bias_correction1"], s["bias_correction2_sq"], s["alpha_t"], s["beta3_t"]]
        return aux, None

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        ademamix_reference(weight, grad, state, lr=lr, wd=wd, **self._scalars(t), **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        scalars = [self._scalars(t) for t in ts]
        ademamix_foreach(weights, grads, states, lrs=lrs, wds=wds, **{
            f"{key}s": [s[key] for s in scalars] for key in scalars[0]}, **self._hyper())
