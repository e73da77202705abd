r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024), exact to ``pytorch-optimizer``
4.1's ``SOAP`` (which follows the authors' published code; docs/deviations.md lists the differences).

For every dimension ``i`` of a weight (up to ``max_precondition_dim`` long; 1-D weights only with
``precondition_1d``) SOAP keeps a statistic ``L_i = EMA(G_(i) G_(i)^T)`` of the gradient contracted over the other
dimensions, and its eigenbasis ``Q_i``. Adam's moments live in the rotated space ``G' = G x_i Q_i`` (the second
moment) and are rotated back for the step. ``Q_i`` is computed by ``eigh`` after the first gradient (that step only
accumulates statistics: no update) and refreshed every ``precondition_frequency`` steps by one power iteration and
a QR decomposition, re-sorting the second moment to the new eigenvalue order.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import NamedTuple

import torch

from .. import native
from .base import Optimizer, register, rescale_clip, rescale_clip_readonly_foreach, state_class
from .reference_names import accepts_reference_names, split_tuple
from .validation import check_bool, check_int, check_real

__all__ = ["SOAP", "SOAPState", "merged_shape"]


@state_class
class SOAPState(NamedTuple):
    exp_avg: torch.Tensor       # first moment, in the weight's own space
    exp_avg_sq: torch.Tensor    # second moment, in the eigenbasis
    gg: tuple                   # per (merged) dimension: the (d, d) statistic, or an empty tensor (not preconditioned)
    # per (merged) dimension: its eigenbasis Q transposed (row j is eigenvector j), or an empty tensor. Used as
    # the view q.t(): Q column-major, the layout torch.linalg.eigh/qr return, so the matrix products round as the
    # reference's do.
    q: tuple
    started: torch.Tensor       # 0 until the first gradient has been seen (that step makes no update), then 1


def merged_shape(shape, max_dim: int) -> list[int]:
    """The shape SOAP preconditions with ``merge_dims``: neighbouring dimensions multiplied together while the
    product stays at most ``max_dim`` (the authors' rule; see docs/deviations.md for pytorch-optimizer's)."""
    merged, product = [], 1
    for dim in shape:
        if product * dim <= max_dim:
            product *= dim
        elif product > 1:
            merged.append(product)
            product = dim
        else:
            merged.append(dim)
    if product > 1 or not merged:
        merged.append(product)
    return merged


def _project(x, qs, backward: bool = False):
    """``x`` rotated by every ``Q_i`` (stored transposed) along dimension ``i`` (``Q_i^T`` forward, ``Q_i``
    backward); a dimension without a basis is only cycled to the end, as the reference does."""
    for q in qs:
        if len(q) > 0:
            x = torch.tensordot(x, q.t(), dims=[[0], [1 if backward else 0]])
        else:
            x = x.permute([*range(1, x.dim()), 0])
    return x


def _project_matrix(x, qs, backward: bool = False):
    """:func:`_project` of a matrix, bit for bit: each ``tensordot`` written as the operations torch's
    ``tensordot`` runs for it (its operands permuted, the contracted dimension inner, then reshaped, and one
    ``mm``), without the Python wrapper's and the dispatcher's work around them (a small matrix's step is mostly
    that work). A contracted dimension of length 1 takes ``tensordot`` itself (which sums it away first); the
    reshapes, which keep the strides of a matrix whose sides are both longer than 1, run only for the others."""
    for q in qs:
        if q.shape[0] > 1:
            rows, cols = x.shape
            basis = q if backward else q.t()  # q.t() permuted with the contracted dimension first
            x = torch.mm(x.t(), basis) if cols > 1 else torch.mm(x.t().reshape(cols, rows), basis.reshape(rows, rows))
        elif q.shape[0] > 0:
            x = torch.tensordot(x, q.t(), dims=[[0], [1 if backward else 0]])
        else:
            x = x.t()
    return x


def _eigenbasis(gg):
    """Eigenvectors of ``gg + 1e-30 I``, largest eigenvalue first."""
    _, q = torch.linalg.eigh(gg + 1e-30 * torch.eye(gg.shape[0], device=gg.device, dtype=gg.dtype))
    return torch.flip(q, dims=[1])


@register
class SOAP(Optimizer):
    r"""SOAP, exactly as ``pytorch_optimizer.SOAP`` (4.1) computes it, after MXNet's gradient preprocessing.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}), \quad
            g'_t = g_t \times_i Q_i \\
        m_t &= \mathrm{lerp}(m_{t-1}, g_t, 1-\beta_1), \quad v_t = \mathrm{lerp}(v_{t-1}, g_t'^2, 1-\beta_2) \\
        w &\leftarrow w_{t-1} - \eta\,\frac{\sqrt{1-\beta_2^k}}{1-\beta_1^k}\;
            \Big(\frac{m_t \times_i Q_i}{\sqrt{v_t} + \epsilon}\Big) \times_i Q_i^T, \quad k = t - 1 \\
        w_t &= w\,(1 - \eta\,\mathrm{wd}) \\
        L_i &\leftarrow \mathrm{lerp}(L_i, G_{(i)} G_{(i)}^T, 1 - \beta_{\mathrm{shampoo}}), \quad
            Q_i \leftarrow \mathrm{QR}(L_i Q_i) \text{ every } f \text{ steps}

    The first update of a parameter only accumulates ``L_i`` and computes ``Q_i = eigh(L_i)``.

    Args:
        learning_rate: step size (default 3e-3; reference name ``lr``).
        beta1, beta2: Adam's decay rates (default 0.95, 0.95; reference: ``betas``).
        shampoo_beta: decay rate of the statistics ``L_i``; ``None``: ``beta2``.
        epsilon: added to ``sqrt(v)`` (default 1e-8; reference name ``eps``).
        wd: decoupled weight decay after the step, ``w *= 1 - lr*wd`` (default 0.01; reference ``weight_decay``).
        precondition_frequency: steps between eigenbasis refreshes (default 10).
        max_precondition_dim: longer dimensions are not rotated (default 10000).
        merge_dims: precondition the shape :func:`merged_shape` makes (default False).
        precondition_1d: rotate 1-D weights too (default False: plain Adam for them).
        correct_bias: Adam's bias correction (default True).
        normalize_gradient: divide the rotated-back step by ``RMS + eps`` (default False).

    The fast path (``impl="foreach"``, the default) refreshes ``Q`` with ``geqrf`` + ``householder_product``
    (the two LAPACK calls ``linalg.qr`` makes, without its ``R``) written straight into the state; both paths are
    bit-identical to the package.
    """

    template_fixes_state_shapes = True
    default_learning_rate = 3e-3
    #: on Shard(0) parameters (FSDP2) optzoo.sharding's reducer gathers the whole gradients (one all_gather per
    #: step); every rank keeps the whole states (``Replicate()``), computes the whole step and applies its rows
    needs_whole_tensors = "preconditions in the eigenbases of whole-tensor statistics"
    whole_tensor_state = True
    sparse_support = "none"

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "eps": "epsilon",
                              "betas": split_tuple("beta1", "beta2")})
    def __init__(self, learning_rate=None, beta1=0.95, beta2=0.95, shampoo_beta=None, epsilon=1e-8, wd=0.01,
                 precondition_frequency=10, max_precondition_dim=10000, merge_dims=False, precondition_1d=False,
                 correct_bias=True, normalize_gradient=False, **kwargs):
        super().__init__(learning_rate=learning_rate, wd=wd, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.shampoo_beta = check_real("shampoo_beta", shampoo_beta, 0.0, 1.0, allow_none=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.precondition_frequency = check_int("precondition_frequency", precondition_frequency, 1)
        self.max_precondition_dim = check_int("max_precondition_dim", max_precondition_dim, 1)
        self.merge_dims = check_bool("merge_dims", merge_dims)
        self.precondition_1d = check_bool("precondition_1d", precondition_1d)
        self.correct_bias = check_bool("correct_bias", correct_bias)
        self.normalize_gradient = check_bool("normalize_gradient", normalize_gradient)

    # ------------------------------------------------------------------ state
    def _preconditioned_shape(self, shape) -> list[int]:
        """The dimensions that get a statistic (``0`` marks one that is not rotated)."""
        limit = self.max_precondition_dim
        if len(shape) == 1:
            return [shape[0] if self.precondition_1d and shape[0] <= limit else 0]
        if len(shape) == 0:
            return []
        dims = merged_shape(shape, limit) if self.merge_dims else list(shape)
        return [d if d <= limit else 0 for d in dims]

    def create_state(self, index, weight):
        dtype = self.state_dtype or weight.dtype
        mats = tuple(weight.new_zeros((d, d) if d else (0,), dtype=dtype)
                     for d in self._preconditioned_shape(weight.shape))
        return SOAPState(self._zeros(weight), self._zeros(weight), mats,
                         tuple(torch.zeros_like(m) for m in mats), weight.new_zeros((), dtype=dtype))

    def _whole_shape(self, weight) -> tuple:
        reducer = self.norm_sum_reducer
        return reducer.whole_shape(weight) if reducer is not None else tuple(weight.shape)

    def _state_shape_fits(self, weight, leaf) -> bool:
        shape = self._whole_shape(weight)
        dims = self._preconditioned_shape(shape)
        return tuple(leaf.shape) in {tuple(weight.shape), shape, (), (0,), *((d, d) for d in dims)}

    def _state_template(self, index, weight, fresh: bool = False, masters: bool = True):
        """The template of the whole parameter's state when ``weight`` is a shard (the state is kept whole)."""
        shape = self._whole_shape(weight)
        if shape == tuple(weight.shape):
            return super()._state_template(index, weight, fresh, masters)
        template = super()._state_template(index, torch.empty(shape, dtype=weight.dtype, device="meta"), fresh,
                                           masters)
        if template is not None and self._uses_master_copy(weight, masters):
            template = [(tuple(weight.shape), torch.float32), *template[1:]]  # the master copy holds the rows
        return template

    def _shampoo_beta(self) -> float:
        return self.beta2 if self.shampoo_beta is None else self.shampoo_beta

    def _as_preconditioned(self, x):
        return x.reshape(merged_shape(x.shape, self.max_precondition_dim)) if self.merge_dims and x.dim() > 1 else x

    # ------------------------------------------------------------------ preconditioner
    def _accumulate(self, g, state: SOAPState) -> None:
        """``L_i = lerp(L_i, G_(i) G_(i)^T, 1 - shampoo_beta)`` for every rotated dimension."""
        weight = 1.0 - self._shampoo_beta()
        if g.dim() == 1:
            if len(state.gg[0]) > 0:
                state.gg[0].lerp_(g.unsqueeze(1) @ g.unsqueeze(0), weight=weight)
            return
        g = self._as_preconditioned(g)
        if g.dim() == 2 and min(g.shape) > 1:  # torch.tensordot's own operations for a matrix (_project_matrix)
            for i, gg in enumerate(state.gg):  # both sides over 1: tensordot's reshapes keep the strides
                if gg.shape[0] > 0:
                    gg.lerp_(torch.mm(g, g.t()) if i == 0 else torch.mm(g.t(), g), weight=weight)
            return
        for i, gg in enumerate(state.gg):
            if len(gg) > 0:
                others = [*chain(range(i), range(i + 1, g.dim()))]
                gg.lerp_(torch.tensordot(g, g, dims=[others, others]), weight=weight)

    def _refresh(self, state: SOAPState, fast: bool = False) -> None:
        """One power iteration and a QR per rotated dimension; the second moment re-sorted to the new order.
        ``fast`` (float32 on the CPU): the QR's Q by ``geqrf`` + ``householder_product``, the two LAPACK calls
        ``linalg.qr`` makes (so the same Q, bit for bit), without ``linalg.qr``'s R (its ``triu``) and written
        straight into the state's transposed layout (no transposed copy)."""
        exp_avg_sq = self._as_preconditioned(state.exp_avg_sq)
        for i, (gg, q) in enumerate(zip(state.gg, state.q)):
            if len(gg) == 0:
                continue
            basis = q.t()
            product = gg @ basis
            order = torch.argsort((basis * product).sum(dim=0), descending=True)
            exp_avg_sq = exp_avg_sq.index_select(i, order)
            columns = product.index_select(1, order)
            if fast and q.dtype == torch.float32 and q.device.type == "cpu":
                torch.linalg.householder_product(*torch.geqrf(columns), out=basis)
            else:
                q.copy_(torch.linalg.qr(columns.to(torch.float32))[0].t())
        state.exp_avg_sq.copy_(exp_avg_sq.reshape(state.exp_avg_sq.shape))

    def _update_preconditioner(self, g, state: SOAPState, k: int, fast: bool = False, started=None) -> None:
        self._accumulate(g, state)
        if not (state.started if started is None else started):
            for gg, q in zip(state.gg, state.q):
                if len(gg) > 0:
                    q.copy_(_eigenbasis(gg).t())
        elif k % self.precondition_frequency == 0:
            self._refresh(state, fast)

    def _rotate(self, x, state: SOAPState, backward: bool = False):
        y = self._as_preconditioned(x)
        y = _project_matrix(y, state.q, backward) if y.dim() == 2 else _project(y, state.q, backward)
        return y if y.shape == x.shape else y.reshape(x.shape)

    # ------------------------------------------------------------------ the rule
    def _step_size(self, lr: float, k: int) -> float:
        if not self.correct_bias:
            return lr
        return lr * (math.sqrt(1.0 - math.pow(self.beta2, k)) / (1.0 - math.pow(self.beta1, k)))

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        self._soap_step(weight, rescale_clip(grad, self.rescale_grad, self.clip_gradient), state, lr, wd, t)

    def _soap_step(self, weight, g, state: SOAPState, lr, wd, t, fast: bool = False) -> None:
        if not state.started:
            self._update_preconditioner(g, state, 0, started=False)
            state.started.fill_(1)
            return
        k = t - 1
        state.exp_avg.lerp_(g, weight=1.0 - self.beta1)
        state.exp_avg_sq.lerp_(self._rotate(g, state).square(), weight=1.0 - self.beta2)
        denom = state.exp_avg_sq.sqrt().add_(self.epsilon)
        step = self._rotate(self._rotate(state.exp_avg, state) / denom, state, backward=True)
        if self.normalize_gradient:
            step.div_(torch.mean(step.square()).sqrt_().add_(self.epsilon))
        if self.norm_sum_reducer is not None:  # a shard: the whole step was computed, the weight has its rows
            step = self.norm_sum_reducer.local_rows(step, weight)
        weight.add_(step, alpha=-self._step_size(lr, k))
        if wd != 0.0:
            weight.mul_(1.0 - wd * lr)
        self._update_preconditioner(g, state, k, fast, started=True)

    def _native_adam(self):
        """The native module when the fast path steps SOAP's unrotated tensors in one native call (``impl="auto"``,
        the default, where the kernels are built; not with ``normalize_gradient`` or on shards), else None."""
        if self._impl_request != "auto" or self.normalize_gradient or self.norm_sum_reducer is not None:
            return None
        return native.load()

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        gs = rescale_clip_readonly_foreach(grads, self.rescale_grad, self.clip_gradient)
        if self.norm_sum_reducer is not None:  # FSDP2 shards: every rank gathers the whole gradients
            gs = self.norm_sum_reducer.gather_rows(gs, weights)
        kernels = self._native_adam()
        unrotated = []
        for k, (w, g, s, lr, wd, t) in enumerate(zip(weights, gs, states, lrs, wds, ts)):
            if kernels is not None and not any(q.shape[0] for q in s.q) and s.started:
                unrotated.append(k)  # Adam, element-wise: one native call for all of them below
            else:
                self._soap_step(w, g, s, lr, wd, t, fast=True)
        if unrotated and not self._adam_natively(kernels, *([seq[k] for k in unrotated]
                                                            for seq in (weights, gs, states, lrs, wds, ts))):
            for k in unrotated:
                self._soap_step(weights[k], gs[k], states[k], lrs[k], wds[k], ts[k], fast=True)

    def _adam_natively(self, kernels, weights, gs, states, lrs, wds, ts) -> bool:
        """The step of tensors SOAP does not rotate (no eigenbasis in any dimension: 1-D weights without
        ``precondition_1d``, dimensions over ``max_precondition_dim``), past their first step: there SOAP is Adam.
        Three calls for all of them: the native rule ``soap_moments`` (both moments' lerps, one pass), torch's
        square roots (``torch._foreach_sqrt``: MKL's, which the kernels cannot reproduce) and ``soap_apply`` (the
        scaled step and the decay, one pass; rules_soap.cpp). They round as the torch operations of
        :meth:`_soap_step` do (lerp and the scaled add as fused multiply-adds), so bit for bit. False (nothing
        written) where the kernels do not take the tensors (not float32, not contiguous)."""
        means, variances = [s.exp_avg for s in states], [s.exp_avg_sq for s in states]
        if not kernels.step(native.rule_id("soap_moments"), weights, gs, [(m, v) for m, v in zip(means, variances)],
                            lrs, wds, ts, [self.beta1, self.beta2], False, None):
            return False
        roots = list(torch._foreach_sqrt(variances))
        sizes = [self._step_size(lr, t - 1) for lr, t in zip(lrs, ts)]
        if not kernels.step(native.rule_id("soap_apply"), weights, roots, means, lrs, wds, ts, [self.epsilon], False,
                            sizes):
            raise RuntimeError("soap_apply declined tensors soap_moments took")  # the same tensors: cannot happen
        return True
