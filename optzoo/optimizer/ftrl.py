"""The follow-the-regularized-leader family: Ftrl (FTRL-Proximal) and FTML, MXNet 2.0 numerics.

Both keep the weight as a closed-form function of accumulated state and divide by the learning rate,
so a learning rate of 0 has no meaning for them: the constructor and ``set_learning_rate`` reject it,
and a tensor whose effective rate is 0 (a schedule that ends at 0, ``lr_mult=0`` to freeze a parameter,
a torch param group with ``lr=0``) is left untouched, weight and state, instead of becoming NaN as in MXNet.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import (
    Optimizer,
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
from .validation import check_bool, check_real

__all__ = [
    "FTML",
    "FTMLState",
    "Ftrl",
    "FtrlState",
    "exact_sqrt",
    "exact_sqrt_foreach",
    "ftml_foreach",
    "ftml_reference",
    "ftml_scalars",
    "ftrl_foreach",
    "ftrl_reference",
]


@state_class
class FtrlState(NamedTuple):
    z: torch.Tensor  #: accumulated (gradient - sigma * weight)
    n: torch.Tensor  #: accumulated squared gradients


@state_class
class FTMLState(NamedTuple):
    d: torch.Tensor  #: d_{t-1}, the previous step's per-coordinate scale
    v: torch.Tensor  #: second-moment estimate
    z: torch.Tensor  #: the moving leader


# ---------------------------------------------------------------------------------------------------- sqrt
def exact_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded ``sqrt(x)`` as a new tensor.

    torch's float32 ``sqrt`` on CPU is off by one ulp for ~17% of inputs (MXNet's ``sqrtf`` is exact). Ftrl
    subtracts two nearly equal square roots, which turns that ulp into a relative error of up to ~1e-5 in
    ``z`` after a hundred steps, so float32 CPU tensors take the square root in float64 (exact once rounded).
    """
    if x.dtype == torch.float32 and x.device.type == "cpu":
        return x.double().sqrt_().float()
    return x.sqrt()


def exact_sqrt_foreach(xs) -> list[torch.Tensor]:
    """:func:`exact_sqrt` of every tensor (new tensors)."""
    xs = list(xs)
    if any(x.dtype == torch.float32 and x.device.type == "cpu" for x in xs):
        return [exact_sqrt(x) for x in xs]
    return torch._foreach_sqrt(xs)


# ---------------------------------------------------------------------------------------------------- Ftrl
def ftrl_reference(weight, grad, state: FtrlState, *, lr, wd, lamda1, beta, rescale_grad, clip_gradient):
    """One tensor, in the order of MXNet's ``ftrl_update`` kernel (float32 scalars):

    ``g = clip(rg*grad); z += g - (sqrt(n + g^2) - sqrt(n)) * w / lr; n += g^2;
    w = -sign(z) * max(|z| - lamda1, 0) / ((beta + sqrt(n)) / lr + wd)``
    """
    lr = f32(lr)
    z, n = state
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    g2 = g * g
    sigma_w = exact_sqrt(n + g2).sub_(exact_sqrt(n)).mul_(weight).div_(lr)
    z.add_(g.sub_(sigma_w))
    n.add_(g2)
    shrunk = z.abs().sub_(f32(lamda1)).clamp_min_(0.0).mul_(z.sign()).neg_()
    denom = exact_sqrt(n).add_(f32(beta)).div_(lr).add_(f32(wd))
    weight.copy_(shrunk.div_(denom))


def ftrl_foreach(weights, grads, states, *, lrs, wds, lamda1, beta, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`ftrl_reference`."""
    lrs = f32s(lrs)
    zs = [s.z for s in states]
    ns = [s.n for s in states]
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    g2s = torch._foreach_mul(gs, gs)
    sigma_ws = exact_sqrt_foreach(torch._foreach_add(ns, g2s))
    torch._foreach_sub_(sigma_ws, exact_sqrt_foreach(ns))
    torch._foreach_mul_(sigma_ws, weights)
    torch._foreach_div_(sigma_ws, lrs)
    torch._foreach_sub_(gs, sigma_ws)
    torch._foreach_add_(zs, gs)
    torch._foreach_add_(ns, g2s)
    shrunk = torch._foreach_abs(zs)
    torch._foreach_sub_(shrunk, f32(lamda1))
    torch._foreach_clamp_min_(shrunk, 0.0)
    torch._foreach_mul_(shrunk, torch._foreach_sign(zs))
    torch._foreach_neg_(shrunk)
    denoms = exact_sqrt_foreach(ns)
    torch._foreach_add_(denoms, f32(beta))
    torch._foreach_div_(denoms, lrs)
    torch._foreach_add_(denoms, f32s(wds))
    torch._foreach_div_(shrunk, denoms)
    torch._foreach_copy_(weights, shrunk)


def _moving(items, lrs):
    """Drops the tensors whose learning rate is 0 (they stay as they are; see the module docstring)."""
    keep = [i for i, lr in enumerate(lrs) if lr != 0.0]
    if len(keep) == len(lrs):
        return items
    return [[column[i] for i in keep] for column in items]


def _reject_zero_lr(owner: str, lr) -> None:
    if lr is not None and lr == 0.0:
        raise ValueError(f"learning_rate must be > 0 for {owner}: its update divides by the learning rate "
                         f"(MXNet gives NaN); got {lr!r}. To freeze a parameter use lr_mult=0.")


class _FollowTheLeader(Optimizer):
    """Shared by Ftrl and FTML: a positive learning rate; tensors with an effective rate of 0 are skipped."""

    def __init__(self, learning_rate=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        _reject_zero_lr(type(self).__name__, self.lr)

    def set_learning_rate(self, lr: float) -> None:
        if self.lr_scheduler is None:
            check_real("learning_rate", lr, 0.0)
            _reject_zero_lr(type(self).__name__, lr)
        super().set_learning_rate(lr)

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        if lr != 0.0:
            self._reference_kernel(weight, grad, state, lr, wd, t)

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        weights, grads, states, lrs, wds, ts = _moving([weights, grads, states, lrs, wds, ts], lrs)
        if weights:
            self._foreach_kernel(weights, grads, states, lrs, wds, ts)

    def _reference_kernel(self, weight, grad, state, lr, wd, t):  # pragma: no cover - subclasses
        raise NotImplementedError

    def _foreach_kernel(self, weights, grads, states, lrs, wds, ts):  # pragma: no cover - subclasses
        raise NotImplementedError


@register
class Ftrl(_FollowTheLeader):
    r"""FTRL-Proximal (MXNet 2.0 ``ftrl``): per-coordinate learning rates with L1 and L2 regularisation.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        z_t &= z_{t-1} + g_t - \frac{\sqrt{n_{t-1} + g_t^2} - \sqrt{n_{t-1}}}{\eta}\, w_{t-1} \\
        n_t &= n_{t-1} + g_t^2 \\
        w_t &= \frac{-\mathrm{sign}(z_t)\,\max(|z_t| - \lambda_1, 0)}{(\beta + \sqrt{n_t})/\eta + \mathrm{wd}}

    The weight is a closed-form function of ``z`` and ``n``: the previous weight only enters through ``z``.
    ``wd`` is an L2 term in the denominator, never added to the gradient. Coordinates with
    ``|z| <= lamda1`` are exactly 0 (sparse models). States ``(z, n)`` are float32, as in MXNet, whatever
    the weight's dtype (MXNet refuses float64 weights; optzoo accepts them at float32 state precision).

    Compatibility: there is no torch.optim equivalent. Relative to McMahan et al. (2013), ``eta`` is the
    paper's ``alpha``, ``lamda1`` its ``lambda_1`` and ``wd`` its ``lambda_2``. A learning rate of 0 is
    rejected (MXNet divides by it and gives NaN); a tensor whose effective rate is 0 is left unchanged.

    Sparse gradients: MXNet 2.0 densifies a row-sparse gradient on a dense weight, so every row is
    recomputed from its ``z`` and ``n`` (rows that never had a gradient become 0). That is optzoo's default
    (``lazy_update=False``). ``lazy_update=True`` updates only the rows present in the gradient (their
    ``z``, ``n`` and weight; the other rows are untouched), as MXNet 1.9.1 does for row-sparse weights.

    Args:
        learning_rate: ``eta``, > 0 (default 0.1).
        lamda1: L1 regularisation strength ``lambda_1`` >= 0 (default 0.01).
        beta: per-coordinate learning-rate smoothing, > 0 (default 1.0); with ``beta = 0`` a coordinate
            without gradient would divide 0 by 0.
        lazy_update: optzoo only; see above (default False = MXNet 2.0).

    Example:
        >>> opt = Ftrl(learning_rate=0.1, lamda1=0.01, beta=1.0, wd=1e-4)

    References:
        McMahan et al., *Ad Click Prediction: a View from the Trenches*, KDD 2013.
    """

    sparse_support = "lazy"
    state_dtype = torch.float32
    default_learning_rate = 0.1
    native_rule = "ftrl"

    def __init__(self, learning_rate=None, lamda1=0.01, beta=1.0, lazy_update=False, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.lamda1 = check_real("lamda1", lamda1, 0.0)
        self.beta = check_real("beta", beta, 0.0, low_open=True)
        self.lazy_update = check_bool("lazy_update", lazy_update)

    def create_state(self, index, weight):
        return FtrlState(self._zeros(weight), self._zeros(weight))

    def _hyper(self):
        return {"lamda1": self.lamda1, "beta": self.beta, "rescale_grad": self.rescale_grad,
                    "clip_gradient": self.clip_gradient}

    def _native_hyper(self):
        return [self.lamda1, self.beta, self.rescale_grad, self._native_clip()]

    def _reference_kernel(self, weight, grad, state, lr, wd, t):
        ftrl_reference(weight, grad, state, lr=lr, wd=wd, **self._hyper())

    def _foreach_kernel(self, weights, grads, states, lrs, wds, ts):
        ftrl_foreach(weights, grads, states, lrs=lrs, wds=wds, **self._hyper())


# ---------------------------------------------------------------------------------------------------- FTML
def _powf(base: float, t: int) -> float:
    """``powf(float32(base), t)``: the power in float64, rounded once to float32.

    MXNet's kernel calls the C library's ``powf``; glibc's is accurate to < 1 float32 ulp and agrees with
    this for all but a few ``t`` per thousand (numpy's float32 ``power`` uses another approximation and
    disagrees far more often).
    """
    return f32(f32(base) ** t)


def ftml_scalars(lr: float, t: int, beta1: float, beta2: float) -> tuple[float, float]:
    """``((1 - beta1^t) / lr, 1 - beta2^t)`` in float32, as MXNet's ``ftml_update`` kernel computes them."""
    coef1 = f32(1.0 - _powf(beta1, t))
    coef2 = f32(1.0 - _powf(beta2, t))
    return f32(coef1 / f32(lr)), coef2


def ftml_reference(weight, grad, state: FTMLState, *, coef1_lr, coef2, wd, beta1, beta2, epsilon,
                   rescale_grad, clip_gradient):
    """One tensor, with ``coef1_lr, coef2 = ftml_scalars(lr, t, beta1, beta2)``:

    ``g = clip(rg*grad) + wd*w; v = b2*v + (1-b2)*g^2; d_t = coef1_lr * (sqrt(v / coef2) + eps);
    z = b1*z + (1-b1)*g - (d_t - b1*d)*w; d = d_t; w = -z / d_t``
    """
    d, v, z = state
    g = rescale_clip(grad, rescale_grad, clip_gradient) + f32(wd) * weight
    v.mul_(f32(beta2)).add_(g.square().mul_(one_minus(beta2)))
    d_t = exact_sqrt(v.div(coef2)).add_(f32(epsilon)).mul_(coef1_lr)
    z.mul_(f32(beta1)).add_(g.mul_(one_minus(beta1))).sub_(d_t.sub(d.mul(f32(beta1))).mul_(weight))
    d.copy_(d_t)
    weight.copy_(z.div(d_t).neg_())


def ftml_foreach(weights, grads, states, *, coef1_lrs, coef2s, wds, beta1, beta2, epsilon, rescale_grad,
                 clip_gradient):
    """All tensors at once; the same arithmetic as :func:`ftml_reference`."""
    ds = [s.d for s in states]
    vs = [s.v for s in states]
    zs = [s.z for s in states]
    gs = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    torch._foreach_mul_(vs, f32(beta2))
    g2s = torch._foreach_mul(gs, gs)
    torch._foreach_mul_(g2s, one_minus(beta2))
    torch._foreach_add_(vs, g2s)
    d_ts = exact_sqrt_foreach(torch._foreach_div(vs, coef2s))
    torch._foreach_add_(d_ts, f32(epsilon))
    torch._foreach_mul_(d_ts, coef1_lrs)
    sigmas = torch._foreach_sub(d_ts, torch._foreach_mul(ds, f32(beta1)))
    torch._foreach_mul_(sigmas, weights)
    torch._foreach_mul_(zs, f32(beta1))
    torch._foreach_mul_(gs, one_minus(beta1))
    torch._foreach_add_(zs, gs)
    torch._foreach_sub_(zs, sigmas)
    torch._foreach_copy_(ds, d_ts)
    new_weights = torch._foreach_div(zs, d_ts)
    torch._foreach_neg_(new_weights)
    torch._foreach_copy_(weights, new_weights)


@register
class FTML(_FollowTheLeader):
    r"""Follow the Moving Leader (MXNet 2.0 ``ftml``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        d_t &= \frac{1-\beta_1^t}{\eta}\left(\sqrt{\frac{v_t}{1-\beta_2^t}} + \epsilon\right) \\
        z_t &= \beta_1 z_{t-1} + (1-\beta_1) g_t - (d_t - \beta_1 d_{t-1})\, w_{t-1} \\
        w_t &= -z_t / d_t

    ``t`` is the parameter's own update count. States ``(d, v, z)`` have the weight's dtype.

    Compatibility: no torch.optim equivalent. Matches Zheng & Kwok (2017) with epsilon added to the
    bias-corrected ``sqrt(v_hat)`` and L2 weight decay added to the gradient after clipping (MXNet 1.9.1
    clipped the sum). A learning rate of 0 is rejected (MXNet divides by it and gives NaN); a tensor
    whose effective rate is 0 is left unchanged.

    Args:
        learning_rate: ``eta``, > 0 (default 0.0025).
        beta1: in [0, 1) (default 0.6).
        beta2: in [0, 1) (default 0.999).
        epsilon: > 0 (default 1e-8); with 0 a coordinate whose gradient is always 0 gives 0/0.

    Example:
        >>> opt = FTML(learning_rate=0.0025, beta1=0.6, beta2=0.999, epsilon=1e-8)

    References:
        Zheng & Kwok, *Follow the Moving Leader in Deep Learning*, ICML 2017.
    """

    default_learning_rate = 0.0025
    native_rule = "ftml"

    def __init__(self, learning_rate=None, beta1=0.6, beta2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0, low_open=True)

    def create_state(self, index, weight):
        return FTMLState(self._zeros(weight), self._zeros(weight), self._zeros(weight))

    def _hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "epsilon": self.epsilon,
                "rescale_grad": self.rescale_grad,
                    "clip_gradient": self.clip_gradient}

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.epsilon, self.rescale_grad, self._native_clip()]

    def _reference_kernel(self, weight, grad, state, lr, wd, t):
        coef1_lr, coef2 = ftml_scalars(lr, t, self.beta1, self.beta2)
        ftml_reference(weight, grad, state, coef1_lr=coef1_lr, coef2=coef2, wd=wd, **self._hyper())

    def _foreach_kernel(self, weights, grads, states, lrs, wds, ts):
        scalars = per_tensor(lambda lr, t: ftml_scalars(lr, t, self.beta1, self.beta2), lrs, ts)
        ftml_foreach(weights, grads, states, coef1_lrs=f32s([s[0] for s in scalars]),
                     coef2s=f32s([s[1] for s in scalars]), wds=wds, **self._hyper())
