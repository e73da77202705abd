"""MARS (Yuan et al. 2024, "MARS: Unleashing the Power of Variance Reduction for Training Large Models"),
exact to ``pytorch-optimizer`` 4.1 (the ``adamw`` and ``lion`` types, with the approximate, previous-gradient
correction the authors use by default)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Optimizer, f32, register, rescale_clip, state_class
from .reference_names import accepts_reference_names, split_tuple
from .validation import check_bool, check_choice, check_real

__all__ = ["MARS", "MarsState", "mars_reference"]

#: added to ``v`` under the square root, as pytorch-optimizer's denominator does
_V_EPS = 1e-15


@state_class
class MarsState(NamedTuple):
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    last_grad: torch.Tensor  # the previous step's (rescaled, clipped) gradient


def _adam_direction(exp_avg, exp_avg_sq, x, beta1, beta2, epsilon, t):
    """``m = lerp(m, x, 1-b1); v = b2*v + (1-b2)*x^2``; returns ``m / ((sqrt(v + 1e-15) + eps)/sqrt(bc2)*bc1)``."""
    exp_avg.lerp_(x, f32(1.0 - beta1))
    exp_avg_sq.mul_(f32(beta2)).addcmul_(x, x, value=f32(1.0 - beta2))
    denom = exp_avg_sq.add(f32(_V_EPS)).sqrt_().add_(f32(epsilon))
    denom.div_(f32(math.sqrt(1.0 - math.pow(beta2, t)))).mul_(f32(1.0 - math.pow(beta1, t)))
    return exp_avg / denom


def mars_reference(weight, grad, state: MarsState, *, lr, wd, t, mixed, mars_type, gamma, beta1, beta2,
                   beta1_1d, beta2_1d, epsilon, rescale_grad, clip_gradient, norm_of=None):
    """One tensor. ``mixed`` (matrices, or every tensor with ``optimize_1d``): the variance-reduced gradient

    ``c = g + gamma*b1/(1-b1)*(g - g_prev)``, scaled to norm 1 if larger, drives an AdamW (``adamw``) or sign
    (``lion``) step; other tensors take a plain AdamW step with ``beta1_1d, beta2_1d``. Then
    ``w *= 1 - lr*wd; w -= lr*update; g_prev = g``. ``norm_of(c, weight)``: the whole tensor's norm where
    ``weight`` is a shard (:mod:`optzoo.sharding`); ``None``: the norm of ``c`` itself.
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    if mixed:
        c = (g - state.last_grad).mul_(f32(gamma * (beta1 / (1.0 - beta1)))).add_(g)
        norm = torch.linalg.vector_norm(c) if norm_of is None else norm_of(c, weight)
        if norm > 1.0:
            c.div_(norm)
        if mars_type == "lion":
            state.exp_avg.lerp_(c, f32(1.0 - beta1))
            update = state.exp_avg.sign()
        else:
            update = _adam_direction(state.exp_avg, state.exp_avg_sq, c, beta1, beta2, epsilon, t)
    else:
        update = _adam_direction(state.exp_avg, state.exp_avg_sq, g, beta1_1d, beta2_1d, epsilon, t)
    if wd:
        weight.mul_(f32(1.0 - wd * lr))
    weight.add_(update, alpha=-f32(lr))
    state.last_grad.copy_(g)


@register
class MARS(Optimizer):
    r"""MARS: variance-reduced AdamW (or Lion) driven by a gradient corrected with the previous one
    (exact to ``pytorch-optimizer`` 4.1 ``MARS``, ``mars_type="adamw"`` or ``"lion"``).

    For a matrix (``ndim >= 2``; every tensor with ``optimize_1d=True``):

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        c_t &= g_t + \gamma\,\tfrac{\beta_1}{1-\beta_1}\,(g_t - g_{t-1}), \qquad
               c_t \leftarrow c_t / \max(1, \lVert c_t\rVert_2) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) c_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) c_t^2 \\
        u_t &= \frac{m_t}{(1-\beta_1^t)} \Big/ \frac{\sqrt{v_t + 10^{-15}} + \epsilon}{\sqrt{1-\beta_2^t}}
               \quad(\texttt{lion}:\ u_t = \mathrm{sign}(m_t)) \\
        w_t &= w_{t-1}(1 - \eta\lambda) - \eta\, u_t

    with :math:`g_0 = 0`, :math:`\lambda` = ``wd`` (times ``wd_mult``). Other tensors (biases, norms) take the
    same AdamW step on :math:`g_t` itself with ``beta1_1d, beta2_1d``, the rate
    ``lr * lr_1d / learning_rate`` and the decay ``wd_1d`` (0.1 by default, as in the package and the authors'
    code; ``wd_mult`` does not apply to it).

    Args:
        learning_rate: step size (default 3e-3); ``lr`` is accepted.
        beta1, beta2: default 0.95, 0.99; ``betas`` is accepted.
        gamma: strength of the gradient correction (default 0.025).
        mars_type: ``"adamw"`` (default) or ``"lion"``.
        optimize_1d: run MARS on 1-D tensors too (default False).
        lr_1d: learning rate of the 1-D AdamW side (default 3e-3), relative to ``learning_rate``.
        beta1_1d, beta2_1d: its decay rates (0.9, 0.95); ``betas_1d`` is accepted.
        wd_1d: its decoupled weight decay (default 0.1); ``weight_decay_1d`` is accepted.
        epsilon: default 1e-8; ``eps`` is accepted.

    Example:
        >>> opt = MARS(learning_rate=3e-3, gamma=0.025, wd=0.01)
    """

    default_learning_rate = 3e-3
    native_rule = "mars"
    #: lr_1d is relative to the initial rate: in TorchOptimizer a group's own lr (optzoo.torch_optimizer)
    reads_initial_lr = True
    #: the corrected gradient is scaled by its whole-tensor norm (sharded steps add up the shards' sums)
    uses_tensor_norms = True

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "eps": "epsilon",
                              "betas": split_tuple("beta1", "beta2"), "weight_decay_1d": "wd_1d",
                              "betas_1d": split_tuple("beta1_1d", "beta2_1d")})
    def __init__(self, learning_rate=None, beta1=0.95, beta2=0.99, gamma=0.025, mars_type="adamw", optimize_1d=False,
                 lr_1d=3e-3, beta1_1d=0.9, beta2_1d=0.95, wd_1d=0.1, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.gamma = check_real("gamma", gamma, 0.0)
        self.mars_type = check_choice("mars_type", mars_type, ("adamw", "lion"))
        self.optimize_1d = check_bool("optimize_1d", optimize_1d)
        self.lr_1d = check_real("lr_1d", lr_1d, 0.0)
        self.beta1_1d = check_real("beta1_1d", beta1_1d, 0.0, 1.0, high_open=True)
        self.beta2_1d = check_real("beta2_1d", beta2_1d, 0.0, 1.0, high_open=True)
        self.wd_1d = check_real("wd_1d", wd_1d, 0.0)
        self.epsilon = check_real("epsilon", epsilon, 0.0)

    def create_state(self, index, weight):
        return MarsState(self._zeros(weight), self._zeros(weight), self._zeros(weight))

    def _lr_1d_factor(self) -> float:
        base = self.lr if self.lr is not None else getattr(self.lr_scheduler, "base_lr", None)
        return self.lr_1d / base if base else 1.0

    def _native_hyper(self):
        """The native rule's hyperparameters (rules_mars.cpp): it picks each tensor's side by its dimensions and
        takes the whole step, norms included, in one call."""
        return [self.epsilon, self.rescale_grad, self._native_clip(), self.gamma, self.beta1, self.beta2,
                self.beta1_1d, self.beta2_1d, self._lr_1d_factor(), self.wd_1d, float(self.mars_type == "lion"),
                float(self.optimize_1d)]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        mixed = self.optimize_1d or weight.dim() >= 2
        if not mixed:
            lr, wd = lr * self._lr_1d_factor(), self.wd_1d
        mars_reference(weight, grad, state, lr=lr, wd=wd, t=t, mixed=mixed, mars_type=self.mars_type,
                       gamma=self.gamma, beta1=self.beta1, beta2=self.beta2, beta1_1d=self.beta1_1d,
                       beta2_1d=self.beta2_1d, epsilon=self.epsilon, rescale_grad=self.rescale_grad,
                       clip_gradient=self.clip_gradient,
                       norm_of=self._sharded_norm if self.norm_sum_reducer is not None else None)

    def _sharded_norm(self, c, weight):
        """The norm of the whole tensor whose local shard ``c`` is (the reducer adds the shards' float64 sums)."""
        sums = c.to(torch.float64).square().sum().reshape(1)
        return self.norm_sum_reducer(sums, [weight]).sqrt()[0].to(c.dtype)

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        # the norm of each corrected gradient makes this rule two passes per tensor; it runs tensor by tensor
        for w, g, s, lr, wd, t in zip(weights, grads, states, lrs, wds, ts):
            self._reference_rule(w, g, s, lr, wd, t)
