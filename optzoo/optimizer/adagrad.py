"""The AdaGrad family: AdaGrad, GroupAdaGrad, RMSProp (plain and centered) and AdaDelta, MXNet 2.0 numerics.

All four keep per-coordinate (GroupAdaGrad: per-row) statistics of squared gradients. As in MXNet, those
states are float32 whatever the weight's dtype; optzoo keeps float64 states for float64 weights (MXNet
cannot update float64 weights at all), and low-precision weights without a master copy are updated from
float32 arithmetic and rounded once.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from .. import native
from .base import Optimizer, any_decay, f32, f32s, one_minus, register, rescale_clip, rescale_clip_foreach, state_class
from .validation import check_bool, check_real

__all__ = [
    "AdaDelta",
    "AdaDeltaState",
    "AdaGrad",
    "GroupAdaGrad",
    "RMSProp",
    "RMSPropState",
    "adadelta_foreach",
    "adadelta_reference",
    "adagrad_foreach",
    "adagrad_reference",
    "group_adagrad_foreach",
    "group_adagrad_reference",
    "rmsprop_centered_foreach",
    "rmsprop_centered_reference",
    "rmsprop_foreach",
    "rmsprop_reference",
]


@state_class
class RMSPropState(NamedTuple):
    """State of *centered* RMSProp (plain RMSProp keeps a bare ``var`` tensor)."""

    mean: torch.Tensor  # E[g]
    var: torch.Tensor  # E[g^2]
    mom: torch.Tensor  # momentum buffer (learning rate inside)


@state_class
class AdaDeltaState(NamedTuple):
    acc_g: torch.Tensor  # E[g^2]
    acc_delta: torch.Tensor  # E[delta^2]


# ------------------------------------------------------------------------------ gradient preprocessing
def _decayed_grad(weight, grad, wd, rescale_grad, clip_gradient, dtype):
    """``clip(rg*grad) + wd*w`` as a new tensor of the state's dtype (the caller's gradient is untouched)."""
    g = rescale_clip(grad.to(dtype), rescale_grad, clip_gradient)
    if wd:
        g.add_(weight.to(dtype) * f32(wd))
    return g


def _decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient, states):
    """:func:`_decayed_grad` for every tensor; ``states`` give each gradient's working dtype."""
    gs = rescale_clip_foreach([g.to(s.dtype) for g, s in zip(grads, states)], rescale_grad, clip_gradient)
    if any_decay(wds):
        decay = torch._foreach_mul([w.to(s.dtype) for w, s in zip(weights, states)], f32s(wds))
        torch._foreach_add_(gs, decay)
    return gs


def _clip_weights_(weight, clip_weights):
    if clip_weights is not None:
        c = f32(clip_weights)
        weight.clamp_(-c, c)


# --------------------------------------------------------------------------------------------- AdaGrad
def adagrad_reference(weight, grad, history, *, lr, wd, epsilon, rescale_grad, clip_gradient):
    """One tensor: ``g = clip(rg*grad) + wd*w; h += g^2; w -= lr * g/(sqrt(h) + eps)``."""
    g = _decayed_grad(weight, grad, wd, rescale_grad, clip_gradient, history.dtype)
    history.add_(g * g)
    g.div_(history.sqrt().add_(f32(epsilon)))
    weight.sub_(g.mul_(f32(lr)))


def adagrad_foreach(weights, grads, histories, *, lrs, wds, epsilon, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`adagrad_reference`."""
    gs = _decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient, histories)
    torch._foreach_add_(histories, torch._foreach_mul(gs, gs))
    denoms = torch._foreach_sqrt(histories)
    torch._foreach_add_(denoms, f32(epsilon))
    torch._foreach_div_(gs, denoms)
    torch._foreach_mul_(gs, f32s(lrs))
    torch._foreach_sub_(weights, gs)


def _as_rows(tensor):
    """``tensor`` as a (rows, row length) matrix, rows along the first dimension (a view when possible): a 1-D
    tensor is a column (one element per row), a 0-d one a 1x1 matrix."""
    if tensor.dim() == 0:
        return tensor.reshape(1, 1)
    if tensor.dim() == 1:
        return tensor.unsqueeze(1)
    return tensor.flatten(1)


def group_adagrad_reference(weight, grad, history, *, lr, epsilon, rescale_grad, clip_gradient):
    """One tensor of any rank seen as (rows, row length) (:func:`_as_rows`), history of shape (rows, 1):
    ``g = clip(rg*grad); h += mean(g^2, axis=1); w -= lr * g/(sqrt(h) + eps)``."""
    g = rescale_clip(_as_rows(grad).to(history.dtype), rescale_grad, clip_gradient)
    history.add_((g * g).mean(dim=1, keepdim=True))
    g.div_(history.sqrt().add_(f32(epsilon)))
    weight.sub_(g.mul_(f32(lr)).view(weight.shape))


def group_adagrad_foreach(weights, grads, histories, *, lrs, epsilon, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`group_adagrad_reference`."""
    gs = rescale_clip_foreach([_as_rows(g).to(h.dtype) for g, h in zip(grads, histories)], rescale_grad,
                              clip_gradient)
    torch._foreach_add_(histories, [sq.mean(dim=1, keepdim=True) for sq in torch._foreach_mul(gs, gs)])
    denoms = torch._foreach_sqrt(histories)
    torch._foreach_add_(denoms, f32(epsilon))
    torch._foreach_div_(gs, denoms)  # (rows, cols) / (rows, 1) broadcasts
    torch._foreach_mul_(gs, f32s(lrs))
    torch._foreach_sub_(weights, [g.view(w.shape) for g, w in zip(gs, weights)])


def _pop_eps_alias(owner: str, epsilon, default, kwargs: dict):
    """MXNet 1.x spelled AdaGrad's epsilon ``eps``; accept it with a DeprecationWarning."""
    eps = kwargs.pop("eps", None)
    if eps is None:
        return epsilon
    if epsilon != default:
        raise TypeError(f"{owner}: pass only epsilon (eps is its deprecated MXNet 1.x name); got both")
    warnings.warn(
        f"{owner}: 'eps' is deprecated, use 'epsilon'. Note that MXNet 2.0 (and optzoo) add epsilon "
        "outside the square root, g/(sqrt(h) + epsilon); MXNet 1.x added it inside.",
        DeprecationWarning,
        stacklevel=3,
    )
    return eps


class _Float32StateOptimizer(Optimizer):
    """States in float32 as MXNet creates them (float64 for float64 weights, which MXNet cannot update)."""

    state_dtype = torch.float32

    def _zeros(self, weight: torch.Tensor, shape=None) -> torch.Tensor:
        dtype = torch.promote_types(weight.dtype, self.state_dtype)
        return torch.zeros(weight.shape if shape is None else shape, dtype=dtype, device=weight.device)


@register
class AdaGrad(_Float32StateOptimizer):
    r"""AdaGrad (MXNet 2.0 ``adagrad``): per-coordinate step sizes from the sum of squared gradients.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        h_t &= h_{t-1} + g_t^2 \\
        w_t &= w_{t-1} - \eta\, g_t / (\sqrt{h_t} + \epsilon)

    The history ``h`` is float32 (float64 for float64 weights). Row-sparse gradients are applied lazily
    by default, as MXNet's ``sparse.adagrad_update`` does: only the rows present in the gradient change.

    Compatibility: the same rule as ``torch.optim.Adagrad(lr_decay=0, initial_accumulator_value=0,
    eps=epsilon, weight_decay=wd)``: both add the decay to the gradient before it enters the history and
    put epsilon outside the square root; optzoo rescales and clips the gradient first. MXNet 1.x differs:
    epsilon inside the square root (default 1e-7) and the decay outside the history.

    Args:
        learning_rate: step size (default 0.01).
        epsilon: added to ``sqrt(h)`` (default 1e-6). ``eps=`` is accepted as a deprecated alias.
        lazy_update: with a row-sparse gradient, update only the rows present (default True, MXNet's
            behaviour; MXNet requires ``wd == 0`` there, optzoo decays the present rows). False densifies.

    Example:
        >>> opt = AdaGrad(learning_rate=0.01, epsilon=1e-6)

    References:
        Duchi, Hazan, Singer: Adaptive Subgradient Methods for Online Learning and Stochastic
        Optimization, JMLR 2011.
    """

    sparse_support = "lazy"
    default_learning_rate = 0.01
    native_rule = "adagrad"

    def __init__(self, learning_rate=None, epsilon=1e-6, lazy_update=True, **kwargs):
        epsilon = _pop_eps_alias(type(self).__name__, epsilon, 1e-6, kwargs)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.lazy_update = check_bool("lazy_update", lazy_update)

    def create_state(self, index, weight):
        return self._zeros(weight)  # history

    def _native_hyper(self):
        return [self.epsilon, self.rescale_grad, self._native_clip()]

    def _hyper(self):
        return {
            "epsilon": self.epsilon,
            "rescale_grad": self.rescale_grad,
            "clip_gradient": self.clip_gradient,
        }

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        adagrad_reference(weight, grad, state, lr=lr, wd=wd, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        adagrad_foreach(weights, grads, states, lrs=lrs, wds=wds, **self._hyper())


@register
class GroupAdaGrad(_Float32StateOptimizer):
    r"""AdaGrad with one step size per row (MXNet 2.0 ``optimizer.contrib.GroupAdaGrad``), for embeddings.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        h_t &= h_{t-1} + \mathrm{mean}_j\, g_{t,j}^2 \qquad (h \text{ has shape } (\text{rows}, 1)) \\
        w_t &= w_{t-1} - \eta\, g_t / (\sqrt{h_t} + \epsilon)

    The rows are the first dimension and ``mean_j`` runs over all of a row's other elements, so weights of
    any rank work (MXNet asserts 2-D weights; 2-D weights are updated exactly as MXNet does): a 1-D weight of
    n entries is n rows of one element (per-entry AdaGrad, epsilon outside the root), a 0-d weight one row.
    The history has shape (rows, 1) for every rank ((1, 1) for a 0-d weight), so ``Shard(0)`` keeps a row's
    history local. Weight decay is not supported (``wd`` must be 0; MXNet fails at the first update instead
    of at construction). Row-sparse gradients update only the rows present.

    Compatibility: no torch.optim counterpart. MXNet 1.x added epsilon inside the square root (default 1e-5).

    Args:
        learning_rate: step size (default 0.01).
        epsilon: added to ``sqrt(h)`` (default 1e-6). ``eps=`` is accepted as a deprecated alias.
        lazy_update: with a row-sparse gradient, update only the rows present (default True, as MXNet).
            Without weight decay the dense update leaves absent rows unchanged as well (unless epsilon is 0).

    Example:
        >>> opt = GroupAdaGrad(learning_rate=0.1)
    """

    sparse_support = "lazy"
    default_learning_rate = 0.01
    native_rule = "group_adagrad"

    def __init__(self, learning_rate=None, epsilon=1e-6, lazy_update=True, **kwargs):
        epsilon = _pop_eps_alias(type(self).__name__, epsilon, 1e-6, kwargs)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.lazy_update = check_bool("lazy_update", lazy_update)
        if self.wd != 0.0:
            raise ValueError(f"GroupAdaGrad does not support weight decay: wd must be 0, got {self.wd!r}")

    def _check_no_decay(self, wds):
        if any(wds):
            raise ValueError(f"GroupAdaGrad does not support weight decay: wd must be 0, got {max(wds)!r}")

    def create_state(self, index, weight):
        return self._zeros(weight, (weight.shape[0] if weight.dim() else 1, 1))  # history, one value per row

    def _native_hyper(self):
        # the kernel raises the ValueError of _check_no_decay itself when a tensor's wd is not 0
        return [self.epsilon, self.rescale_grad, self._native_clip()]

    def _hyper(self):
        return {
            "epsilon": self.epsilon,
            "rescale_grad": self.rescale_grad,
            "clip_gradient": self.clip_gradient,
        }

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        self._check_no_decay([wd])
        group_adagrad_reference(weight, grad, state, lr=lr, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        self._check_no_decay(wds)
        group_adagrad_foreach(weights, grads, states, lrs=lrs, **self._hyper())


# --------------------------------------------------------------------------------------------- RMSProp
def rmsprop_reference(weight, grad, var, *, lr, wd, rho, epsilon, rescale_grad, clip_gradient, clip_weights):
    """One tensor (Tieleman & Hinton): ``g = clip(rg*grad) + wd*w; var = rho*var + (1-rho)*g^2;
    w -= lr*g/(sqrt(var) + eps)``, then ``w = clip(w, clip_weights)``."""
    g = _decayed_grad(weight, grad, wd, rescale_grad, clip_gradient, var.dtype)
    var.mul_(f32(rho)).add_((g * g).mul_(one_minus(rho)))
    g.mul_(f32(lr)).div_(var.sqrt().add_(f32(epsilon)))
    weight.sub_(g)
    _clip_weights_(weight, clip_weights)


def rmsprop_foreach(
    weights, grads, variances, *, lrs, wds, rho, epsilon, rescale_grad, clip_gradient, clip_weights
):
    """All tensors at once; the same arithmetic as :func:`rmsprop_reference`."""
    gs = _decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient, variances)
    squares = torch._foreach_mul(gs, gs)
    torch._foreach_mul_(squares, one_minus(rho))
    torch._foreach_mul_(variances, f32(rho))
    torch._foreach_add_(variances, squares)
    torch._foreach_mul_(gs, f32s(lrs))
    denoms = torch._foreach_sqrt(variances)
    torch._foreach_add_(denoms, f32(epsilon))
    torch._foreach_div_(gs, denoms)
    torch._foreach_sub_(weights, gs)
    _clip_weights_foreach_(weights, clip_weights)


def rmsprop_centered_reference(
    weight,
    grad,
    state: RMSPropState,
    *,
    lr,
    wd,
    rho,
    momentum,
    epsilon,
    rescale_grad,
    clip_gradient,
    clip_weights,
):
    """One tensor (Graves 2013): ``mean = rho*mean + (1-rho)*g; var = rho*var + (1-rho)*g^2;
    mom = momentum*mom - lr*g/sqrt(var - mean^2 + eps); w += mom``, then ``w = clip(w, clip_weights)``."""
    g = _decayed_grad(weight, grad, wd, rescale_grad, clip_gradient, state.var.dtype)
    c = one_minus(rho)
    state.var.mul_(f32(rho)).add_((g * g).mul_(c))
    state.mean.mul_(f32(rho)).add_(g * c)
    denom = state.var - state.mean * state.mean
    denom.add_(f32(epsilon)).sqrt_()
    state.mom.mul_(f32(momentum)).sub_(g.mul_(f32(lr)).div_(denom))
    weight.add_(state.mom)
    _clip_weights_(weight, clip_weights)


def rmsprop_centered_foreach(
    weights, grads, states, *, lrs, wds, rho, momentum, epsilon, rescale_grad, clip_gradient, clip_weights
):
    """All tensors at once; the same arithmetic as :func:`rmsprop_centered_reference`."""
    means, variances, moms = ([s[k] for s in states] for k in range(3))
    gs = _decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient, variances)
    c = one_minus(rho)
    squares = torch._foreach_mul(gs, gs)
    torch._foreach_mul_(squares, c)
    torch._foreach_mul_(variances, f32(rho))
    torch._foreach_add_(variances, squares)
    torch._foreach_mul_(means, f32(rho))
    torch._foreach_add_(means, torch._foreach_mul(gs, c))
    denoms = torch._foreach_sub(variances, torch._foreach_mul(means, means))
    torch._foreach_add_(denoms, f32(epsilon))
    torch._foreach_sqrt_(denoms)
    torch._foreach_mul_(gs, f32s(lrs))
    torch._foreach_div_(gs, denoms)
    torch._foreach_mul_(moms, f32(momentum))
    torch._foreach_sub_(moms, gs)
    torch._foreach_add_(weights, moms)
    _clip_weights_foreach_(weights, clip_weights)


def _clip_weights_foreach_(weights, clip_weights):
    if clip_weights is not None:
        c = f32(clip_weights)
        torch._foreach_clamp_min_(weights, -c)
        torch._foreach_clamp_max_(weights, c)


@register
class RMSProp(_Float32StateOptimizer):
    r"""RMSProp (MXNet 2.0 ``rmsprop``): Tieleman & Hinton's, or Graves' centered variant with momentum.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        v_t &= \rho\, v_{t-1} + (1-\rho)\, g_t^2 \\
        \text{plain}:&\quad w_t = w_{t-1} - \eta\, g_t / (\sqrt{v_t} + \epsilon) \\
        \text{centered}:&\quad m_t = \rho\, m_{t-1} + (1-\rho)\, g_t,\quad
            \Delta_t = \mu\,\Delta_{t-1} - \eta\, g_t / \sqrt{v_t - m_t^2 + \epsilon},\quad w_t = w_{t-1} + \Delta_t \\
        &\quad w_t \leftarrow \mathrm{clip}(w_t, \mathrm{clip\_weights}) \text{ if clip\_weights is set}

    State: plain, a bare ``var`` tensor; centered, :class:`RMSPropState` ``(mean, var, mom)``; float32
    (float64 for float64 weights).

    Compatibility: the plain variant is ``torch.optim.RMSprop(alpha=rho)``; the centered one puts epsilon
    *inside* the square root and the learning rate inside the momentum buffer (torch: ``sqrt(v - m^2) + eps``
    and ``buf = mu*buf + g/denom; w -= lr*buf``). Weight decay is L2 added after clipping. MXNet 1.x called
    rho/momentum ``gamma1``/``gamma2``, put epsilon inside the square root for the plain variant too and
    clipped the decayed gradient.

    Args:
        learning_rate: step size (default 0.001).
        rho: decay of the moving averages, in [0, 1) (default 0.9).
        momentum: heavy-ball momentum in [0, 1), centered variant only (default 0.9).
        epsilon: numerical stabiliser (default 1e-8).
        centered: Graves' centered variant (default False).
        clip_weights: clip the weight to ``[-clip_weights, clip_weights]`` after each update (> 0);
            None: no clipping.

    Example:
        >>> opt = RMSProp(learning_rate=0.001, rho=0.9, centered=True, momentum=0.9)

    References:
        Tieleman & Hinton, Lecture 6.5 (2012); Graves, Generating Sequences With Recurrent Neural
        Networks (2013), eq. 38-45.
    """

    default_learning_rate = 0.001
    native_rule = "rmsprop"  # "rmsprop_centered" when centered (see _native_kernel)

    def __init__(
        self,
        learning_rate=None,
        rho=0.9,
        momentum=0.9,
        epsilon=1e-8,
        centered=False,
        clip_weights=None,
        **kwargs,
    ):
        for old, new in (("gamma1", "rho"), ("gamma2", "momentum")):
            if old in kwargs:
                raise TypeError(
                    f"RMSProp: {old!r} was renamed {new!r} in MXNet 2.0; pass {new}={kwargs[old]!r}"
                )
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = check_real("rho", rho, 0.0, 1.0, high_open=True)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.centered = check_bool("centered", centered)
        self.clip_weights = check_real("clip_weights", clip_weights, 0.0, low_open=True, allow_none=True)

    def create_state(self, index, weight):
        if self.centered:
            return RMSPropState(self._zeros(weight), self._zeros(weight), self._zeros(weight))
        return self._zeros(weight)  # var

    def _native_hyper(self):
        clip_weights = -1.0 if self.clip_weights is None else float(self.clip_weights)
        if self.centered:
            return [self.rho, self.momentum, self.epsilon, self.rescale_grad, self._native_clip(), clip_weights]
        return [self.rho, self.epsilon, self.rescale_grad, self._native_clip(), clip_weights]

    def _native_kernel(self):
        # plain and centered RMSProp keep different states: two kernels, picked by the current `centered`
        return native.rule_id("rmsprop_centered") if self.centered else self._native_id

    def _hyper(self):
        hyper = {
            "rho": self.rho,
            "epsilon": self.epsilon,
            "rescale_grad": self.rescale_grad,
            "clip_gradient": self.clip_gradient,
            "clip_weights": self.clip_weights,
        }
        if self.centered:
            hyper["momentum"] = self.momentum
        return hyper

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        kernel = rmsprop_centered_reference if self.centered else rmsprop_reference
        kernel(weight, grad, state, lr=lr, wd=wd, **self._hyper())

    _step_scalars = ("lrs",)

    def _foreach_parts(self, weights, grads, states, lrs, wds, ts):
        kernel = rmsprop_centered_foreach if self.centered else rmsprop_foreach
        return kernel, (weights, grads, states), dict(lrs=lrs, wds=wds, **self._hyper())


# -------------------------------------------------------------------------------------------- AdaDelta
def adadelta_reference(
    weight, grad, state: AdaDeltaState, *, lr, wd, rho, epsilon, rescale_grad, clip_gradient
):
    """One tensor: ``g = clip(rg*grad) + wd*w; acc_g = rho*acc_g + (1-rho)*g^2;
    delta = sqrt(acc_delta + eps)/sqrt(acc_g + eps)*g; acc_delta = rho*acc_delta + (1-rho)*delta^2;
    w -= lr*delta``.

    ``1 - rho`` is rounded from float64, as MXNet's Python-side scalar is."""
    g = _decayed_grad(weight, grad, wd, rescale_grad, clip_gradient, state.acc_g.dtype)
    c = f32(1.0 - rho)
    state.acc_g.mul_(f32(rho)).add_((g * g).mul_(c))
    delta = state.acc_delta.add(f32(epsilon)).sqrt_()
    delta.div_(state.acc_g.add(f32(epsilon)).sqrt_()).mul_(g)
    state.acc_delta.mul_(f32(rho)).add_((delta * delta).mul_(c))
    weight.sub_(delta.mul_(f32(lr)))


def adadelta_foreach(weights, grads, states, *, lrs, wds, rho, epsilon, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`adadelta_reference`."""
    acc_gs = [s.acc_g for s in states]
    acc_deltas = [s.acc_delta for s in states]
    gs = _decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient, acc_gs)
    c = f32(1.0 - rho)
    squares = torch._foreach_mul(gs, gs)
    torch._foreach_mul_(squares, c)
    torch._foreach_mul_(acc_gs, f32(rho))
    torch._foreach_add_(acc_gs, squares)
    deltas = torch._foreach_add(acc_deltas, f32(epsilon))
    torch._foreach_sqrt_(deltas)
    denoms = torch._foreach_add(acc_gs, f32(epsilon))
    torch._foreach_sqrt_(denoms)
    torch._foreach_div_(deltas, denoms)
    torch._foreach_mul_(deltas, gs)
    squares = torch._foreach_mul(deltas, deltas)
    torch._foreach_mul_(squares, c)
    torch._foreach_mul_(acc_deltas, f32(rho))
    torch._foreach_add_(acc_deltas, squares)
    torch._foreach_mul_(deltas, f32s(lrs))
    torch._foreach_sub_(weights, deltas)


@register
class AdaDelta(_Float32StateOptimizer):
    r"""AdaDelta (MXNet 2.0 ``adadelta``), with a learning rate (default 1.0).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        a_t &= \rho\, a_{t-1} + (1-\rho)\, g_t^2 \\
        \delta_t &= \sqrt{d_{t-1} + \epsilon}\,/\,\sqrt{a_t + \epsilon}\; g_t \\
        d_t &= \rho\, d_{t-1} + (1-\rho)\, \delta_t^2 \\
        w_t &= w_{t-1} - \eta\, \delta_t

    State :class:`AdaDeltaState` ``(acc_g, acc_delta)``, float32 (float64 for float64 weights).

    Compatibility: identical in form to ``torch.optim.Adadelta(lr, rho, eps, weight_decay)``. MXNet 1.x
    ignored the learning rate, applied ``wd*w`` outside the update (unscaled) and used epsilon 1e-5.

    Args:
        learning_rate: multiplies the AdaDelta step (default 1.0, the paper's rule).
        rho: decay of both moving averages, in [0, 1) (default 0.9).
        epsilon: stabiliser inside both square roots, > 0 (default 1e-6).

    Example:
        >>> opt = AdaDelta(rho=0.95, epsilon=1e-6)

    References:
        Zeiler: ADADELTA: An Adaptive Learning Rate Method, arXiv:1212.5701.
    """

    default_learning_rate = 1.0
    native_rule = "adadelta"

    def __init__(self, learning_rate=None, rho=0.9, epsilon=1e-6, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = check_real("rho", rho, 0.0, 1.0, high_open=True)
        # epsilon 0 would freeze the weights (acc_delta stays 0) or give 0/0
        self.epsilon = check_real("epsilon", epsilon, 0.0, low_open=True)

    def create_state(self, index, weight):
        return AdaDeltaState(self._zeros(weight), self._zeros(weight))

    def _native_hyper(self):
        return [self.rho, self.epsilon, self.rescale_grad, self._native_clip()]

    def _hyper(self):
        return {
            "rho": self.rho,
            "epsilon": self.epsilon,
            "rescale_grad": self.rescale_grad,
            "clip_gradient": self.clip_gradient,
        }

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        adadelta_reference(weight, grad, state, lr=lr, wd=wd, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        adadelta_foreach(weights, grads, states, lrs=lrs, wds=wds, **self._hyper())
