r"""Factored second moments: Adafactor (``torch.optim.Adafactor``) and CAME (``came-pytorch``).

Both keep, for a weight of shape ``[..., n, m]``, a row statistic ``[..., n]`` and a column statistic ``[..., m]``
instead of a full second moment (memory ``n + m`` instead of ``n*m``) and rebuild the per-element estimate as their
outer product divided by the row mean. 0-D and 1-D weights keep a full (unfactored) moment. The gradient goes
through MXNet's preprocessing first (``clip(rescale_grad * grad, clip_gradient)``); weight decay is decoupled and
scaled by the learning rate, as in both reference packages.

Every line of the readable rules mirrors one tensor operation of the reference package, in its order and with its
scalar arithmetic (Python floats), so float32 trajectories are bit-identical. The fast rules run the same
arithmetic one tensor at a time without copying the gradient (when there is nothing to rescale or clip): each
tensor's passes then run while it is in cache, which on CPU beats a multi-tensor path that streams every tensor
once per operation. The native kernels (``optzoo/native/src/rules_factored.cpp``, the default where built) run
the readable arithmetic in a few passes over all tensors, with float64 row, column and norm sums (docs/native.md,
"Factored rules"): they agree with the readable rules to float32 rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Optimizer, register, rescale_clip, rescale_clip_readonly_foreach, state_class
from .reference_names import accepts_reference_names, split_tuple
from .validation import check_real

__all__ = ["CAME", "Adafactor", "AdafactorFactoredState", "AdafactorState", "CAMEFactoredState", "CAMEState",
           "adafactor_reference", "came_reference"]


def _row_col_shapes(shape) -> tuple[tuple, tuple]:
    """Adafactor's factor shapes for ``[..., n, m]``: ``[..., n, 1]`` and ``[..., 1, m]`` (torch's layout)."""
    return (*shape[:-1], 1), (*shape[:-2], 1, shape[-1])


# ------------------------------------------------------------------------------------------ Adafactor
@state_class
class AdafactorFactoredState(NamedTuple):
    row_var: torch.Tensor  # [..., n, 1]: running mean of g^2 over the last dimension
    col_var: torch.Tensor  # [..., 1, m]: running mean of g^2 over the second-to-last dimension


@state_class
class AdafactorState(NamedTuple):
    variance: torch.Tensor  # 0-D and 1-D weights: the full running mean of g^2


def _adafactor_scalars(weight_norm: float, numel: int, lr: float, t: int, beta2_decay: float, epsilon2: float):
    """``(1 - beta2_t, alpha_t)``: ``1 - beta2_t = t^decay``, ``rho_t = min(lr, 1/sqrt(t))``,
    ``alpha_t = max(eps2, RMS(w)) * rho_t`` (Python floats, as torch computes them)."""
    rho = min(lr, 1 / (t**0.5))
    return t**beta2_decay, max(epsilon2, weight_norm / (numel**0.5)) * rho


def _adafactor_direction(g, state, one_minus_beta2: float, eps1: float) -> torch.Tensor:
    """Advances the second-moment estimate with ``g`` and returns ``g / max(sqrt(V_hat), eps1)`` (a new tensor)."""
    if isinstance(state, AdafactorFactoredState):
        row_mean = torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1))
        state.row_var.lerp_(row_mean, one_minus_beta2)
        col_mean = torch.norm(g, dim=-2, keepdim=True).square_().div_(g.size(-2))
        state.col_var.lerp_(col_mean, one_minus_beta2)
        var_estimate = state.row_var @ state.col_var
        var_estimate.div_(state.row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
    else:
        state.variance.lerp_(g * g, one_minus_beta2)
        var_estimate = state.variance.clone()
    return var_estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)


def adafactor_reference(weight, grad, state, *, lr, wd, t, beta2_decay, epsilon1, epsilon2, clip_threshold,
                        rescale_grad, clip_gradient) -> None:
    """One tensor, as ``torch.optim.Adafactor`` (single-tensor path) after MXNet's gradient preprocessing."""
    _adafactor_step(weight, rescale_clip(grad, rescale_grad, clip_gradient), state, lr=lr, wd=wd, t=t,
                    beta2_decay=beta2_decay, epsilon1=epsilon1, epsilon2=epsilon2, clip_threshold=clip_threshold)


def _adafactor_step(weight, g, state, *, lr, wd, t, beta2_decay, epsilon1, epsilon2, clip_threshold) -> None:
    if weight.numel() == 0:
        return  # nothing to update (its RMS and the update's would be 0/0)
    eps1 = torch.finfo(weight.dtype).eps if epsilon1 is None else epsilon1
    one_minus_beta2, alpha = _adafactor_scalars(weight.norm(2).item(), weight.numel(), lr, t, beta2_decay, epsilon2)
    if wd != 0:
        weight.mul_(1 - lr * wd)
    update = _adafactor_direction(g, state, one_minus_beta2, eps1)
    denom = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * clip_threshold))
    weight.add_(update, alpha=-alpha / denom)


@register
class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, 2018) exactly as ``torch.optim.Adafactor`` computes it.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        1-\hat\beta_{2,t} &= t^{\tau}, \quad \rho_t = \min(\eta, 1/\sqrt t), \quad
            \alpha_t = \max(\epsilon_2, \mathrm{RMS}(w_{t-1}))\,\rho_t \\
        w &\leftarrow w_{t-1}(1 - \eta\,\mathrm{wd}) \\
        R_t &= \mathrm{lerp}(R_{t-1}, \mathrm{mean}_{-1}(g_t^2), t^{\tau}), \quad
            C_t = \mathrm{lerp}(C_{t-1}, \mathrm{mean}_{-2}(g_t^2), t^{\tau}) \\
        \hat V_t &= R_t C_t / \max(\mathrm{mean}(R_t), \epsilon_1) \quad(\text{1-D: } \hat V_t =
            \mathrm{lerp}(\hat V_{t-1}, g_t^2, t^{\tau})) \\
        U_t &= g_t / \max(\sqrt{\hat V_t}, \epsilon_1), \quad
            w_t = w - \alpha_t\, U_t / \max(1, \mathrm{RMS}(U_t)/d)

    Weights with two or more dimensions are factored over their last two; ``t`` is the per-parameter update count.

    Args:
        learning_rate: the cap of the relative step size ``rho_t`` and the weight-decay scale (default 0.01;
            reference name ``lr``).
        beta2_decay: ``tau`` (<= 0, default -0.8).
        epsilon1: floor of ``sqrt(V_hat)``; ``None``: the machine epsilon of the weight's dtype (reference: ``eps[0]``).
        epsilon2: floor of ``RMS(w)`` in the step size (default 1e-3; reference: ``eps[1]``).
        clip_threshold: ``d`` >= 1, the update's RMS clip (reference name ``d``).
        wd: decoupled weight decay, ``w *= 1 - lr*wd`` (reference name ``weight_decay``).

    Example:
        >>> opt = Adafactor(learning_rate=0.01, wd=0.0)
    """

    template_fixes_state_shapes = True
    default_learning_rate = 0.01
    #: RMS(w), RMS(U) and (2-D weights) column means are whole-tensor sums: a sharded step reduces them
    uses_tensor_norms = True
    sparse_support = "dense"
    native_rule = "adafactor"  # optzoo/native/src/rules_factored.cpp

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "d": "clip_threshold",
                              "eps": split_tuple("epsilon1", "epsilon2")})
    def __init__(self, learning_rate=None, beta2_decay=-0.8, epsilon1=None, epsilon2=1e-3, clip_threshold=1.0,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta2_decay = check_real("beta2_decay", beta2_decay, high=0.0)
        self.epsilon1 = check_real("epsilon1", epsilon1, 0.0, allow_none=True)
        self.epsilon2 = check_real("epsilon2", epsilon2, 0.0)
        self.clip_threshold = check_real("clip_threshold", clip_threshold, 1.0)

    def create_state(self, index, weight):
        if weight.dim() > 1:
            row, col = _row_col_shapes(weight.shape)
            dtype = self.state_dtype or weight.dtype
            return AdafactorFactoredState(weight.new_zeros(row, dtype=dtype), weight.new_zeros(col, dtype=dtype))
        return AdafactorState(self._zeros(weight))

    def _state_shape_fits(self, weight, leaf) -> bool:
        shapes = {tuple(weight.shape), *(_row_col_shapes(weight.shape) if weight.dim() > 1 else ())}
        return tuple(leaf.shape) in shapes

    def replicated_state(self, state) -> tuple:
        """States every rank keeps whole when a 2-D weight is sharded by rows (``Shard(0)``): the column
        statistic (each rank's local rows only add to it)."""
        return (state.col_var,) if isinstance(state, AdafactorFactoredState) and state.col_var.dim() == 2 else ()

    def _hyper(self) -> dict:
        return dict(beta2_decay=self.beta2_decay, epsilon1=self.epsilon1, epsilon2=self.epsilon2,
                    clip_threshold=self.clip_threshold, rescale_grad=self.rescale_grad,
                    clip_gradient=self.clip_gradient)

    def _native_hyper(self):
        # the kernels take float32 weights (or float32 master copies): epsilon1=None is float32's machine epsilon
        eps1 = torch.finfo(torch.float32).eps if self.epsilon1 is None else self.epsilon1
        return [self.beta2_decay, eps1, self.epsilon2, self.clip_threshold, self.rescale_grad, self._native_clip()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        adafactor_reference(weight, grad, state, lr=lr, wd=wd, t=t, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        # One tensor at a time, without copying the gradient when there is nothing to rescale or clip: each tensor's
        # passes then run while it is in cache, faster on CPU than torch's multi-tensor path (one pass per op over
        # every tensor); the arithmetic is the readable rule's.
        hyper = dict(beta2_decay=self.beta2_decay, epsilon1=self.epsilon1, epsilon2=self.epsilon2,
                     clip_threshold=self.clip_threshold)
        gs = rescale_clip_readonly_foreach(grads, self.rescale_grad, self.clip_gradient)
        if self.norm_sum_reducer is not None:
            return adafactor_sharded(self.norm_sum_reducer, weights, gs, states, lrs, wds, ts, **hyper)
        for w, g, s, lr, wd, t in zip(weights, gs, states, lrs, wds, ts):
            _adafactor_step(w, g, s, lr=lr, wd=wd, t=t, **hyper)


# ------------------------------------------------------------------------------------------ CAME
@state_class
class CAMEFactoredState(NamedTuple):
    exp_avg: torch.Tensor       # first moment of the normalised update, the weight's shape
    exp_avg_sq_row: torch.Tensor  # [..., n]
    exp_avg_sq_col: torch.Tensor  # [..., m]
    exp_avg_res_row: torch.Tensor  # [..., n]: instability (confidence) statistics
    exp_avg_res_col: torch.Tensor  # [..., m]


@state_class
class CAMEState(NamedTuple):
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor


def _came_shapes(shape) -> tuple[tuple, tuple]:
    """CAME's factor shapes for ``[..., n, m]``: ``[..., n]`` and ``[..., m]`` (came-pytorch's layout)."""
    return tuple(shape[:-1]), (*shape[:-2], shape[-1])


def _approx_rsqrt(row, col, row_mean=None) -> torch.Tensor:
    """``1/sqrt(row_i * col_j / mean(row))``, factor by factor as came-pytorch forms it (a new tensor); a sharded
    step passes the whole tensor's ``row_mean``."""
    if row_mean is None:
        row_mean = row.mean(dim=-1, keepdim=True)
    r_factor = (row / row_mean).rsqrt_().unsqueeze(-1)
    c_factor = col.unsqueeze(-2).rsqrt()
    return torch.mul(r_factor, c_factor)


def _rms(tensor) -> torch.Tensor:
    return tensor.norm(2) / (tensor.numel() ** 0.5)


def came_reference(weight, grad, state, *, lr, wd, beta1, beta2, beta3, epsilon1, epsilon2, clip_threshold,
                   rescale_grad, clip_gradient) -> None:
    """One tensor, as ``came_pytorch.CAME`` after MXNet's gradient preprocessing."""
    _came_step(weight, rescale_clip(grad, rescale_grad, clip_gradient), state, lr=lr, wd=wd, beta1=beta1,
               beta2=beta2, beta3=beta3, epsilon1=epsilon1, epsilon2=epsilon2, clip_threshold=clip_threshold)


def _came_step(weight, g, state, *, lr, wd, beta1, beta2, beta3, epsilon1, epsilon2, clip_threshold) -> None:
    update = (g**2) + epsilon1
    if isinstance(state, CAMEFactoredState):
        state.exp_avg_sq_row.mul_(beta2).add_(update.mean(dim=-1), alpha=1.0 - beta2)
        state.exp_avg_sq_col.mul_(beta2).add_(update.mean(dim=-2), alpha=1.0 - beta2)
        update = _approx_rsqrt(state.exp_avg_sq_row, state.exp_avg_sq_col).mul_(g)
    else:
        state.exp_avg_sq.mul_(beta2).add_(update, alpha=1.0 - beta2)
        update = state.exp_avg_sq.rsqrt().mul_(g)
    update.div_((_rms(update) / clip_threshold).clamp_(min=1.0))
    exp_avg = state.exp_avg
    exp_avg.mul_(beta1).add_(update, alpha=1 - beta1)
    res = (update - exp_avg) ** 2 + epsilon2
    if isinstance(state, CAMEFactoredState):
        state.exp_avg_res_row.mul_(beta3).add_(res.mean(dim=-1), alpha=1.0 - beta3)
        state.exp_avg_res_col.mul_(beta3).add_(res.mean(dim=-2), alpha=1.0 - beta3)
        update = _approx_rsqrt(state.exp_avg_res_row, state.exp_avg_res_col).mul_(exp_avg)
    else:
        update = exp_avg.clone()
    if wd != 0:
        weight.add_(weight, alpha=-wd * lr)
    update.mul_(lr)
    weight.add_(-update)


@register
class CAME(Optimizer):
    r"""CAME: confidence-guided adaptive memory-efficient optimization (Luo et al., ACL 2023), exactly as
    ``came-pytorch`` computes it.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        R_t &= \beta_2 R_{t-1} + (1-\beta_2)\,\mathrm{mean}_{-1}(g_t^2 + \epsilon_1), \quad
            C_t = \beta_2 C_{t-1} + (1-\beta_2)\,\mathrm{mean}_{-2}(g_t^2 + \epsilon_1) \\
        u_t &= g_t / \sqrt{R_t C_t / \mathrm{mean}(R_t)}, \quad u_t \leftarrow u_t / \max(1, \mathrm{RMS}(u_t)/d) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) u_t, \quad r_t = (u_t - m_t)^2 + \epsilon_2 \\
        S^R_t &= \beta_3 S^R_{t-1} + (1-\beta_3)\,\mathrm{mean}_{-1}(r_t), \quad
            S^C_t = \beta_3 S^C_{t-1} + (1-\beta_3)\,\mathrm{mean}_{-2}(r_t) \\
        w_t &= w_{t-1} - \eta\,\mathrm{wd}\,w_{t-1} - \eta\, m_t / \sqrt{S^R_t S^C_t / \mathrm{mean}(S^R_t)}

    0-D and 1-D weights keep full moments (``v_t`` instead of ``R, C``) and step by ``eta * m_t``.

    Args:
        learning_rate: step size (default 2e-4, the paper's; reference name ``lr``, which has no default there).
        beta1, beta2, beta3: decay rates of the update average, the squared gradient and the instability
            (reference: ``betas``).
        epsilon1, epsilon2: added to ``g^2`` and to the instability (reference: ``eps``; defaults 1e-30, 1e-16).
        clip_threshold: ``d``, the RMS clip of the normalised update (default 1.0).
        wd: decoupled weight decay, ``w -= lr*wd*w`` (reference name ``weight_decay``).

    Example:
        >>> opt = CAME(learning_rate=2e-4, beta1=0.9, beta2=0.999, beta3=0.9999)
    """

    template_fixes_state_shapes = True
    default_learning_rate = 2e-4
    #: RMS(u) and (2-D weights) column and row means are whole-tensor sums: a sharded step reduces them
    uses_tensor_norms = True
    sparse_support = "dense"
    native_rule = "came"  # optzoo/native/src/rules_factored.cpp

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd",
                              "betas": split_tuple("beta1", "beta2", "beta3"),
                              "eps": split_tuple("epsilon1", "epsilon2")})
    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, beta3=0.9999, epsilon1=1e-30, epsilon2=1e-16,
                 clip_threshold=1.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0)
        self.beta3 = check_real("beta3", beta3, 0.0, 1.0)
        self.epsilon1 = check_real("epsilon1", epsilon1, 0.0)
        self.epsilon2 = check_real("epsilon2", epsilon2, 0.0)
        self.clip_threshold = check_real("clip_threshold", clip_threshold, 0.0, low_open=True)

    def create_state(self, index, weight):
        if weight.dim() >= 2:
            row, col = _came_shapes(weight.shape)
            dtype = self.state_dtype or weight.dtype
            zeros = [weight.new_zeros(shape, dtype=dtype) for shape in (row, col, row, col)]
            return CAMEFactoredState(self._zeros(weight), *zeros)
        return CAMEState(self._zeros(weight), self._zeros(weight))

    def _state_shape_fits(self, weight, leaf) -> bool:
        shapes = {tuple(weight.shape), *(_came_shapes(weight.shape) if weight.dim() >= 2 else ())}
        return tuple(leaf.shape) in shapes

    def replicated_state(self, state) -> tuple:
        """States every rank keeps whole when a 2-D weight is sharded by rows (``Shard(0)``): the two column
        statistics."""
        if isinstance(state, CAMEFactoredState) and state.exp_avg.dim() == 2:
            return (state.exp_avg_sq_col, state.exp_avg_res_col)
        return ()

    def _hyper(self) -> dict:
        return dict(beta1=self.beta1, beta2=self.beta2, beta3=self.beta3, epsilon1=self.epsilon1,
                    epsilon2=self.epsilon2, clip_threshold=self.clip_threshold, rescale_grad=self.rescale_grad,
                    clip_gradient=self.clip_gradient)

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.beta3, self.epsilon1, self.epsilon2, self.clip_threshold,
                self.rescale_grad, self._native_clip()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        came_reference(weight, grad, state, lr=lr, wd=wd, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        # as Adafactor's: one tensor at a time (cache-friendly), no gradient copy when there is nothing to do
        hyper = {k: v for k, v in self._hyper().items() if k not in ("rescale_grad", "clip_gradient")}
        gs = rescale_clip_readonly_foreach(grads, self.rescale_grad, self.clip_gradient)
        if self.norm_sum_reducer is not None:
            return came_sharded(self.norm_sum_reducer, weights, gs, states, lrs, wds, **hyper)
        for w, g, s, lr, wd in zip(weights, gs, states, lrs, wds):
            _came_step(w, g, s, lr=lr, wd=wd, **hyper)


# ------------------------------------------------------------------------------------------ sharded steps
# FSDP2's Shard(0) splits a weight's first dimension over the ranks. Element-wise work and sums over the last
# dimension stay local; what the rules read of the whole tensor is a sum over its rows (RMS of the weight or the
# update, a 2-D weight's column means and the mean of its row statistic). The sharded steps below run the
# readable rule in stages over all tensors, and between stages ``reducer.sum_parts`` adds up every rank's partial
# sums with one all-reduce for all tensors (Adafactor: two per step, CAME: three). A part owned by ``None`` is a
# sum over a dimension that is not sharded (the factors of a weight with more than two dimensions): it passes.


def _row_owner(w):
    """The owner of a sum over dimension -2: the weight when that is its sharded first dimension."""
    return w if w.dim() == 2 else None


def _sum_sq(t) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dtype=torch.float64).square()


def adafactor_sharded(reducer, weights, gs, states, lrs, wds, ts, *, beta2_decay, epsilon1, epsilon2,
                      clip_threshold) -> None:
    """:func:`adafactor_reference` for local shards, with ``reducer`` (``optzoo.sharding``) adding the shards'
    sums: ``||w||^2`` and, for 2-D weights, the column sums of ``g^2`` and the sum of the row statistic."""
    numels = [math.prod(reducer.whole_shape(w)) for w in weights]
    parts, owners = [], []
    for w, g, s, t in zip(weights, gs, states, ts):
        parts.append(_sum_sq(w))
        owners.append(w)
        if isinstance(s, AdafactorFactoredState):
            s.row_var.lerp_(torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1)), t**beta2_decay)
            parts += [g.square().sum(dim=-2, keepdim=True), s.row_var.sum(dim=-2, keepdim=True)]
            owners += [_row_owner(w)] * 2
    sums = iter(reducer.sum_parts(parts, owners))
    updates, parts = [], []
    for w, g, s, lr, wd, t, numel in zip(weights, gs, states, lrs, wds, ts, numels):
        weight_sq = next(sums).item()
        eps1 = torch.finfo(w.dtype).eps if epsilon1 is None else epsilon1
        one_minus_beta2, alpha = _adafactor_scalars(weight_sq**0.5, max(numel, 1), lr, t, beta2_decay, epsilon2)
        if wd != 0:
            w.mul_(1 - lr * wd)
        if isinstance(s, AdafactorFactoredState):  # the row statistic advanced above, the column one now
            rows = reducer.whole_shape(w)[-2]
            col_sum, row_sum = next(sums), next(sums)
            s.col_var.lerp_(col_sum.div_(rows), one_minus_beta2)
            var_estimate = (s.row_var @ s.col_var).div_(row_sum.div_(rows).clamp_(min=eps1))
            update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)
        else:
            update = _adafactor_direction(g, s, one_minus_beta2, eps1)
        updates.append((update, alpha))
        parts.append(_sum_sq(update))
    for w, (update, alpha), update_sq, numel in zip(weights, updates, reducer.sum_parts(parts, weights), numels):
        if numel == 0:
            continue
        denom = max(1.0, update_sq.item() ** 0.5 / ((numel**0.5) * clip_threshold))
        w.add_(update, alpha=-alpha / denom)


def came_sharded(reducer, weights, gs, states, lrs, wds, *, beta1, beta2, beta3, epsilon1, epsilon2,
                 clip_threshold) -> None:
    """:func:`came_reference` for local shards, with ``reducer`` (``optzoo.sharding``) adding the shards' sums:
    for 2-D weights the column sums and the row statistic's sum of ``g^2 + eps1`` and then of the instability,
    and ``||u||^2`` for every weight."""
    def factor_sums(rows, values, w):  # a row statistic advanced with values' row means; the sums to reduce
        return [values.sum(dim=-2), rows.sum(dim=-1, keepdim=True)], [_row_owner(w)] * 2

    parts, owners = [], []
    for w, g, s in zip(weights, gs, states):
        update = (g**2) + epsilon1
        if isinstance(s, CAMEFactoredState):
            s.exp_avg_sq_row.mul_(beta2).add_(update.mean(dim=-1), alpha=1.0 - beta2)
            more, who = factor_sums(s.exp_avg_sq_row, update, w)
            parts += more
            owners += who
        else:
            s.exp_avg_sq.mul_(beta2).add_(update, alpha=1.0 - beta2)
    sums = iter(reducer.sum_parts(parts, owners))
    updates, parts = [], []
    for w, g, s in zip(weights, gs, states):
        if isinstance(s, CAMEFactoredState):
            n = reducer.whole_shape(w)[-2]
            col_sum, row_sum = next(sums), next(sums)
            s.exp_avg_sq_col.mul_(beta2).add_(col_sum.div_(n), alpha=1.0 - beta2)
            update = _approx_rsqrt(s.exp_avg_sq_row, s.exp_avg_sq_col, row_sum.div_(n)).mul_(g)
        else:
            update = s.exp_avg_sq.rsqrt().mul_(g)
        updates.append(update)
        parts.append(_sum_sq(update))
    parts_of_update_sq = reducer.sum_parts(parts, weights)
    parts, owners = [], []
    for w, s, update, update_sq in zip(weights, states, updates, parts_of_update_sq):
        numel = max(math.prod(reducer.whole_shape(w)), 1)
        rms = (update_sq.sqrt() / (numel**0.5)).to(update.dtype)
        update.div_((rms / clip_threshold).clamp_(min=1.0))
        s.exp_avg.mul_(beta1).add_(update, alpha=1 - beta1)
        if isinstance(s, CAMEFactoredState):
            res = (update - s.exp_avg) ** 2 + epsilon2
            s.exp_avg_res_row.mul_(beta3).add_(res.mean(dim=-1), alpha=1.0 - beta3)
            more, who = factor_sums(s.exp_avg_res_row, res, w)
            parts += more
            owners += who
    sums = iter(reducer.sum_parts(parts, owners))
    for w, s, lr, wd in zip(weights, states, lrs, wds):
        if isinstance(s, CAMEFactoredState):
            n = reducer.whole_shape(w)[-2]
            col_sum, row_sum = next(sums), next(sums)
            s.exp_avg_res_col.mul_(beta3).add_(col_sum.div_(n), alpha=1.0 - beta3)
            update = _approx_rsqrt(s.exp_avg_res_row, s.exp_avg_res_col, row_sum.div_(n)).mul_(s.exp_avg)
        else:
            update = s.exp_avg.clone()
        if wd != 0:
            w.add_(w, alpha=-wd * lr)
        w.add_(update.mul_(lr), alpha=-1)
