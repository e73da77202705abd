"""The Adam family: Adam, AdamW, Adamax, Nadam and AdaBelief, MXNet 2.0 numerics.

Two arithmetic styles live here, each mirroring what MXNet 2.0 runs by default:

* C++ kernels (Adam, AdamW, AdaBelief): float32 hyperparameters. Adam's kernel forms ``(1 - beta)`` in
  float32 (:func:`one_minus`); the aggregated AdamW/AdaBelief kernels write the moving averages as
  ``beta*(m - g) + g``.
* Python-only optimizers (Adamax, Nadam): MXNet's readable ``step`` on NDArrays, where every Python scalar
  (``1 - beta`` included) is computed in float64 and rounded to float32 once (:func:`_ema_`).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch

from .base import (
    Optimizer,
    any_decay,
    decayed_grads_foreach,
    f32,
    f32s,
    one_minus,
    per_tensor,
    register,
    rescale_clip,
    rescale_clip_foreach,
    state_class,
)
from .validation import check_bool, check_choice, check_real

__all__ = ["AdaBelief", "Adam", "AdamState", "AdamW", "Adamax", "AdamaxState", "Nadam", "NadamScalars",
           "adabelief_foreach", "adabelief_reference", "adam_foreach", "adam_moments_", "adam_moments_foreach",
           "adam_reference", "adamax_foreach",
           "adamax_reference", "adamw_foreach", "adamw_reference", "bias_corrected_lr", "nadam_factors",
           "nadam_foreach", "nadam_momentum", "nadam_reference"]


@state_class
class AdamState(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor


def adam_moments_(mean, var, g, beta1: float, beta2: float) -> None:
    """The moving moments shared by the Adam-style rules (Adam, LAMB, LANS), in place and in float32 scalars:
    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2``."""
    mean.mul_(f32(beta1)).add_(g, alpha=one_minus(beta1))
    var.mul_(f32(beta2)).addcmul_(g, g, value=one_minus(beta2))


def adam_moments_foreach(states, gs, beta1: float, beta2: float) -> tuple[list, list]:
    """:func:`adam_moments_` for every tensor; returns the lists of means and variances."""
    means = [s.mean for s in states]
    variances = [s.var for s in states]
    torch._foreach_mul_(means, f32(beta1))
    torch._foreach_add_(means, gs, alpha=one_minus(beta1))
    torch._foreach_mul_(variances, f32(beta2))
    torch._foreach_addcmul_(variances, gs, gs, value=one_minus(beta2))
    return means, variances


def adam_reference(weight, grad, state: AdamState, *, lr_t, wd, beta1, beta2, epsilon, rescale_grad,
                   clip_gradient):
    """One tensor, ``lr_t`` already bias-corrected:

    ``g = clip(rg*grad) + wd*w; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; w -= lr_t*m/(sqrt(v) + eps)``
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient) + f32(wd) * weight
    adam_moments_(state.mean, state.var, g, beta1, beta2)
    weight.addcdiv_(state.mean, state.var.sqrt().add_(f32(epsilon)), value=-f32(lr_t))


def adam_foreach(weights, grads, states, *, lr_ts, wds, beta1, beta2, epsilon, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`adam_reference`."""
    gs = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    means, variances = adam_moments_foreach(states, gs, beta1, beta2)
    denoms = torch._foreach_sqrt(variances)
    torch._foreach_add_(denoms, f32(epsilon))
    if isinstance(lr_ts, torch.Tensor):  # a traced step's rates (addcdiv takes no tensor scalar)
        steps = torch._foreach_div(means, denoms)
        torch._foreach_mul_(steps, f32s(lr_ts))
        torch._foreach_sub_(weights, steps)
        return
    torch._foreach_addcdiv_(weights, means, denoms, f32s([-lr_t for lr_t in lr_ts]))


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
    native_rule = "adam"

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

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.epsilon, self.rescale_grad, self._native_clip()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        lr_t = bias_corrected_lr(lr, t, self.beta1, self.beta2)
        adam_reference(weight, grad, state, lr_t=lr_t, wd=wd, **self._hyper())

    _step_scalars = ("lr_ts",)

    def _foreach_parts(self, weights, grads, states, lrs, wds, ts):
        lr_ts = per_tensor(lambda lr, t: bias_corrected_lr(lr, t, self.beta1, self.beta2), lrs, ts)
        return adam_foreach, (weights, grads, states), dict(lr_ts=lr_ts, wds=wds, **self._hyper())


# ------------------------------------------------------------------------------------------ shared pieces
@state_class
class AdamaxState(NamedTuple):
    mean: torch.Tensor
    inf_norm: torch.Tensor  # exponentially weighted infinity norm u (MXNet calls it "var")


def _ema_(buf, x, beta: float) -> None:
    """``buf = beta*buf + (1-beta)*x`` as MXNet's Python ``step`` evaluates it (``1-beta`` in float64)."""
    buf.mul_(f32(beta)).add_(x * f32(1.0 - beta))


def _ema_foreach_(bufs, xs, beta: float) -> None:
    torch._foreach_mul_(bufs, f32(beta))
    torch._foreach_add_(bufs, torch._foreach_mul(xs, f32(1.0 - beta)))


def _kernel_ema_(buf, x, beta: float, aggregated: bool) -> None:
    """The moving average as MXNet's AdamW/AdaBelief kernels write it: ``beta*(buf - x) + x`` in the
    aggregated (multi-tensor) kernel, ``beta*buf + (1-beta)*x`` (float32 ``1-beta``) in the single one."""
    if aggregated:
        buf.sub_(x).mul_(f32(beta)).add_(x)
    else:
        buf.mul_(f32(beta)).add_(x * one_minus(beta))


def _kernel_ema_foreach_(bufs, xs, beta: float, aggregated: bool) -> None:
    if aggregated:
        torch._foreach_sub_(bufs, xs)
        torch._foreach_mul_(bufs, f32(beta))
        torch._foreach_add_(bufs, xs)
    else:
        torch._foreach_mul_(bufs, f32(beta))
        torch._foreach_add_(bufs, torch._foreach_mul(xs, one_minus(beta)))


def _l2_grad(grad, weight, wd, rescale_grad, clip_gradient):
    """``clip(rescale_grad*grad) + wd*w`` (MXNet 2.0's usual preprocessing; a new tensor)."""
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    if wd:
        g.add_(weight * f32(wd))
    return g


def _l2_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient):
    gs = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    return gs


def _scaled(xs, scalars):
    """``[x * f32(s)]`` for per-tensor scalars (new tensors)."""
    return torch._foreach_mul(xs, f32s(scalars))


# ------------------------------------------------------------------------------------------ AdamW
def adamw_reference(weight, grad, state: AdamState, *, lr_t, wd, beta1, beta2, epsilon, rescale_grad,
                    clip_gradient, aggregated=True):
    """One tensor, MXNet's fused kernel (``multi_adamw_update`` with ``lr=1, eta=lr_t``):

    ``g = clip(rg*grad); m = b1*(m-g) + g; v = b2*(v-g^2) + g^2; w -= lr_t*(m/(sqrt(v)+eps) + wd*w)``

    ``aggregated=False``: the moving averages rounded as the single-tensor ``adamw_update`` kernel does.
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    g2 = g * g
    _kernel_ema_(state.mean, g, beta1, aggregated)
    _kernel_ema_(state.var, g2, beta2, aggregated)
    step = state.mean / state.var.sqrt().add_(f32(epsilon))
    if wd:
        step.add_(weight * f32(wd))  # decoupled decay of the weight before this update
    weight.sub_(step.mul_(f32(lr_t)))


def adamw_foreach(weights, grads, states, *, lr_ts, wds, beta1, beta2, epsilon, rescale_grad, clip_gradient,
                  aggregated=True):
    """All tensors at once; the same arithmetic as :func:`adamw_reference`."""
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    means, variances = [s.mean for s in states], [s.var for s in states]
    _kernel_ema_foreach_(means, gs, beta1, aggregated)
    _kernel_ema_foreach_(variances, torch._foreach_mul(gs, gs), beta2, aggregated)
    denoms = torch._foreach_sqrt(variances)
    torch._foreach_add_(denoms, f32(epsilon))
    steps = torch._foreach_div(means, denoms)
    if any_decay(wds):
        torch._foreach_add_(steps, _scaled(weights, wds))
    torch._foreach_mul_(steps, f32s(lr_ts))
    torch._foreach_sub_(weights, steps)


# ------------------------------------------------------------------------------------------ AdaBelief
def _adabelief_grad(grad, weight, wd, rescale_grad, clip_gradient):
    """``clip(rescale_grad*grad + wd*w)``: AdaBelief decays *before* clipping."""
    g = rescale_clip(grad, rescale_grad, None)
    if wd:
        g.add_(weight * f32(wd))
    if clip_gradient is not None:
        g.clamp_(-f32(clip_gradient), f32(clip_gradient))
    return g


def adabelief_reference(weight, grad, state: AdamState, *, lr_t, wd, beta1, beta2, epsilon, rescale_grad,
                        clip_gradient, aggregated=True):
    """One tensor, MXNet's fused kernel (``multi_adabelief_update`` with ``lr=1, eta=lr_t``):

    ``g = clip(rg*grad + wd*w); m = b1*(m-g) + g; d = (m-g)^2; s = b2*(s-d) + d + eps;
    w -= lr_t*m/(sqrt(s)+eps)``
    """
    g = _adabelief_grad(grad, weight, wd, rescale_grad, clip_gradient)
    _kernel_ema_(state.mean, g, beta1, aggregated)
    belief = state.mean - g
    belief.mul_(belief)
    _kernel_ema_(state.var, belief, beta2, aggregated)
    state.var.add_(f32(epsilon))
    weight.sub_((state.mean / state.var.sqrt().add_(f32(epsilon))).mul_(f32(lr_t)))


def adabelief_foreach(weights, grads, states, *, lr_ts, wds, beta1, beta2, epsilon, rescale_grad,
                      clip_gradient, aggregated=True):
    """All tensors at once; the same arithmetic as :func:`adabelief_reference`."""
    gs = rescale_clip_foreach(grads, rescale_grad, None)
    if any_decay(wds):
        torch._foreach_add_(gs, _scaled(weights, wds))
    if clip_gradient is not None:
        torch._foreach_clamp_min_(gs, -f32(clip_gradient))
        torch._foreach_clamp_max_(gs, f32(clip_gradient))
    means, variances = [s.mean for s in states], [s.var for s in states]
    _kernel_ema_foreach_(means, gs, beta1, aggregated)
    beliefs = torch._foreach_sub(means, gs)
    torch._foreach_mul_(beliefs, beliefs)
    _kernel_ema_foreach_(variances, beliefs, beta2, aggregated)
    torch._foreach_add_(variances, f32(epsilon))
    denoms = torch._foreach_sqrt(variances)
    torch._foreach_add_(denoms, f32(epsilon))
    steps = torch._foreach_div(means, denoms)
    torch._foreach_mul_(steps, f32s(lr_ts))
    torch._foreach_sub_(weights, steps)


class _CorrectedLRAdam(Optimizer):
    """AdamW and AdaBelief: same arguments and state; the rate is bias-corrected if ``correct_bias``."""

    default_learning_rate = 0.001
    _reference_kernel = staticmethod(adamw_reference)
    _foreach_kernel = staticmethod(adamw_foreach)
    _aggregated = True

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, epsilon=1e-6, correct_bias=True, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.correct_bias = check_bool("correct_bias", correct_bias)

    def create_state(self, index, weight):
        return AdamState(self._zeros(weight), self._zeros(weight))

    def _lr_ts(self, lrs, ts) -> list[float]:
        if not self.correct_bias:
            return list(lrs)
        return per_tensor(lambda lr, t: bias_corrected_lr(lr, t, self.beta1, self.beta2), lrs, ts)

    def _apply(self, indices, weights, grads, states, lrs, wds, ts, fast):
        # MXNet updates all-dense calls with its multi-tensor kernel and a call holding a row-sparse gradient
        # with the single-tensor one (densifying the gradient); the two round the moving averages differently.
        self._aggregated = not any(g.is_sparse for g in grads)
        try:
            super()._apply(indices, weights, grads, states, lrs, wds, ts, fast)
        finally:
            self._aggregated = True

    def _hyper(self):
        return {**Adam._hyper(self), "aggregated": self._aggregated}

    def _native_hyper(self):
        return [*Adam._native_hyper(self), float(self.correct_bias), float(self._aggregated)]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        (lr_t,) = self._lr_ts([lr], [t])
        self._reference_kernel(weight, grad, state, lr_t=lr_t, wd=wd, **self._hyper())

    _step_scalars = ("lr_ts",)

    def _foreach_parts(self, weights, grads, states, lrs, wds, ts):
        return self._foreach_kernel, (weights, grads, states), dict(lr_ts=self._lr_ts(lrs, ts), wds=wds,
                                                                     **self._hyper())


@register
class AdamW(_CorrectedLRAdam):
    r"""Adam with decoupled weight decay (MXNet 2.0 ``adamw``), as MXNet's fused kernel computes it.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \eta_t &= \eta\,\sqrt{1-\beta_2^t}\,/\,(1-\beta_1^t) \quad (\eta_t = \eta \text{ without correct\_bias}) \\
        w_t &= w_{t-1} - \eta_t \left( m_t / (\sqrt{v_t} + \epsilon) + \mathrm{wd}\cdot w_{t-1} \right)

    The decay uses the weight *before* this step and is scaled by the bias-corrected rate; both paths follow
    MXNet's fused kernel (MXNet's own readable ``step`` decays the already-updated weight instead).
    ``rescale_grad = 0`` is an ordinary zero gradient here (MXNet's kernel skips the whole update then).

    Compatibility: ``torch.optim.AdamW`` decays with the *uncorrected* rate (``w *= 1 - lr*wd``) and divides
    ``m_hat`` by ``sqrt(v_hat) + eps``; here epsilon is added to the uncorrected ``sqrt(v)`` and the decay is
    multiplied by ``eta_t`` (``0.32*lr`` at the first step with the default betas, tending to ``lr``).
    Loshchilov & Hutter's schedule multiplier ``eta`` is the learning rate (scheduler) here.

    Args:
        learning_rate: step size (default 0.001).
        beta1, beta2: decay rates of the first and second moment, in [0, 1).
        epsilon: added to ``sqrt(v)`` (default 1e-6).
        correct_bias: fold Adam's bias correction into the learning rate (default True).

    Example:
        >>> opt = AdamW(learning_rate=0.001, wd=0.01, epsilon=1e-6)

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    native_rule = "adamw"


@register
class AdaBelief(_CorrectedLRAdam):
    r"""AdaBelief (MXNet 2.0 ``adabelief``): Adam whose second moment is the variance of the gradient
    around its moving average, as MXNet's fused kernel computes it.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla + \mathrm{wd}\cdot w_{t-1}, \mathrm{clip\_gradient}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        s_t &= \beta_2 s_{t-1} + (1-\beta_2) (g_t - m_t)^2 + \epsilon \\
        \eta_t &= \eta\,\sqrt{1-\beta_2^t}\,/\,(1-\beta_1^t) \quad (\eta_t = \eta \text{ without correct\_bias}) \\
        w_t &= w_{t-1} - \eta_t\, m_t / (\sqrt{s_t} + \epsilon)

    Weight decay is L2 and is added *before* clipping (unlike Adam). Compatibility: the authors' PyTorch
    code (``adabelief_pytorch``) divides by ``sqrt(s/(1-beta2^t)) + eps`` (epsilon after the correction) and
    offers decoupled decay and rectification; MXNet adds epsilon to the uncorrected ``sqrt(s)`` and folds the
    correction into the learning rate. ``rescale_grad = 0`` is an ordinary zero gradient (MXNet's kernel
    skips the whole update then).

    Args:
        learning_rate: step size (default 0.001).
        beta1, beta2: decay rates of the first moment and of the belief ``s``, in [0, 1).
        epsilon: added to ``s`` at every step and to ``sqrt(s)`` (default 1e-6).
        correct_bias: fold the bias correction into the learning rate (default True).

    Example:
        >>> opt = AdaBelief(learning_rate=0.001, epsilon=1e-6)

    References:
        Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
        NeurIPS 2020.
    """

    native_rule = "adabelief"
    _reference_kernel = staticmethod(adabelief_reference)
    _foreach_kernel = staticmethod(adabelief_foreach)


# ------------------------------------------------------------------------------------------ Adamax
def adamax_reference(weight, grad, state: AdamaxState, *, lr_t, wd, beta1, beta2, epsilon, rescale_grad,
                     clip_gradient):
    """One tensor, ``lr_t = lr/(1 - beta1^t)``:

    ``g = clip(rg*grad) + wd*w; m = b1*m + (1-b1)*g; u = max(b2*u, |g|); w -= lr_t*m/(u + eps)``
    """
    g = _l2_grad(grad, weight, wd, rescale_grad, clip_gradient)
    _ema_(state.mean, g, beta1)
    torch.maximum(state.inf_norm.mul_(f32(beta2)), g.abs(), out=state.inf_norm)
    weight.sub_((state.mean / (state.inf_norm + f32(epsilon))).mul_(f32(lr_t)))


def adamax_foreach(weights, grads, states, *, lr_ts, wds, beta1, beta2, epsilon, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`adamax_reference`."""
    gs = _l2_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    means, norms = [s.mean for s in states], [s.inf_norm for s in states]
    _ema_foreach_(means, gs, beta1)
    torch._foreach_mul_(norms, f32(beta2))
    torch._foreach_maximum_(norms, torch._foreach_abs(gs))
    steps = torch._foreach_div(means, torch._foreach_add(norms, f32(epsilon)))
    torch._foreach_mul_(steps, f32s(lr_ts))
    torch._foreach_sub_(weights, steps)


@register
class Adamax(Optimizer):
    r"""AdaMax, Adam with the infinity norm (MXNet 2.0 ``adamax``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        u_t &= \max(\beta_2 u_{t-1}, |g_t|) \\
        w_t &= w_{t-1} - \frac{\eta}{1-\beta_1^t}\, m_t / (u_t + \epsilon)

    MXNet 2.0 has no fused kernel for Adamax; its numerics are its Python ``step`` (1.9.1 had no epsilon,
    so a coordinate whose gradient was always 0 became NaN). Compatibility: ``torch.optim.Adamax`` computes
    ``max(beta2*u, |g| + eps)`` and divides by ``u``; here epsilon is added to ``u`` in the division only.

    Args:
        learning_rate: step size (default 0.002).
        beta1: decay rate of the first moment, in [0, 1).
        beta2: decay rate of the infinity norm, in [0, 1] (1: the running maximum of ``|g|``).
        epsilon: added to ``u`` in the division (default 1e-8).

    Example:
        >>> opt = Adamax(learning_rate=0.002, beta1=0.9, beta2=0.999)

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.
    """

    default_learning_rate = 0.002
    native_rule = "adamax"

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0)
        self.epsilon = check_real("epsilon", epsilon, 0.0)

    def create_state(self, index, weight):
        return AdamaxState(self._zeros(weight), self._zeros(weight))

    def _lr_ts(self, lrs, ts) -> list[float]:
        return per_tensor(lambda lr, t: lr / (1.0 - self.beta1**t), lrs, ts)

    _hyper = Adam._hyper
    _native_hyper = Adam._native_hyper

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        (lr_t,) = self._lr_ts([lr], [t])
        adamax_reference(weight, grad, state, lr_t=lr_t, wd=wd, **self._hyper())

    _step_scalars = ("lr_ts",)

    def _foreach_parts(self, weights, grads, states, lrs, wds, ts):
        return adamax_foreach, (weights, grads, states), dict(lr_ts=self._lr_ts(lrs, ts), wds=wds, **self._hyper())


# ------------------------------------------------------------------------------------------ Nadam
class NadamScalars(NamedTuple):
    """Per-update scalars of Nadam, computed in float64 by :meth:`Nadam._scalars`."""

    mom_t: float  # mu_t = beta1 * (1 - 0.5 * 0.96^(t * schedule_decay))
    mom_next: float  # mu_{t+1}
    m_schedule: float  # product of the mu's so far (see Nadam's schedule_scope)
    m_schedule_next: float  # m_schedule * mu_{t+1}
    coef2: float  # 1 - beta2^t


def nadam_momentum(t: int, beta1: float, schedule_decay: float) -> float:
    """The warming momentum schedule ``beta1 * (1 - 0.5 * 0.96^(t * schedule_decay))`` (float64)."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * schedule_decay))


def nadam_reference(weight, grad, state: AdamState, *, lr, wd, scalars: NadamScalars, beta1, beta2, epsilon,
                    rescale_grad, clip_gradient):
    """One tensor: ``g = clip(rg*grad) + wd*w; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2``;
    ``m_bar = mu_{t+1}*m/(1-m_schedule_next) + (1-mu_t)*g/(1-m_schedule)``;
    ``w -= lr*m_bar/(sqrt(v/(1-b2^t)) + eps)``."""
    s = scalars
    g = _l2_grad(grad, weight, wd, rescale_grad, clip_gradient)
    _ema_(state.mean, g, beta1)
    _ema_(state.var, g * g, beta2)
    g_prime = g.div_(f32(1.0 - s.m_schedule))
    m_bar = (state.mean / f32(1.0 - s.m_schedule_next)).mul_(f32(s.mom_next))
    m_bar.add_(g_prime.mul_(f32(1.0 - s.mom_t)))
    denom = (state.var / f32(s.coef2)).sqrt_().add_(f32(epsilon))
    weight.sub_(m_bar.div_(denom).mul_(f32(lr)))


def nadam_factors(scalars: list[NadamScalars]) -> dict[str, list[float]]:
    """The per-tensor factors :func:`nadam_foreach` multiplies and divides by, in float64 (rounded to float32 once,
    by the rule): ``1 - m_schedule``, ``1 - m_schedule_next``, ``mu_{t+1}``, ``1 - mu_t`` and ``1 - beta2^t``."""
    return {"grad_divisors": [1.0 - s.m_schedule for s in scalars],
            "mean_divisors": [1.0 - s.m_schedule_next for s in scalars],
            "mom_nexts": [s.mom_next for s in scalars],
            "grad_factors": [1.0 - s.mom_t for s in scalars],
            "coef2s": [s.coef2 for s in scalars]}


def _divide_(xs, divisors, new: bool = False):
    """``xs / divisors`` for per-tensor divisors, in place (or as new tensors with ``new``). A traced step's divisors
    (float32 tensors, :mod:`optzoo.optimizer.traced`) multiply by their float32 reciprocal instead, as the native
    kernel does (an ulp or so from the division): compiled, three divisions per element made Nadam's step wait on
    the CPU's divider, not on memory (the eager foreach step, bit-exact to MXNet, divides)."""
    if isinstance(divisors, torch.Tensor):
        return (torch._foreach_mul if new else torch._foreach_mul_)(xs, f32s(torch.reciprocal(divisors)))
    return (torch._foreach_div if new else torch._foreach_div_)(xs, f32s(divisors))


def nadam_foreach(weights, grads, states, *, lrs, wds, grad_divisors, mean_divisors, mom_nexts, grad_factors, coef2s,
                  beta1, beta2, epsilon, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`nadam_reference`, the per-tensor factors from
    :func:`nadam_factors`."""
    gs = _l2_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    means, variances = [s.mean for s in states], [s.var for s in states]
    _ema_foreach_(means, gs, beta1)
    _ema_foreach_(variances, torch._foreach_mul(gs, gs), beta2)
    _divide_(gs, grad_divisors)
    m_bars = _divide_(means, mean_divisors, new=True)
    torch._foreach_mul_(m_bars, f32s(mom_nexts))
    torch._foreach_mul_(gs, f32s(grad_factors))
    torch._foreach_add_(m_bars, gs)
    denoms = _divide_(variances, coef2s, new=True)
    torch._foreach_sqrt_(denoms)
    torch._foreach_add_(denoms, f32(epsilon))
    torch._foreach_div_(m_bars, denoms)
    torch._foreach_mul_(m_bars, f32s(lrs))
    torch._foreach_sub_(weights, m_bars)


@register
class Nadam(Optimizer):
    r"""Nesterov-accelerated Adam with Dozat's warming momentum schedule (MXNet 2.0 ``nadam``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        \mu_t &= \beta_1 (1 - \tfrac12\, 0.96^{t\cdot\mathrm{schedule\_decay}}), \qquad
            M \leftarrow M \mu_t \ (\text{the "m\_schedule"}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \bar m_t &= \mu_{t+1}\, \frac{m_t}{1 - M\mu_{t+1}} + (1-\mu_t)\, \frac{g_t}{1 - M} \\
        w_t &= w_{t-1} - \eta\, \bar m_t / \left(\sqrt{v_t / (1-\beta_2^t)} + \epsilon\right)

    ``schedule_scope="optimizer"`` (default, MXNet's behaviour): ``M`` is ONE number on the optimizer,
    multiplied by ``mu_t`` at every update of every parameter, in update order: after ``k`` steps of ``P``
    parameters it is a product of ``k*P`` factors, not ``k``, so early updates depend on the number of
    parameters (and of devices). ``M`` is saved with the optimizer (:meth:`extra_state`).
    ``schedule_scope="parameter"``: ``M = prod_{s<=t} mu_s`` for each parameter's own count ``t``, as in the
    paper and ``torch.optim.NAdam`` (a pure function of ``t``, always taken from ``s = 1`` even with
    ``begin_num_update``; nothing extra to save).

    Compatibility: ``torch.optim.NAdam`` (``momentum_decay=0.004`` is ``schedule_decay``) applies weight
    decay the same way and keeps a per-parameter product; it adds epsilon to ``sqrt(v_hat)`` as here.

    Args:
        learning_rate: step size (default 0.001).
        beta1, beta2: decay rates of the first and second moment, in [0, 1).
        epsilon: added to ``sqrt(v_hat)`` (default 1e-8).
        schedule_decay: decay of the momentum schedule, >= 0 (default 0.004).
        schedule_scope: ``"optimizer"`` (MXNet, one shared ``m_schedule``) or ``"parameter"``.

    Example:
        >>> opt = Nadam(learning_rate=0.001, schedule_decay=0.004)

    References:
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
    """

    default_learning_rate = 0.001
    native_rule = "nadam"
    _CACHE_SIZE = 16

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, epsilon=1e-8, schedule_decay=0.004,
                 schedule_scope="optimizer", **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.schedule_decay = check_real("schedule_decay", schedule_decay, 0.0)
        self.schedule_scope = check_choice("schedule_scope", schedule_scope, ("optimizer", "parameter"))
        self.m_schedule = 1.0
        self._products: dict[tuple, float] = {}

    def create_state(self, index, weight):
        return AdamState(self._zeros(weight), self._zeros(weight))

    def extra_state(self) -> dict:
        return {"m_schedule": self.m_schedule}

    def load_extra_state(self, extra: dict) -> None:
        if "m_schedule" in extra:
            self.m_schedule = check_real("m_schedule", extra["m_schedule"], 0.0, 1.0)

    def _momentum(self, t: int) -> float:
        return nadam_momentum(t, self.beta1, self.schedule_decay)

    def _product(self, t: int) -> float:
        """``prod_{s=1..t} mu_s``, extended from the nearest cached count (one multiplication per step)."""
        key = (self.beta1, self.schedule_decay)
        cache = self._products
        if (*key, t) not in cache:
            start = max((k[2] for k in cache if k[:2] == key and k[2] < t), default=0)
            value = cache.get((*key, start), 1.0)
            for s in range(start + 1, t + 1):
                value *= self._momentum(s)
                if value == 0.0:  # underflow: every later product is 0 too
                    break
            if len(cache) >= self._CACHE_SIZE:  # keep the latest counts of the current schedule
                for stale in sorted(cache, key=lambda k: (k[:2] == key, k[2]))[: self._CACHE_SIZE // 2]:
                    del cache[stale]
            cache[(*key, t)] = value
        return cache[(*key, t)]

    def _scalars(self, ts) -> list[NadamScalars]:
        """The per-update scalars in update order; advances the shared ``m_schedule`` once per update. The values
        that depend on the count only are computed once per distinct count of the call (a step of thousands of
        tensors has one or a few)."""
        out = []
        by_count = {}
        shared = self.schedule_scope == "optimizer"
        m_schedule = self.m_schedule
        for t in ts:
            known = by_count.get(t)
            if known is None:
                known = by_count[t] = (self._momentum(t), self._momentum(t + 1), 1.0 - self.beta2**t)
            mom_t, mom_next, coef2 = known
            m_schedule = m_schedule * mom_t if shared else self._product(t)
            out.append(NadamScalars(mom_t, mom_next, m_schedule, m_schedule * mom_next, coef2))
        if shared:
            self.m_schedule = m_schedule
        return out

    _hyper = Adam._hyper
    _native_hyper = Adam._native_hyper

    def _native_aux(self, indices, lrs, ts):
        """Each tensor's ``(mu_t, mu_{t+1}, m_schedule, m_schedule_next, 1 - beta2^t)`` from :meth:`_scalars`,
        in update order; the shared ``m_schedule`` advances only when ``commit`` runs (after the kernel)."""
        before = self.m_schedule
        try:
            scalars = self._scalars(ts)
            after = self.m_schedule
        finally:
            self.m_schedule = before
        aux = list(itertools.chain.from_iterable(scalars))  # NadamScalars' fields are in the kernel's order

        def commit():
            self.m_schedule = after

        return aux, commit

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        (scalars,) = self._scalars([t])
        nadam_reference(weight, grad, state, lr=lr, wd=wd, scalars=scalars, **self._hyper())

    _step_scalars = ("lrs", "grad_divisors", "mean_divisors", "mom_nexts", "grad_factors", "coef2s")

    def _foreach_parts(self, weights, grads, states, lrs, wds, ts):
        factors = nadam_factors(self._scalars(ts))  # advances the shared m_schedule, as every step does
        return nadam_foreach, (weights, grads, states), dict(lrs=lrs, wds=wds, **factors, **self._hyper())
