"""Prodigy (Mishchenko & Defazio 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner"), exact to
``prodigyopt`` 1.1."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import native
from .base import Optimizer, f32, register, rescale_clip, state_class
from .input_checks import native_positions
from .reference_names import accepts_reference_names, split_tuple
from .validation import check_bool, check_int, check_real

__all__ = ["Prodigy", "ProdigyState"]


@state_class
class ProdigyState(NamedTuple):
    p0: torch.Tensor          # the weight at its first update
    s: torch.Tensor           # the weighted gradient sum of the d estimate's denominator
    exp_avg: torch.Tensor     # m (scaled by d)
    exp_avg_sq: torch.Tensor  # v (scaled by d^2)


@register
class Prodigy(Optimizer):
    r"""Prodigy: Adam whose step size ``d`` is estimated on the fly from the distance travelled (exact to
    ``prodigyopt`` 1.1 ``Prodigy``); ``learning_rate`` stays a multiplier around 1.

    One step over every tensor of the call (:math:`k` counts the steps, :math:`d` is optimizer-wide):

    .. math::
        g &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient})
             \;(+\,\lambda w\text{ unless decouple}), \qquad
        \hat\eta = d\,\eta\,\big[\sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})\big]^{\text{bias correction}} \\
        r &\leftarrow \beta_3 r + \tfrac{d}{d_0}\hat\eta\,\textstyle\sum \langle g, w_0 - w\rangle, \qquad
        s \leftarrow \beta_3 s + \tfrac{d}{d_0}\hat\eta\, g \quad(\tfrac{d}{d_0} d\, g\text{ with safeguard\_warmup}) \\
        m &\leftarrow \beta_1 m + d(1-\beta_1) g, \qquad v \leftarrow \beta_2 v + d^2(1-\beta_2) g^2 \\
        d &\leftarrow \min\big(d_{\max},\ \gamma d\big),\quad
             d_{\max} = \max(d_{\max}, \hat d),\ \hat d = c\, r / \textstyle\sum\lVert s\rVert_1
             \quad(d \leftarrow \max(d, \hat d)\text{ while } d = d_0) \\
        w &\leftarrow w - \lambda\hat\eta\, w\,[\text{decouple}] - \hat\eta\, m / (\sqrt{v} + d\,\epsilon)

    (:math:`\beta_3` defaults to :math:`\sqrt{\beta_2}`, :math:`\gamma` is ``growth_rate``, :math:`c` is
    ``d_coef``). A step whose ``s`` are all zero (zero gradients) moves no weight and keeps :math:`d`, as in the
    package. :math:`d`, :math:`d_{\max}`, :math:`r` and :math:`k` are saved with the optimizer
    (:meth:`extra_state`), so a resumed run continues bit-identically.

    The estimate needs every parameter in one step: the Trainer and TorchOptimizer pass them together; calling the
    updater once per parameter advances :math:`d` once per call. Per-parameter rates (``lr_mult``) scale each
    tensor's :math:`\hat\eta`; the package requires one rate for all groups (or 0). TorchOptimizer param groups
    may differ in ``lr`` and ``wd`` only: a group with other hyperparameters would need a step of its own (a
    ``ValueError`` at the step).

    Args:
        learning_rate: multiplier of the estimated step (default 1.0); ``lr`` is accepted.
        beta1, beta2: default 0.9, 0.999; ``betas`` is accepted. beta3: default None (``sqrt(beta2)``).
        epsilon: default 1e-8; ``eps`` is accepted.
        decouple: decoupled (AdamW-style) weight decay (default True); False adds ``wd*w`` to the gradient.
        use_bias_correction: Adam's bias correction in the step (default False).
        safeguard_warmup: leave the rate out of ``s`` (default False).
        d0: initial estimate (default 1e-6). d_coef: multiplies the estimate (default 1).
        growth_rate: the most ``d`` may grow per step (default inf).
        slice_p: prodigyopt's memory saving (estimate on every p-th element); only 1 is supported.

    Example:
        >>> opt = Prodigy(learning_rate=1.0, wd=0.01, d_coef=1.0)
    """

    default_learning_rate = 1.0
    # the whole step, both passes and the d estimate between them, in one native call (rules_prodigy.cpp)
    native_rule = "prodigy"
    #: one d estimate over every tensor of the step: TorchOptimizer takes it in one call (optzoo.torch_optimizer)
    joint_step = True

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "eps": "epsilon",
                              "betas": split_tuple("beta1", "beta2")})
    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, beta3=None, epsilon=1e-8, decouple=True,
                 use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf,
                 slice_p=1, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.beta3 = check_real("beta3", beta3, 0.0, 1.0, allow_none=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0, low_open=True)
        self.decouple = check_bool("decouple", decouple)
        self.use_bias_correction = check_bool("use_bias_correction", use_bias_correction)
        self.safeguard_warmup = check_bool("safeguard_warmup", safeguard_warmup)
        self.d0 = check_real("d0", d0, 0.0, low_open=True)
        self.d_coef = check_real("d_coef", d_coef, 0.0, low_open=True)
        self.growth_rate = check_real("growth_rate", growth_rate, 1.0, allow_inf=True)
        self.slice_p = check_int("slice_p", slice_p, 1)
        if self.slice_p != 1:
            raise ValueError("Prodigy: slice_p > 1 (prodigyopt's estimate on every p-th element) is not supported; "
                             "use slice_p=1")
        self.d, self.d_max, self.d_numerator, self.k = self.d0, self.d0, 0.0, 0

    def create_state(self, index, weight):
        p0 = weight.detach().clone(memory_format=torch.contiguous_format).to(self.state_dtype or weight.dtype)
        return ProdigyState(p0, self._zeros(weight), self._zeros(weight), self._zeros(weight))

    def extra_state(self) -> dict:
        return {"d": self.d, "d_max": self.d_max, "d_numerator": self.d_numerator, "k": self.k}

    def load_extra_state(self, extra: dict) -> None:
        if extra:
            self.d, self.d_max = float(extra["d"]), float(extra["d_max"])
            self.d_numerator, self.k = float(extra["d_numerator"]), int(extra["k"])

    # ------------------------------------------------------------------ the step (two passes over all tensors)
    def _apply(self, indices, weights, grads, states, lrs, wds, ts, fast):
        if not weights:
            return
        if fast and self.impl == "native" and self._native_call(indices, weights, grads, states, lrs, wds, ts, False):
            return
        with torch.no_grad():
            gs = [self._gradient(g, w, wd) for g, w, wd in zip(grads, weights, wds)]
            beta1, beta2 = self.beta1, self.beta2
            beta3, bias_correction = self._begin_step()
            k, d, d0 = self.k, self.d, self.d0
            dlrs = [d * lr * bias_correction for lr in lrs]
            active = [i for i, lr in enumerate(lrs) if lr > 0.0]
            numerator_terms, denominator = self._first_pass(weights, gs, states, dlrs, active, d, d0, beta1, beta2,
                                                            beta3, fast)
            if denominator == 0:
                return  # nothing to estimate from (zero gradients): no weight moves, d and k stay
            d_numerator = self.d_numerator * beta3 + sum(numerator_terms)
            d_max = self.d_max
            if max(lrs) > 0.0:
                d_hat = self.d_coef * d_numerator / denominator
                if d == d0:
                    d = max(d, d_hat)
                d_max = max(d_max, d_hat)
                d = min(d_max, d * self.growth_rate)
            self.d, self.d_max, self.d_numerator, self.k = d, d_max, d_numerator, k + 1
            aux = [x for dlr, wd in zip(dlrs, wds)
                   for x in (dlr, d * self.epsilon, -wd * dlr if wd and self.decouple else 0.0, -dlr * d)]
            if fast and self._native_pass("prodigy_apply", weights, gs, states, [self.beta1], aux):
                return
            for w, g, s, dlr, wd in zip(weights, gs, states, dlrs, wds):
                denom = s.exp_avg_sq.sqrt().add_(f32(d * self.epsilon))
                if wd and self.decouple:
                    w.add_(w, alpha=f32(-wd * dlr))
                if beta1 > 0:
                    w.addcdiv_(s.exp_avg, denom, value=f32(-dlr))
                else:
                    w.addcdiv_(g, denom, value=f32(-dlr * d))

    def _begin_step(self) -> tuple[float, float]:
        """``(beta3, bias correction)`` of this step; before the first step the estimate starts at d0 as it is now
        (a group may edit it)."""
        if self.k == 0:
            self.d = self.d_max = self.d0
        beta1, beta2, k = self.beta1, self.beta2, self.k
        beta3 = self.beta3 if self.beta3 is not None else math.sqrt(beta2)
        if not self.use_bias_correction:
            return beta3, 1.0
        return beta3, ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))

    def _gradient(self, grad, weight, wd):
        """``clip(rescale_grad*grad)`` (+ ``wd*w`` without ``decouple``); the caller's tensor itself when that is
        the identity (it is only read)."""
        grad = grad.to_dense() if grad.is_sparse else grad
        l2 = wd and not self.decouple
        if self.rescale_grad == 1.0 and self.clip_gradient is None and not l2:
            return grad
        g = rescale_clip(grad, self.rescale_grad, self.clip_gradient)
        if l2:
            g.add_(weight, alpha=f32(wd))
        return g

    def _first_pass(self, weights, gs, states, dlrs, active, d, d0, beta1, beta2, beta3, fast):
        """Moments and ``s`` of the active tensors; returns the numerator terms and ``sum |s|`` (float64)."""
        sw = self.safeguard_warmup
        if not fast:
            dots, abs_sums = [], []
            for i in active:
                w, g, s, dlr = weights[i], gs[i], states[i], dlrs[i]
                dots.append(torch.dot(g.flatten(), (s.p0 - w).flatten()).item())
                if beta1 > 0:
                    s.exp_avg.mul_(f32(beta1)).add_(g, alpha=f32(d * (1 - beta1)))
                s.exp_avg_sq.mul_(f32(beta2)).addcmul_(g, g, value=f32(d * d * (1 - beta2)))
                s.s.mul_(f32(beta3)).add_(g, alpha=f32((d / d0) * d if sw else (d / d0) * dlr))
                abs_sums.append(s.s.abs().sum().item())
            return self._estimate_sums(dots, abs_sums, [weights[i] for i in active], [dlrs[i] for i in active], d, d0)
        if not active:
            return [], 0.0
        ws, g_act, st = [weights[i] for i in active], [gs[i] for i in active], [states[i] for i in active]
        dl = [dlrs[i] for i in active]
        coefficients = [(d / d0) * d if sw else (d / d0) * dlr for dlr in dl]
        aux = [x for c in coefficients for x in (d * (1 - beta1), d * d * (1 - beta2), c)]
        sums = self._native_moments(ws, g_act, st, [beta1, beta2, beta3], aux)
        if sums is not None:  # one native pass: the moments and, per tensor, <g, p0 - w> and sum |s|
            return self._estimate_sums(sums[:, 0].tolist(), sums[:, 1].tolist(), ws, dl, d, d0)
        # one difference tensor at a time: the peak extra memory stays one tensor
        dots = [torch.dot(g.flatten(), (s.p0 - w).flatten()).item() for g, s, w in zip(g_act, st, ws)]
        if not self._native_pass("prodigy_moments", ws, g_act, st, [beta1, beta2, beta3], aux):
            if beta1 > 0:
                means = [s.exp_avg for s in st]
                torch._foreach_mul_(means, f32(beta1))
                torch._foreach_add_(means, g_act, alpha=f32(d * (1 - beta1)))
            variances = [s.exp_avg_sq for s in st]
            torch._foreach_mul_(variances, f32(beta2))
            torch._foreach_addcmul_(variances, g_act, g_act, value=f32(d * d * (1 - beta2)))
            sums = [s.s for s in st]
            torch._foreach_mul_(sums, f32(beta3))
            for s_sum, g, c in zip(sums, g_act, coefficients):  # add with alpha rounds once, as the package's add_
                s_sum.add_(g, alpha=f32(c))
        sums = [s.s for s in st]
        abs_sums = [s_sum.abs().sum().item() for s_sum in sums]
        return self._estimate_sums(dots, abs_sums, ws, dl, d, d0)

    def _estimate_sums(self, dots, abs_sums, owners, dlrs, d, d0):
        """The numerator terms ``(d/d0)*dlr*<g, p0 - w>`` and ``sum |s|`` from the per-tensor sums, added in the
        package's order (float32 per tensor, float64 across tensors). On a sharded step (``norm_sum_reducer``,
        :mod:`optzoo.sharding`) the shards' per-tensor sums are added up first: the whole tensors' sums."""
        if self.norm_sum_reducer is not None and owners:
            sums = self.norm_sum_reducer(torch.tensor([dots, abs_sums], dtype=torch.float64), owners)
            dots, abs_sums = sums[0].tolist(), sums[1].tolist()
        denominator = 0.0
        for value in abs_sums:
            denominator += value
        return [(d / d0) * dlr * dot for dot, dlr in zip(dots, dlrs)], denominator

    def _native_pass(self, rule: str, weights, grads, states, hyper, aux) -> bool:
        """One of the two native passes over every tensor; False (nothing written) where it cannot run."""
        if self.impl != "native" or not weights:
            return False
        n = len(weights)
        return native.load().step(native.rule_id(rule), list(weights), list(grads), list(states), [0.0] * n,
                                   [0.0] * n, [1] * n, hyper, False, aux)

    def _native_moments(self, weights, grads, states, hyper, aux):
        """The moments pass with the d estimate's sums: float64 ``[n, 2]`` (``<g, p0 - w>``, ``sum |s|``) per
        tensor, or None (nothing written) where the kernel cannot take the step."""
        if self.impl != "native":  # (sharded steps: the local sums, which _estimate_sums adds up over the shards)
            return None
        n = len(weights)
        return native.load().norm_sums(native.rule_id("prodigy_moments"), list(weights), list(grads), list(states),
                                       [0.0] * n, [0.0] * n, [1] * n, hyper, False, aux, None)

    def _native_call(self, indices, weights, grads, states, lrs, wds, ts, multi_precision) -> bool:
        """The whole step in one native call (``prodigy``: pass 1, the estimate, pass 2), which reports the new d.
        False, with nothing written, where the kernel cannot take it (float32 weights only: no master copies) or
        on a sharded step (the estimate needs every shard's sums: ``_apply``'s two calls)."""
        if self.norm_sum_reducer is not None or not weights:
            return False
        beta3, bias_correction = self._begin_step()
        hyper = [self.beta1, self.beta2, beta3, self.epsilon, self.d, self.d0, self.d_max, self.d_numerator,
                 self.d_coef, self.growth_rate, bias_correction, float(self.safeguard_warmup), float(self.decouple),
                 self.rescale_grad, self._native_clip()]
        results = self.__dict__.get("_native_results")
        if results is None:  # [stepped, d, d_max, d_numerator], written by the kernel (kept: no allocation per step)
            results = self.__dict__["_native_results"] = torch.zeros(4, dtype=torch.float64)
        with native_positions(indices):  # the core names bad tensors by position: name the parameters
            done = native.load().step_into(self._native_kernel(), weights, grads, states, lrs, wds, ts, hyper, False,
                                           None, results)
        if not done:
            return False
        stepped, d, d_max, d_numerator = results.tolist()
        if stepped:
            self.d, self.d_max, self.d_numerator, self.k = d, d_max, d_numerator, self.k + 1
        return True

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        raise NotImplementedError  # pragma: no cover - Prodigy's step spans all tensors: see _apply

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        self._apply(list(range(len(weights))), weights, grads, states, lrs, wds, ts, True)
