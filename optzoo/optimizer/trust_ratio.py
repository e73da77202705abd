"""The trust-ratio family: LARS, LAMB and LANS, MXNet 2.0 numerics.

Each rule scales a tensor's step by a *trust ratio* built from that tensor's own norms, so nothing here may
flatten parameters together: the fast path reduces every tensor separately with ``torch._foreach_norm``
(at most two rounds of reductions per step) and keeps the ratios on the device as 0-dim tensors, so
no host synchronisation happens inside a step.

The ratios follow MXNet's fused kernels (``multi_lars``, ``multi_lamb_update``, ``multi_lans_update``):
norms are float32, a ratio whose numerator or denominator norm is zero is 1, and the optional
``lower_bound``/``upper_bound`` clamp the weight norm of LAMB and LANS.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .. import native
from .adam import adam_moments_, adam_moments_foreach
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
    sparse_rows,
    state_class,
)
from .input_checks import native_positions
from .sgd import momentum_step_foreach
from .validation import check_bool, check_real

__all__ = ["LAMB", "LANS", "LARS", "LAMBState", "LANSState", "bias_corrections", "lamb_foreach",
           "lamb_reference", "lans_foreach", "lans_reference", "lars_foreach", "lars_ratio", "lars_reference",
           "trust_ratio", "uses_lars"]

#: LARS keeps the plain learning rate for parameters whose name ends with one of these (MXNet's literal rule).
NO_LARS_SUFFIXES = ("gamma", "beta", "bias")


# ------------------------------------------------------------------------------------------ shared helpers
def _norm_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of one tensor as a 0-dim tensor, float32 (float64 for float64 tensors): MXNet's
    ``multi_sum_sq`` accumulates in float32 whatever the weight's dtype."""
    return torch.linalg.vector_norm(x, dtype=_norm_dtype(x))


def _norms(tensors) -> list[torch.Tensor]:
    """Per-tensor L2 norms as :func:`_norm` computes them, one reduction round for the whole list."""
    tensors = list(tensors)
    if any(t.dtype == torch.float64 for t in tensors):
        return [_norm(t) for t in tensors]
    return list(torch._foreach_norm(tensors, 2, dtype=torch.float32)) if tensors else []


def _norm_sums(tensors) -> torch.Tensor:
    """The norm pass of a sharded step: every tensor's sum of squares as one float64 vector (a local shard
    gives its partial sum; :mod:`optzoo.sharding` adds the shards' partial sums up). Each is accumulated as
    :func:`_norms` does (float32, no float64 copy of the tensors) and squared in float64."""
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack(_norms(tensors)).to(torch.float64).square_()


def _tensor_norms(families, owners, reduce_sums=None) -> torch.Tensor:
    """Per-tensor L2 norms of ``families`` (lists of tensors shaped like ``owners``, the weights), stacked in
    family order into one vector.

    Without ``reduce_sums`` this is :func:`_norms`. With it (a sharded step) the norm pass takes the
    float64 sums of squares of the local shards (:func:`_norm_sums`), ``reduce_sums(sums, owners)`` adds them
    up over the shards of each owner (shape ``(len(families), len(owners))``, one collective for all) and the
    update pass takes the square roots: the whole tensors' norms, as the unsharded rule."""
    tensors = [t for family in families for t in family]
    if reduce_sums is None:
        return torch.stack(_norms(tensors))
    sums = reduce_sums(_norm_sums(tensors).view(len(families), len(owners)), owners)
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return sums.reshape(-1).sqrt().to(dtype=dtype, device=owners[0].device)


def trust_ratio(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``r1 / r2``, or 1 where either norm is 0 (MXNet's kernels; the readable paths reach 1 through NaN)."""
    return torch.where((r1 == 0) | (r2 == 0), torch.ones_like(r1), r1 / r2)


def _bounded(r1: torch.Tensor, lower_bound: float | None, upper_bound: float | None) -> torch.Tensor:
    """The weight norm clamped to ``[lower_bound, upper_bound]`` (``None``: that side is open)."""
    if lower_bound is None and upper_bound is None:
        return r1
    return r1.clamp(min=None if lower_bound is None else f32(lower_bound),
                    max=None if upper_bound is None else f32(upper_bound))


def bias_corrections(beta1: float, beta2: float, t: int) -> tuple[float, float]:
    """``(1 - beta1^t, 1 - beta2^t)`` in float32, as the fused LAMB/LANS kernels evaluate them (``powf``)."""
    one = np.float32(1.0)
    c1 = one - np.power(np.float32(beta1), np.float32(t))
    c2 = one - np.power(np.float32(beta2), np.float32(t))
    return float(c1), float(c2)


def _corrections_aux(beta1: float, beta2: float, ts) -> list[float]:
    """``[c1, c2]`` of :func:`bias_corrections` for every update count in ``ts``, flat (the native rules' aux:
    numpy's float32 power is not the C library's ``powf``, so Python computes them)."""
    cache: dict[int, tuple[float, float]] = {}
    aux: list[float] = []
    for t in ts:
        pair = cache.get(t)
        if pair is None:
            pair = cache[t] = bias_corrections(beta1, beta2, t)
        aux += pair
    return aux


def _scalars(values, like: torch.Tensor) -> torch.Tensor:
    """Per-tensor Python scalars as one float32 vector on ``like``'s device."""
    return torch.tensor(list(values), dtype=torch.float64, device=like.device).to(torch.float32)  # as f32 rounds


# ------------------------------------------------------------------------------------------ LARS
def uses_lars(name: str) -> bool:
    """Whether a parameter called ``name`` gets the LARS trust ratio: MXNet's ``name.endswith(('gamma',
    'beta', 'bias'))`` exclusion, literal (``'fc_bias'``, ``'0.bias'``, ``'bn_gamma'`` and ``'alphabeta'``
    are all excluded; ``'bias_weight'`` is not)."""
    return not name.endswith(NO_LARS_SUFFIXES)


def lars_ratio(weight_norm, grad_norm, *, wd, eta: float, epsilon: float, rescale_grad: float):
    """``eta*||w|| / (|rescale_grad|*||grad|| + wd*||w|| + epsilon)``, or 1 where either norm is 0.

    ``grad_norm`` is the norm of the RAW gradient (before clipping and weight decay). Tensors in, float32
    tensors out (``wd`` may be a float or a float32 tensor of per-tensor decays)."""
    g_norm = grad_norm * abs(f32(rescale_grad))
    ratio = f32(eta) * weight_norm / (g_norm + wd * weight_norm + f32(epsilon))
    return torch.where((weight_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))


def _sgd_step(weight, grad, mom, lr_t, *, wd, momentum, rescale_grad, clip_gradient):
    """MXNet 2.0's SGD kernel with a (tensor) learning rate: ``g = clip(rg*grad) + wd*w``, then
    ``mom = momentum*mom - lr_t*g; w += mom`` (or ``w -= lr_t*g`` without momentum)."""
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    if wd:
        g.add_(f32(wd) * weight)
    g.mul_(lr_t)
    if mom is None:
        weight.sub_(g)
    else:
        mom.mul_(f32(momentum)).sub_(g)
        weight.add_(mom)


def lars_reference(weight, grad, mom, *, lr, wd, momentum, eta, epsilon, rescale_grad, clip_gradient,
                   trust: bool = True):
    """One tensor: ``lr_t = lr * lars_ratio(||w||, ||grad||)`` (``lr`` when ``trust`` is False), then the
    SGD step with ``lr_t``."""
    lr_t = torch.tensor(f32(lr), dtype=torch.float32, device=weight.device)
    if trust:
        lr_t = lr_t * lars_ratio(_norm(weight), _norm(grad), wd=f32(wd), eta=eta, epsilon=epsilon,
                                 rescale_grad=rescale_grad)
    _sgd_step(weight, grad, mom, lr_t, wd=wd, momentum=momentum, rescale_grad=rescale_grad,
              clip_gradient=clip_gradient)


def lars_foreach(weights, grads, moms, *, lrs, wds, trusts, momentum, eta, epsilon, rescale_grad,
                 clip_gradient, reduce_sums=None):
    """All tensors at once; the same arithmetic as :func:`lars_reference` (one round of norms;
    ``reduce_sums``: see :func:`_tensor_norms`)."""
    lr_ts = _scalars(lrs, weights[0])
    chosen = [i for i, trust in enumerate(trusts) if trust]
    if chosen:
        owners = [weights[i] for i in chosen]
        norms = _tensor_norms([owners, [grads[i] for i in chosen]], owners, reduce_sums)
        k = len(chosen)
        chosen_wds = _scalars([wds[i] for i in chosen], weights[0])
        ratios = lars_ratio(norms[:k], norms[k:], wd=chosen_wds, eta=eta,
                            epsilon=epsilon, rescale_grad=rescale_grad)
        index = torch.tensor(chosen, device=lr_ts.device)
        lr_ts = lr_ts.to(ratios.dtype)  # float64 norms for float64 weights, as lars_reference
        lr_ts = lr_ts.index_copy(0, index, lr_ts.index_select(0, index) * ratios)
    gs = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    torch._foreach_mul_(gs, list(lr_ts.unbind(0)))
    momentum_step_foreach(weights, gs, moms, momentum)


class _NativeNormPasses:
    """The native path of the trust-ratio rules as separate calls: the norm stage(s), then the update pass.

    Each norm stage is one parallel pass over all tensors returning per-tensor float64 sums of squares
    (:meth:`_native_norm_sums`); the update pass takes the sums of every stage (``aux = (aux, *stage_sums)``). A
    sharded step adds the sums of all ranks between the calls."""

    #: norm stages before the update (LANS: the gradient norm, then the moments' norms)
    _native_norm_stages = 1

    def _native_norm_sums(self, weights, grads, states, lrs, wds, ts, multi_precision, aux, prior=None):
        """One native norm stage over the lists: a float64 ``[len(weights), k]`` tensor of per-tensor sums of
        squares (this process's share of each norm), or ``None`` when the kernels cannot take the step (nothing
        written). The first stage takes ``prior=None``; LANS's second stage takes the first stage's sums (reduced
        across ranks when sharded). The stage that needs the new moments (LAMB's, LANS's last) advances them in
        place, so the update must follow it. Columns: LARS ``[|w|^2, |grad|^2]``, LAMB ``[|w|^2, |u|^2]``, LANS
        ``[|rescale_grad*grad|^2]`` then ``[|w|^2, |u_m|^2, |u_g|^2]``."""
        return native.load().norm_sums(self._native_kernel(), weights, grads, states, lrs, wds, ts,
                                       self._native_hyper(), multi_precision, aux, prior)

    def _native_call(self, indices, weights, grads, states, lrs, wds, ts, multi_precision: bool) -> bool:
        """Norm stage(s), then the update pass, in one native call (small tensors take all their passes at once,
        while they are in cache). In a sharded step (``norm_sum_reducer`` set) the stages are separate calls and
        each stage's sums are added up over the shards (one collective per stage for all tensors) before the next
        call; both ways give the same results bit for bit."""
        aux, commit = self._native_aux(indices, lrs, ts)
        reduce_sums = self.norm_sum_reducer
        lib, kernel, hyper = native.load(), self._native_kernel(), self._native_hyper()
        with native_positions(indices):  # the core names bad tensors by position: name the parameters
            if reduce_sums is None:
                if not lib.step(kernel, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux):
                    return False  # nothing written: the foreach path takes the step
            else:
                stages = []
                for _ in range(self._native_norm_stages):
                    prior = stages[0] if stages else None
                    sums = self._native_norm_sums(weights, grads, states, lrs, wds, ts, multi_precision, aux,
                                                  prior)
                    if sums is None:
                        if not stages:
                            return False  # nothing written: the foreach path takes the step
                        raise RuntimeError("optzoo: a native norm stage refused a step the previous stage took")
                    # the reducer takes (families, owners)-shaped sums
                    stages.append(reduce_sums(sums.t().contiguous(), weights).t().contiguous())
                if not lib.step(kernel, weights, grads, states, lrs, wds, ts, hyper, multi_precision,
                                (aux, *stages)):
                    raise RuntimeError("optzoo: the native update refused a step its norm pass took")
        if commit is not None:
            commit()
        return True


@register
class LARS(_NativeNormPasses, Optimizer):
    r"""Layer-wise adaptive rate scaling (MXNet 2.0 ``lars``): SGD whose learning rate is scaled per tensor.

    .. math::
        \lambda &= \frac{\eta\,\lVert w\rVert}{\lvert\mathrm{rescale\_grad}\rvert\,\lVert\nabla\rVert
                   + \mathrm{wd}\,\lVert w\rVert + \epsilon}
                   \quad(\lambda = 1 \text{ if } \lVert w\rVert = 0,\ \lVert\nabla\rVert = 0,
                   \text{ or the name ends in gamma/beta/bias}) \\
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient})
               + \mathrm{wd}\cdot w_{t-1} \\
        m_t &= \mu\, m_{t-1} - \mathrm{lr}\,\lambda\, g_t, \qquad w_t = w_{t-1} + m_t
        \qquad(\mu = 0:\ w_t = w_{t-1} - \mathrm{lr}\,\lambda\, g_t)

    The trust ratio uses the norm of the *raw* gradient times ``rescale_grad`` (clipping and weight decay
    do not enter it); the name rule reads ``param_idx2name`` (``str(index)`` for unnamed parameters, so a
    Gluon Trainer, which passes no names, scales every parameter). With ``multi_precision`` the weight norm
    is the float32 master copy's. With a row-sparse gradient and ``lazy_update`` the ratio still uses the
    whole weight's norm (the layer's norm is what LARS trusts) and only the rows present are updated.

    Compatibility: ``lr * lambda`` lives inside the momentum buffer, as in the paper and MXNet's SGD;
    wrappers around ``torch.optim.SGD`` (NVIDIA's LARC, torchlars) scale the gradient by the ratio and
    apply ``lr`` after the buffer, so a changing learning rate rescales the accumulated momentum there
    and not here. ``epsilon`` joins the paper's denominator ``||g|| + wd*||w||``.

    Args:
        learning_rate: base step size (default 0.1).
        momentum: momentum ``mu`` in [0, 1) (default 0: no state).
        eta: the LARS coefficient, > 0 (default 0.001).
        epsilon: added to the ratio's denominator, >= 0 (default 1e-8).
        lazy_update: with a row-sparse gradient, update only the rows present (their momentum and weight
            decay too); otherwise the gradient is densified.

    Example:
        >>> opt = LARS(learning_rate=0.1, momentum=0.9, eta=0.001, wd=1e-4)

    References:
        You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888.
    """

    sparse_support = "lazy"
    default_learning_rate = 0.1
    uses_tensor_norms = True
    native_rule = "lars"

    def __init__(self, learning_rate=None, momentum=0.0, eta=0.001, epsilon=1e-8, lazy_update=False,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.eta = check_real("eta", eta, 0.0, low_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.lazy_update = check_bool("lazy_update", lazy_update)
        self._plain_lr_ids: frozenset[int] = frozenset()

    def create_state(self, index, weight):
        return self._zeros(weight) if self.momentum != 0.0 else None

    def uses_trust_ratio(self, index) -> bool:
        """Whether parameter ``index`` gets the LARS ratio (judged by its ``param_idx2name`` name, else by
        ``str(index)``)."""
        return uses_lars(str(self.idx2name.get(index, index)))

    def _hyper(self):
        return {"momentum": self.momentum, "eta": self.eta, "epsilon": self.epsilon,
                "rescale_grad": self.rescale_grad, "clip_gradient": self.clip_gradient}

    def _native_hyper(self):
        return [self.momentum, self.eta, self.epsilon, self.rescale_grad, self._native_clip()]

    def _all_trusted(self, indices) -> bool:
        """Whether every index gets the ratio without asking its name: unnamed integer indices all get it
        (``str(index)`` never ends in gamma/beta/bias)."""
        return not self.idx2name and all(type(i) is int for i in indices)

    def _native_aux(self, indices, lrs, ts):
        """Per tensor: 1 where it gets the ratio, 0 where it keeps the plain learning rate."""
        if self._all_trusted(indices):
            return [1.0] * len(indices), None
        return [1.0 if self.uses_trust_ratio(i) else 0.0 for i in indices], None

    def _apply(self, indices, weights, grads, states, lrs, wds, ts, fast):
        # The rules see tensors, not indices: remember which weights keep the plain learning rate.
        plain = () if self._all_trusted(indices) else (
            w for i, w in zip(indices, weights) if not self.uses_trust_ratio(i))
        self._plain_lr_ids = frozenset(map(id, plain))
        try:
            super()._apply(indices, weights, grads, states, lrs, wds, ts, fast)
        finally:
            self._plain_lr_ids = frozenset()

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        lars_reference(weight, grad, state, lr=lr, wd=wd, trust=id(weight) not in self._plain_lr_ids,
                       **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        moms = None if self.momentum == 0.0 else states
        trusts = [id(w) not in self._plain_lr_ids for w in weights]
        lars_foreach(weights, grads, moms, lrs=lrs, wds=wds, trusts=trusts, reduce_sums=self.norm_sum_reducer,
                     **self._hyper())

    def _lazy_update(self, index, weight, grad, state, lr, wd, t):
        """Row-sparse lazy update: the ratio from the whole weight's norm and the gradient's norm, the SGD
        step on the rows present only."""
        rows, values = sparse_rows(grad)
        if rows.numel() == 0:
            return
        lr_t = torch.tensor(f32(lr), dtype=torch.float32, device=weight.device)
        if self.uses_trust_ratio(index):
            lr_t = lr_t * lars_ratio(_norm(weight), _norm(values), wd=f32(wd), eta=self.eta,
                                     epsilon=self.epsilon, rescale_grad=self.rescale_grad)
        sub_weight = weight.index_select(0, rows)
        sub_mom = None if state is None else state.index_select(0, rows)
        _sgd_step(sub_weight, values, sub_mom, lr_t, wd=wd, momentum=self.momentum,
                  rescale_grad=self.rescale_grad, clip_gradient=self.clip_gradient)
        weight.index_copy_(0, rows, sub_weight)
        if state is not None:
            state.index_copy_(0, rows, sub_mom)


# ------------------------------------------------------------------------------------------ LAMB
@state_class
class LAMBState(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor


def _lamb_direction(weight, g, mean, var, *, wd, beta1, beta2, epsilon, corrections):
    """Moments update and the LAMB direction ``u = m_hat/(sqrt(v_hat) + eps) + wd*w`` (a new tensor)."""
    adam_moments_(mean, var, g, beta1, beta2)
    if corrections is None:
        u = mean / var.sqrt().add_(f32(epsilon))
    else:
        c1, c2 = corrections
        u = (mean / c1).div_((var / c2).sqrt_().add_(f32(epsilon)))
    if wd:
        u.add_(f32(wd) * weight)
    return u


def lamb_reference(weight, grad, state: LAMBState, *, lr, wd, beta1, beta2, epsilon, corrections, lower_bound,
                   upper_bound, rescale_grad, clip_gradient):
    """One tensor (``corrections``: ``(1-beta1^t, 1-beta2^t)`` or ``None`` without bias correction):

    ``g = clip(rg*grad); m, v += ...; u = m_hat/(sqrt(v_hat)+eps) + wd*w;``
    ``r1 = clamp(||w||, lower_bound, upper_bound); w -= lr * trust_ratio(r1, ||u||) * u``
    """
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    u = _lamb_direction(weight, g, state.mean, state.var, wd=wd, beta1=beta1, beta2=beta2, epsilon=epsilon,
                        corrections=corrections)
    r1 = _bounded(_norm(weight), lower_bound, upper_bound)
    u.mul_(f32(lr) * trust_ratio(r1, _norm(u)))
    weight.sub_(u)


def lamb_foreach(weights, grads, states, *, lrs, wds, beta1, beta2, epsilon, corrections, lower_bound,
                 upper_bound, rescale_grad, clip_gradient, reduce_sums=None):
    """All tensors at once; the same arithmetic as :func:`lamb_reference` (one round of norms: ``||w||`` and
    ``||u||`` together; ``reduce_sums``: see :func:`_tensor_norms`). ``corrections`` is a list of
    ``(c1, c2)`` per tensor, or ``None``."""
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    means, variances = adam_moments_foreach(states, gs, beta1, beta2)
    if corrections is None:
        denoms = torch._foreach_sqrt(variances)
        us = list(means)
    else:
        denoms = torch._foreach_div(variances, f32s([c2 for _, c2 in corrections]))
        torch._foreach_sqrt_(denoms)
        us = torch._foreach_div(means, f32s([c1 for c1, _ in corrections]))
    torch._foreach_add_(denoms, f32(epsilon))
    us = torch._foreach_div(us, denoms)
    if any(wds):
        torch._foreach_add_(us, torch._foreach_mul(weights, f32s(wds)))
    n = len(weights)
    norms = _tensor_norms([weights, us], weights, reduce_sums)
    r1 = _bounded(norms[:n], lower_bound, upper_bound)
    steps = _scalars(lrs, weights[0]) * trust_ratio(r1, norms[n:])
    torch._foreach_mul_(us, list(steps.unbind(0)))
    torch._foreach_sub_(weights, us)


def _check_bounds(lower_bound, upper_bound):
    lower_bound = check_real("lower_bound", lower_bound, 0.0, allow_none=True)
    # upper_bound=0 is ambiguous in MXNet (the fused path ignores it, step() clamps ||w|| to 0): refuse it.
    upper_bound = check_real("upper_bound", upper_bound, 0.0, low_open=True, allow_none=True)
    if lower_bound is not None and upper_bound is not None and lower_bound > upper_bound:
        raise ValueError(f"lower_bound ({lower_bound!r}) must not exceed upper_bound ({upper_bound!r})")
    return lower_bound, upper_bound


class _TrustRatioAdam(_NativeNormPasses, Optimizer):
    """Shared constructor of LAMB and LANS: Adam moments (always float32) and a bounded weight norm."""

    state_dtype = torch.float32
    default_learning_rate = 0.001

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, epsilon=1e-6, lower_bound=None,
                 upper_bound=None, aggregate_num=4, **kwargs):
        super().__init__(learning_rate=learning_rate, aggregate_num=aggregate_num, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.lower_bound, self.upper_bound = _check_bounds(lower_bound, upper_bound)

    def _hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "epsilon": self.epsilon,
                "lower_bound": self.lower_bound, "upper_bound": self.upper_bound,
                "rescale_grad": self.rescale_grad, "clip_gradient": self.clip_gradient}


@register
class LAMB(_TrustRatioAdam):
    r"""Layer-wise adaptive moments for batch training (MXNet 2.0 ``lamb``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= m_t/(1-\beta_1^t), \qquad \hat v_t = v_t/(1-\beta_2^t)
            \qquad(\text{bias\_correction=False: } \hat m_t = m_t,\ \hat v_t = v_t) \\
        u_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon) + \mathrm{wd}\cdot w_{t-1} \\
        r_1 &= \min(\max(\lVert w_{t-1}\rVert, \mathrm{lower\_bound}), \mathrm{upper\_bound}), \qquad
        r_2 = \lVert u_t\rVert \\
        w_t &= w_{t-1} - \mathrm{lr}\cdot\frac{r_1}{r_2}\, u_t \qquad(\text{ratio } 1 \text{ if } r_1 = 0
            \text{ or } r_2 = 0)

    Weight decay is decoupled from the moments and enters the direction ``u`` (and so the ratio's
    denominator). The states are float32 whatever the weight's dtype; with ``multi_precision`` the weight
    norm is the float32 master copy's. ``t`` advances once per update of a parameter, whatever
    ``aggregate_num`` is (MXNet's ``aggregate_num=1`` path counts it twice).

    Compatibility: epsilon is added to the bias-corrected ``sqrt(v_hat)`` (as in the paper and
    ``torch.optim.Adam``, unlike MXNet's Adam). A bound is applied whenever it is not ``None``;
    ``upper_bound=0`` is refused (MXNet's two paths disagree on it), ``lower_bound=0`` is a no-op.

    Args:
        learning_rate: step size (default 0.001).
        beta1, beta2: moment decay rates in [0, 1) (defaults 0.9, 0.999).
        epsilon: added to ``sqrt(v_hat)``, >= 0 (default 1e-6).
        lower_bound: lower clamp of the weight norm ``r1``, >= 0, or ``None`` (default).
        upper_bound: upper clamp of ``r1``, > 0, or ``None`` (default).
        bias_correction: divide the moments by ``1 - beta^t`` (default True).
        aggregate_num: accepted for MXNet compatibility (default 4); every tensor is updated at once.

    Example:
        >>> opt = LAMB(learning_rate=0.001, beta1=0.9, beta2=0.999, wd=0.01)

    References:
        You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
        arXiv:1904.00962.
    """

    uses_tensor_norms = True
    native_rule = "lamb"

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, epsilon=1e-6, lower_bound=None,
                 upper_bound=None, bias_correction=True, aggregate_num=4, **kwargs):
        super().__init__(learning_rate=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon,
                         lower_bound=lower_bound, upper_bound=upper_bound, aggregate_num=aggregate_num,
                         **kwargs)
        self.bias_correction = check_bool("bias_correction", bias_correction)

    def create_state(self, index, weight):
        return LAMBState(self._zeros(weight), self._zeros(weight))

    def _corrections(self, t):
        return bias_corrections(self.beta1, self.beta2, t) if self.bias_correction else None

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.epsilon, self.rescale_grad, self._native_clip(),
                -1.0 if self.lower_bound is None else self.lower_bound,
                -1.0 if self.upper_bound is None else self.upper_bound, 1.0 if self.bias_correction else 0.0]

    def _native_aux(self, indices, lrs, ts):
        """The bias corrections ``[c1, c2]`` per tensor (ones, unused, without bias correction)."""
        if not self.bias_correction:
            return [1.0] * (2 * len(indices)), None
        return _corrections_aux(self.beta1, self.beta2, ts), None

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        lamb_reference(weight, grad, state, lr=lr, wd=wd, corrections=self._corrections(t), **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        corrections = per_tensor(self._corrections, ts) if self.bias_correction else None
        lamb_foreach(weights, grads, states, lrs=lrs, wds=wds, corrections=corrections,
                     reduce_sums=self.norm_sum_reducer, **self._hyper())


# ------------------------------------------------------------------------------------------ LANS
@state_class
class LANSState(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor


def _normalise_(g: torch.Tensor, g_norm: torch.Tensor) -> torch.Tensor:
    """``g / ||g||`` in place; an all-zero gradient stays zero (MXNet divides 0 by 0 and gets NaN)."""
    return g.div_(torch.where(g_norm == 0, torch.ones_like(g_norm), g_norm))


def lans_reference(weight, grad, state: LANSState, *, lr, wd, beta1, beta2, epsilon, corrections, lower_bound,
                   upper_bound, rescale_grad, clip_gradient):
    """One tensor, MXNet's fused ``multi_lans_update`` (both halves from the ORIGINAL weight):

    ``g = clip(rg*grad / ||rg*grad||); m, v += ...; d = sqrt(v_hat) + eps; u_m = m_hat/d + wd*w;``
    ``u_g = g/d + wd*w; w -= lr*beta1*tr(r1, ||u_m||)*u_m + lr*(1-beta1)*tr(r1, ||u_g||)*u_g``
    """
    g = grad * f32(rescale_grad)
    _normalise_(g, _norm(g))
    if clip_gradient is not None:
        g.clamp_(-f32(clip_gradient), f32(clip_gradient))
    adam_moments_(state.mean, state.var, g, beta1, beta2)
    c1, c2 = corrections
    denom = (state.var / c2).sqrt_().add_(f32(epsilon))
    u_m = (state.mean / c1).div_(denom)
    u_g = g.div_(denom)
    if wd:
        decay = f32(wd) * weight
        u_m.add_(decay)
        u_g.add_(decay)
    r1 = _bounded(_norm(weight), lower_bound, upper_bound)
    lr32 = f32(lr)
    u_m.mul_(lr32 * (trust_ratio(r1, _norm(u_m)) * f32(beta1)))
    u_g.mul_(lr32 * (trust_ratio(r1, _norm(u_g)) * one_minus(beta1)))
    weight.sub_(u_m.add_(u_g))


def lans_foreach(weights, grads, states, *, lrs, wds, beta1, beta2, epsilon, corrections, lower_bound,
                 upper_bound, rescale_grad, clip_gradient, reduce_sums=None):
    """All tensors at once; the same arithmetic as :func:`lans_reference` (two rounds of norms:
    ``||rg*grad||``, then ``||w||``, ``||u_m||`` and ``||u_g||`` together; ``reduce_sums``: see
    :func:`_tensor_norms`)."""
    gs = list(torch._foreach_mul(list(grads), f32(rescale_grad)))
    for g, g_norm in zip(gs, _tensor_norms([gs], weights, reduce_sums).unbind(0)):
        _normalise_(g, g_norm)
    if clip_gradient is not None:
        torch._foreach_clamp_min_(gs, -f32(clip_gradient))
        torch._foreach_clamp_max_(gs, f32(clip_gradient))
    means, variances = adam_moments_foreach(states, gs, beta1, beta2)
    denoms = torch._foreach_div(variances, f32s([c2 for _, c2 in corrections]))
    torch._foreach_sqrt_(denoms)
    torch._foreach_add_(denoms, f32(epsilon))
    ums = torch._foreach_div(means, f32s([c1 for c1, _ in corrections]))
    torch._foreach_div_(ums, denoms)
    ugs = torch._foreach_div(gs, denoms)
    if any(wds):
        decays = torch._foreach_mul(weights, f32s(wds))
        torch._foreach_add_(ums, decays)
        torch._foreach_add_(ugs, decays)
    n = len(weights)
    norms = _tensor_norms([weights, ums, ugs], weights, reduce_sums)
    r1 = _bounded(norms[:n], lower_bound, upper_bound)
    lr32 = _scalars(lrs, weights[0])
    step_m = lr32 * (trust_ratio(r1, norms[n:2 * n]) * f32(beta1))
    step_g = lr32 * (trust_ratio(r1, norms[2 * n:]) * one_minus(beta1))
    torch._foreach_mul_(ums, list(step_m.unbind(0)))
    torch._foreach_mul_(ugs, list(step_g.unbind(0)))
    torch._foreach_add_(ums, ugs)
    torch._foreach_sub_(weights, ums)


@register
class LANS(_TrustRatioAdam):
    r"""LAMB with Nesterov momentum and a normalised gradient (MXNet 2.0 ``lans``).

    .. math::
        g_t &= \mathrm{clip}\big(\mathrm{rescale\_grad}\cdot\nabla \,/\,
               \lVert\mathrm{rescale\_grad}\cdot\nabla\rVert,\ \mathrm{clip\_gradient}\big)
               \qquad(g_t = 0 \text{ if } \nabla = 0) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        d_t &= \sqrt{v_t/(1-\beta_2^t)} + \epsilon \\
        u^m_t &= \frac{m_t/(1-\beta_1^t)}{d_t} + \mathrm{wd}\cdot w_{t-1}, \qquad
        u^g_t = \frac{g_t}{d_t} + \mathrm{wd}\cdot w_{t-1} \\
        r_1 &= \min(\max(\lVert w_{t-1}\rVert, \mathrm{lower\_bound}), \mathrm{upper\_bound}) \\
        w_t &= w_{t-1} - \mathrm{lr}\Big(\beta_1 \frac{r_1}{\lVert u^m_t\rVert} u^m_t
               + (1-\beta_1) \frac{r_1}{\lVert u^g_t\rVert} u^g_t\Big)
               \qquad(\text{each ratio } 1 \text{ if a norm is } 0)

    This is MXNet's fused kernel: both halves use the original weight and are applied together (MXNet's
    readable ``step()`` applies the second half to the already-updated weight). The gradient is
    normalised *before* clipping. Bias correction is always on; states are float32; with
    ``multi_precision`` the weight norm is the float32 master copy's.

    Compatibility: the paper's Algorithm 2 with MXNet's epsilon placement (added to ``sqrt(v_hat)``)
    and weight decay inside both directions. Bounds as for :class:`LAMB`.

    Args:
        learning_rate: step size (default 0.001).
        beta1, beta2: moment decay rates in [0, 1) (defaults 0.9, 0.999).
        epsilon: added to ``sqrt(v_hat)``, >= 0 (default 1e-6).
        lower_bound, upper_bound: clamps of the weight norm, as for :class:`LAMB` (default ``None``).
        aggregate_num: accepted for MXNet compatibility (default 4); every tensor is updated at once.

    Example:
        >>> opt = LANS(learning_rate=0.001, wd=0.01)

    References:
        Zheng et al., "Accelerated Large Batch Optimization of BERT Pretraining in 54 minutes",
        arXiv:2006.13484.
    """

    uses_tensor_norms = True
    native_rule = "lans"
    _native_norm_stages = 2

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, epsilon=1e-6, lower_bound=None,
                 upper_bound=None, aggregate_num=4, **kwargs):
        super().__init__(learning_rate=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon,
                         lower_bound=lower_bound, upper_bound=upper_bound, aggregate_num=aggregate_num,
                         **kwargs)

    def create_state(self, index, weight):
        return LANSState(self._zeros(weight), self._zeros(weight))

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.epsilon, self.rescale_grad, self._native_clip(),
                -1.0 if self.lower_bound is None else self.lower_bound,
                -1.0 if self.upper_bound is None else self.upper_bound]

    def _native_aux(self, indices, lrs, ts):
        """The bias corrections ``[c1, c2]`` per tensor."""
        return _corrections_aux(self.beta1, self.beta2, ts), None

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        corrections = bias_corrections(self.beta1, self.beta2, t)
        lans_reference(weight, grad, state, lr=lr, wd=wd, corrections=corrections, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        corrections = per_tensor(lambda t: bias_corrections(self.beta1, self.beta2, t), ts)
        lans_foreach(weights, grads, states, lrs=lrs, wds=wds, corrections=corrections,
                     reduce_sums=self.norm_sum_reducer, **self._hyper())
