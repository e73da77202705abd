"""MXNet 1.x optimizers that MXNet 2.0 removed: ``ccSGD`` and ``LBSGD``, with MXNet 1.9.1's numerics.

They exist so that training code written for MXNet 1.9.1 can move to optzoo and keep computing the same
updates (MXNet's pickled optimizer states cannot be read). New code should use the modern optimizers named in
each class's docstring.

What differs from the modern (MXNet 2.0) classes, all as in MXNet 1.9.1:

* default learning rate 0.01, ``lazy_update=True``;
* the SGD kernel applies weight decay as ``(1 - lr*wd) * w`` and never clips it (2.0 writes
  ``w - lr*(clip(g) + wd*w)``, the same algebra rounded differently);
* with ``param_idx2name``, every parameter whose name does not end in ``_weight`` or ``_gamma`` gets
  ``wd_mult = 0`` (MXNet 1.9.1's base-class rule, removed in 2.0); explicit ``set_wd_mult`` entries win;
* ``LBSGD`` reads the learning rate (and so the scheduler) *before* counting the update.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Optimizer, f32, f32s, one_minus, register, rescale_clip, rescale_clip_foreach, state_class
from .trust_ratio import _norm_sums
from .validation import check_bool, check_choice, check_int, check_real

__all__ = [
    "LBSGD",
    "WARMUP_STRATEGIES",
    "LBSGDState",
    "LargeBatchSchedule",
    "ccSGD",
    "ccsgd_foreach",
    "ccsgd_reference",
    "lbsgd_foreach",
    "lbsgd_reference",
]

#: LBSGD's learning-rate multipliers: three warmup shapes and the layer-wise (LARS-like) ratio.
WARMUP_STRATEGIES = ("linear", "power2", "sqrt", "lars")


# ------------------------------------------------------------------------------------------ 1.9.1 SGD kernel
def _lr_grads(grad, lr, rescale_grad, clip_gradient):
    """``lr * clip(rg*grad)``; without clipping MXNet 1.9.1 folds ``lr*rg`` into one float32 scalar first."""
    if clip_gradient is None:
        return grad * f32(f32(lr) * f32(rescale_grad))
    return rescale_clip(grad, rescale_grad, clip_gradient).mul_(f32(lr))


def _decay_scalars(lr, wd):
    """``(1 - lr*wd, lr*wd)`` in float32, as the 1.9.1 kernels compute them."""
    lr_wd = f32(f32(lr) * f32(wd))
    return one_minus(lr_wd), lr_wd


def ccsgd_reference(weight, grad, mom, *, lr, wd, momentum, rescale_grad, clip_gradient):
    """One tensor, MXNet 1.9.1 ``sgd_update`` / ``sgd_mom_update`` (``g = clip(rg*grad)``, wd not clipped).

    ``mom is None``: ``w = (1 - lr*wd)*w - lr*g``; else ``mom = momentum*mom - lr*wd*w - lr*g; w += mom``.
    """
    step = _lr_grads(grad, lr, rescale_grad, clip_gradient)
    keep, lr_wd = _decay_scalars(lr, wd)
    if mom is None:
        weight.mul_(keep).sub_(step)
    else:
        mom.mul_(f32(momentum)).sub_(lr_wd * weight).sub_(step)
        weight.add_(mom)


def ccsgd_foreach(weights, grads, moms, *, lrs, wds, momentum, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`ccsgd_reference`."""
    if clip_gradient is None:
        steps = torch._foreach_mul(list(grads), [f32(f32(lr) * f32(rescale_grad)) for lr in lrs])
    else:
        steps = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
        torch._foreach_mul_(steps, f32s(lrs))
    keeps, lr_wds = zip(*(_decay_scalars(lr, wd) for lr, wd in zip(lrs, wds)))
    if moms is None:
        torch._foreach_mul_(weights, list(keeps))
        torch._foreach_sub_(weights, steps)
    else:
        torch._foreach_mul_(moms, f32(momentum))
        torch._foreach_sub_(moms, torch._foreach_mul(weights, list(lr_wds)))
        torch._foreach_sub_(moms, steps)
        torch._foreach_add_(weights, moms)


# ------------------------------------------------------------------------------------------ LBSGD pieces
def _sum_squares(x: torch.Tensor) -> float:
    """``sum(x*x)`` held in ``x``'s precision, as MXNet 1.9.1 sums ``multiply(x, x).asnumpy()``."""
    return float(torch.sum(x * x, dtype=torch.float64).to(x.dtype))


class LargeBatchSchedule(NamedTuple):
    """LBSGD's learning-rate multiplier schedule (MXNet 1.9.1 ``_get_lbmult`` / ``_get_lars``)."""

    warmup_strategy: str
    warmup_epochs: int
    updates_per_epoch: int
    batch_scale: int

    def multiplier(self, num_cums: int, weight: torch.Tensor, mean_grad: torch.Tensor, wd: float) -> float:
        """The factor applied to the learning rate of an update completed at micro-batch ``num_cums``."""
        if self.warmup_strategy == "lars":
            return self.lars(_sum_squares(weight), _sum_squares(mean_grad), wd)
        return self.warmup(num_cums)

    def warmup(self, nup: int) -> float:
        """Ramps from 1 to ``batch_scale`` over ``warmup_epochs * updates_per_epoch`` micro-batches."""
        nwup = self.warmup_epochs * self.updates_per_epoch
        maxmult = float(self.batch_scale)
        if nup >= nwup:
            return maxmult
        if nwup <= 1:
            return 1.0
        if self.warmup_strategy == "linear":
            return 1.0 + (maxmult - 1) * nup / nwup
        if self.warmup_strategy == "power2":
            return 1.0 + (maxmult - 1) * (nup * nup) / (nwup * nwup)
        return 1.0 + (maxmult - 1) * math.sqrt(float(nup) / nwup)  # "sqrt"

    @staticmethod
    def lars(weight2: float, grad2: float, wd: float) -> float:
        """``sqrt(|w|^2 / (|g|^2 + wd*|w|^2 + 1e-18))`` clamped to [0.01, 100] (squared norms given)."""
        ratio = math.sqrt(weight2 / (grad2 + wd * weight2 + 1e-18))
        return min(max(ratio, 0.01), 100.0)


@state_class
class LBSGDState(NamedTuple):
    """LBSGD's per-parameter state: the momentum (``None`` when ``momentum == 0``) and the gradient sum of
    the macro-batch in progress (``None`` when ``batch_scale == 1``, where nothing is carried over).

    The micro-batch counter MXNet keeps next to ``cum_grad`` is not stored: it always equals
    ``begin_epoch*updates_per_epoch + (t - begin_num_update)`` for the parameter's update count ``t``,
    which the optimizer already keeps (and checkpoints) per parameter.
    """

    momentum: torch.Tensor | None
    cum_grad: torch.Tensor | None


def _mean_grad(grad, cum_grad, num_cums, batch_scale):
    """Adds ``grad`` to the macro-batch sum; the macro-batch mean once ``num_cums`` completes it, else None."""
    if cum_grad is None:  # batch_scale == 1: every micro-batch is a whole batch
        return grad
    cum_grad.add_(grad)
    if num_cums % batch_scale:
        return None
    mean = cum_grad / batch_scale
    cum_grad.zero_()
    return mean


def lbsgd_reference(
    weight,
    grad,
    state: LBSGDState,
    *,
    lr,
    wd,
    num_cums,
    schedule: LargeBatchSchedule,
    momentum,
    rescale_grad,
    clip_gradient,
):
    """One tensor: accumulate ``grad``; when ``num_cums`` completes a macro-batch, run :func:`ccsgd_reference`
    on the mean gradient with ``lr * schedule.multiplier(...)``. Between completions the weight is unchanged."""
    mean = _mean_grad(grad, state.cum_grad, num_cums, schedule.batch_scale)
    if mean is None:
        return
    lr = lr * schedule.multiplier(num_cums, weight, mean, wd)
    ccsgd_reference(
        weight,
        mean,
        state.momentum,
        lr=lr,
        wd=wd,
        momentum=momentum,
        rescale_grad=rescale_grad,
        clip_gradient=clip_gradient,
    )


def lbsgd_foreach(
    weights,
    grads,
    states,
    *,
    lrs,
    wds,
    num_cums,
    schedule: LargeBatchSchedule,
    momentum,
    rescale_grad,
    clip_gradient,
    reduce_sums=None,
):
    """All tensors at once; the same arithmetic as :func:`lbsgd_reference` (``reduce_sums``: a sharded step's
    reduction of the ``'lars'`` ratio's sums of squares, see ``trust_ratio._tensor_norms``)."""
    batch_scale = schedule.batch_scale
    if batch_scale > 1:
        cums = [s.cum_grad for s in states]
        torch._foreach_add_(cums, list(grads))
        ready = [k for k, n in enumerate(num_cums) if n % batch_scale == 0]
        if not ready:
            return
        means = torch._foreach_div([cums[k] for k in ready], float(batch_scale))
        torch._foreach_zero_([cums[k] for k in ready])
    else:
        ready = list(range(len(weights)))
        means = list(grads)
    ws = [weights[k] for k in ready]
    if reduce_sums is not None and schedule.warmup_strategy == "lars":
        sums = reduce_sums(_norm_sums([*ws, *means]).view(2, len(ws)), ws)
        squares = [(float(sums[0, j].to(w.dtype)), float(sums[1, j].to(w.dtype))) for j, w in enumerate(ws)]
        ws_lrs = [lrs[k] * schedule.lars(w2, g2, wds[k]) for k, (w2, g2) in zip(ready, squares)]
    else:
        ws_lrs = [lrs[k] * schedule.multiplier(num_cums[k], w, g, wds[k]) for k, w, g in zip(ready, ws, means)]
    moms = None if momentum == 0.0 else [states[k].momentum for k in ready]
    ccsgd_foreach(
        ws,
        means,
        moms,
        lrs=ws_lrs,
        wds=[wds[k] for k in ready],
        momentum=momentum,
        rescale_grad=rescale_grad,
        clip_gradient=clip_gradient,
    )


def _rows_and_values(grad):
    """Row ids and values of a (coalesced) sparse gradient, duplicate rows summed."""
    grad = grad.coalesce()
    if grad.sparse_dim() != 1:
        rows = torch.unique(grad.indices()[0])
        return rows, grad.to_dense().index_select(0, rows)
    return grad.indices()[0], grad.values()


# ------------------------------------------------------------------------------------------ classes
class _Legacy19Optimizer(Optimizer):
    """MXNet 1.9.1's base-class differences that these optimizers keep (defaults and the wd name rule)."""

    default_learning_rate = 0.01

    def __init__(self, learning_rate=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.set_wd_mult({})

    def set_wd_mult(self, args_wd_mult: dict) -> None:
        """As MXNet 1.9.1: names from ``param_idx2name`` that do not end in ``_weight``/``_gamma`` get
        ``wd_mult = 0`` (biases, BatchNorm betas, ...); entries of ``args_wd_mult`` override that."""
        mults = self._check_mults("set_wd_mult", args_wd_mult)
        rule = {
            name: 0.0
            for name in self.idx2name.values()
            if isinstance(name, str) and not name.endswith(("_weight", "_gamma"))
        }
        self.wd_mult = {**rule, **mults}


@register
class ccSGD(_Legacy19Optimizer):  # MXNet 1.x spells the registered class this way
    r"""[LEGACY: MXNet 1.x, removed in MXNet 2.0] SGD with MXNet 1.9.1's defaults and kernel (``ccsgd``).

    MXNet 1.x kept ``ccSGD`` as a deprecated alias of its ``SGD``; optzoo keeps it so that 1.x code
    (``create('ccsgd')``) runs unchanged and trains exactly as it did on MXNet 1.9.1.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        \text{momentum} = 0:&\quad w_t = (1 - \eta\,\mathrm{wd})\, w_{t-1} - \eta\, g_t \\
        \text{otherwise}:&\quad m_t = \mu\, m_{t-1} - \eta\,\mathrm{wd}\, w_{t-1} - \eta\, g_t,
            \qquad w_t = w_{t-1} + m_t

    Migrating: ``optzoo.optimizer.SGD(learning_rate=0.01, momentum=..., lazy_update=True)`` is the modern
    equivalent; it computes the same update (``w - lr*(g + wd*w)``, rounded differently in the last bit)
    and defaults to ``learning_rate=0.1, lazy_update=False``. Unlike ``SGD``, ``ccSGD`` also applies
    MXNet 1.9.1's ``param_idx2name`` weight-decay rule (see :mod:`optzoo.optimizer.legacy`).
    Compatibility with ``torch.optim.SGD``: the learning rate lives inside the momentum buffer.

    Args:
        learning_rate: step size (default 0.01, MXNet 1.9.1's).
        momentum: momentum coefficient ``mu`` in [0, 1); 0 means no state.
        lazy_update: with a row-sparse gradient, update only the rows present in it (default True, as 1.9.1).

    Example:
        >>> opt = ccSGD(momentum=0.9, wd=1e-4)

    References:
        MXNet 1.9.1 ``python/mxnet/optimizer/optimizer.py`` (``SGD``, ``ccSGD``), ``sgd_update``/``sgd_mom_update``.
    """

    sparse_support = "lazy"
    native_rule = "ccsgd"

    def __init__(self, learning_rate=None, momentum=0.0, lazy_update=True, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.lazy_update = check_bool("lazy_update", lazy_update)

    def create_state(self, index, weight):
        return self._zeros(weight) if self.momentum != 0.0 else None

    def _hyper(self) -> dict:
        return {
            "momentum": self.momentum,
            "rescale_grad": self.rescale_grad,
            "clip_gradient": self.clip_gradient,
        }

    def _native_hyper(self):
        return [self.momentum, self.rescale_grad, self._native_clip()]

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        ccsgd_reference(weight, grad, state, lr=lr, wd=wd, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        moms = None if self.momentum == 0.0 else states
        ccsgd_foreach(weights, grads, moms, lrs=lrs, wds=wds, **self._hyper())


@register
class LBSGD(_Legacy19Optimizer):
    r"""[LEGACY: MXNet 1.x, removed in MXNet 2.0] Large-batch SGD: gradient accumulation plus a learning-rate
    warmup towards ``batch_scale * lr`` (MXNet 1.9.1 ``lbsgd``).

    Every call is one micro-batch. Gradients are summed per parameter; every ``batch_scale``-th micro-batch
    (counted from ``begin_epoch * updates_per_epoch``) the mean gradient goes through MXNet 1.9.1's SGD
    kernel with the learning rate multiplied by :math:`\rho`; in between the weight does not change.

    .. math::
        n &= \mathrm{begin\_epoch}\cdot\mathrm{updates\_per\_epoch} + (\text{calls so far}),\qquad
        N = \mathrm{warmup\_epochs}\cdot\mathrm{updates\_per\_epoch},\qquad B = \mathrm{batch\_scale} \\
        \bar g &= \tfrac1B \textstyle\sum_{\text{macro-batch}} \nabla,\qquad
        g = \mathrm{clip}(\mathrm{rescale\_grad}\cdot\bar g, \mathrm{clip\_gradient}) \\
        \rho &= \begin{cases} B & n \ge N \\ 1 & N \le 1 \\
            1 + (B-1)\,n/N \;|\; 1 + (B-1)\,n^2/N^2 \;|\; 1 + (B-1)\sqrt{n/N} &
            \text{linear | power2 | sqrt} \end{cases} \\
        \rho_{\text{lars}} &= \mathrm{clamp}\Big(\sqrt{\|w\|^2 / (\|\bar g\|^2 + \mathrm{wd}\,\|w\|^2
            + 10^{-18})},\ 0.01,\ 100\Big) \\
        \text{then}&\quad m = \mu\, m - \rho\eta\,\mathrm{wd}\, w - \rho\eta\, g,\quad w = w + m
        \qquad(\mu = 0:\ w = (1-\rho\eta\,\mathrm{wd})\,w - \rho\eta\, g)

    Quirk kept from MXNet 1.9.1: the learning rate is read *before* the update is counted, so a scheduler
    sees the previous ``num_update`` (one step behind every other optimizer) for the first parameter of a
    step. The scheduler, the warmup and ``t`` all count micro-batches. (Through
    :class:`optzoo.TorchOptimizer`, which owns the learning rate, a scheduler is read after counting.)
    Unlike MXNet 1.9.1, the first gradient of a run is copied into the sum rather than kept by reference,
    so a gradient buffer that the caller reuses in place is not counted twice.

    Migrating: for new code, accumulate gradients in the training loop (or ``grad_req='add'``) and use
    ``optzoo.optimizer.SGD(momentum=...)`` with a warmup scheduler from :mod:`optzoo.lr_scheduler`
    (``warmup_steps``/``warmup_begin_lr``) ramping to ``batch_scale * learning_rate``;
    ``warmup_strategy='lars'`` corresponds most closely to ``optzoo.optimizer.LARS`` (whose trust ratio is
    ``eta*|w|/(|g| + wd*|w| + eps)``, not this clamped square-root ratio). Compatibility with
    ``torch.optim.SGD``: the learning rate lives inside the momentum buffer.

    Args:
        learning_rate: base step size (default 0.01).
        momentum: momentum coefficient ``mu`` in [0, 1); 0 means no momentum state.
        warmup_strategy: ``'linear'``, ``'power2'``, ``'sqrt'`` (ramps ``rho`` from 1 to ``batch_scale``) or
            ``'lars'`` (a per-layer ratio of norms, no warmup).
        warmup_epochs: epochs of warmup; with ``updates_per_epoch`` gives ``N`` in micro-batches.
        batch_scale: micro-batches per update ``B`` (>= 1), also the final learning-rate multiplier.
        updates_per_epoch: micro-batches per epoch, used only to place the warmup.
        begin_epoch: epoch to resume from (the warmup continues from ``begin_epoch * updates_per_epoch``).
        num_epochs: accepted and stored for MXNet compatibility; MXNet 1.9.1 does not use it either.
        lazy_update: optzoo addition, default True (what MXNet 1.9.1 always does): a row-sparse gradient
            updates only its rows (their momentum and weight decay too); False densifies it first.
            With ``batch_scale > 1`` row-sparse gradients need ``lazy_update=False``.

    Example:
        >>> opt = LBSGD(learning_rate=0.1, momentum=0.9, batch_scale=4, warmup_epochs=2, updates_per_epoch=100)

    References:
        MXNet 1.9.1 ``python/mxnet/optimizer/optimizer.py`` (``LBSGD``); Goyal et al., "Accurate, Large
        Minibatch SGD" (2017); You et al., "Large Batch Training of Convolutional Networks" (2017).
    """

    sparse_support = "lazy"
    native_rule = "lbsgd"

    def __init__(
        self,
        learning_rate=None,
        momentum=0.0,
        warmup_strategy="linear",
        warmup_epochs=5,
        batch_scale=1,
        updates_per_epoch=32,
        begin_epoch=0,
        num_epochs=60,
        lazy_update=True,
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        if not isinstance(warmup_strategy, str):
            raise TypeError(
                f"warmup_strategy must be a string, got {warmup_strategy!r} of type "
                f"{type(warmup_strategy).__name__}"
            )
        self.warmup_strategy = check_choice("warmup_strategy", warmup_strategy, WARMUP_STRATEGIES)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.batch_scale = check_int("batch_scale", batch_scale, 1)
        self.updates_per_epoch = check_int("updates_per_epoch", updates_per_epoch, 1)
        self.begin_epoch = check_int("begin_epoch", begin_epoch, 0)
        self.num_epochs = check_int("num_epochs", num_epochs, 0)
        self.lazy_update = check_bool("lazy_update", lazy_update)

    @property
    def uses_tensor_norms(self) -> bool:  # the 'lars' multiplier reads whole-tensor norms
        return self.warmup_strategy == "lars"

    @property
    def schedule(self) -> LargeBatchSchedule:
        return LargeBatchSchedule(
            self.warmup_strategy, self.warmup_epochs, self.updates_per_epoch, self.batch_scale
        )

    def create_state(self, index, weight):
        return LBSGDState(
            self._zeros(weight) if self.momentum != 0.0 else None,
            self._zeros(weight) if self.batch_scale > 1 else None,
        )

    def _num_cums(self, t: int) -> int:
        """MXNet's per-parameter micro-batch counter, from the parameter's update count ``t``."""
        return self.begin_epoch * self.updates_per_epoch + t - self.begin_num_update

    def _hyper(self) -> dict:
        return {
            "schedule": self.schedule,
            "momentum": self.momentum,
            "rescale_grad": self.rescale_grad,
            "clip_gradient": self.clip_gradient,
        }

    def _run(self, indices, weights, grads, states, fast: bool) -> None:
        # MXNet 1.9.1 LBSGD.update reads lr and wd, then counts (spec 11.13): the scheduler sees num_update
        # before this parameter's count, i.e. one behind for the first parameter of each step.
        lrs, wds, ts = [], [], []
        for index in indices:
            lrs += self._get_lrs([index])
            wds += self._get_wds([index])
            self._update_count([index])
            ts.append(self._index_update_count[index])
        self._apply(indices, weights, grads, states, lrs, wds, ts, fast)

    def _check_pair(self, weight, grad) -> None:
        super()._check_pair(weight, grad)
        if grad.is_sparse and self.lazy_update and self.batch_scale > 1:
            raise ValueError(
                "LBSGD with batch_scale > 1 and lazy_update=True cannot take a row-sparse gradient "
                "(the macro-batch's row set is not tracked); pass lazy_update=False or "
                "grad.to_dense()"
            )

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        lbsgd_reference(weight, grad, state, lr=lr, wd=wd, num_cums=self._num_cums(t), **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        lbsgd_foreach(
            weights,
            grads,
            states,
            lrs=lrs,
            wds=wds,
            num_cums=[self._num_cums(t) for t in ts],
            reduce_sums=self.norm_sum_reducer,
            **self._hyper(),
        )

    # native kernel: rules_legacy.cpp's "lbsgd" (the lars ratio's norms are computed there, in a first pass)
    def _native_hyper(self):
        return [
            self.momentum,
            self.rescale_grad,
            self._native_clip(),
            float(self.batch_scale),
            1.0 if self.warmup_strategy == "lars" else 0.0,
        ]

    def _native_aux(self, indices, lrs, ts):
        """Per tensor ``[ready, multiplier]``: whether this micro-batch completes the tensor's macro-batch, and
        the warmup's learning-rate multiplier (unused with ``'lars'``, whose ratio needs the norms)."""
        schedule, aux = self.schedule, []
        lars = self.warmup_strategy == "lars"
        for t in ts:
            num_cums = self._num_cums(t)
            ready = num_cums % self.batch_scale == 0
            aux += (1.0 if ready else 0.0, schedule.warmup(num_cums) if ready and not lars else 1.0)
        return aux, None

    def _native_update(self, indices, weights, grads, states, multi_precision: bool) -> bool:
        # The one-call path reads the scheduler after counting; LBSGD reads it before each parameter's count
        # (see _run), so with a scheduler the step goes through _run, whose _apply still calls the kernel.
        if self.lr_scheduler is not None:
            return False
        return super()._native_update(indices, weights, grads, states, multi_precision)

    def _lazy_update(self, index, weight, grad, state, lr, wd, t) -> None:
        """Row-sparse gradient with ``batch_scale == 1``: the rows present are updated; as in MXNet 1.9.1 the
        ``'lars'`` ratio uses the whole weight's norm and the gradient's present rows."""
        rows, values = _rows_and_values(grad)
        lr = lr * self.schedule.multiplier(self._num_cums(t), weight, values, wd)
        if rows.numel() == 0:
            return
        sub_weight = weight.index_select(0, rows)
        sub_mom = None if state.momentum is None else state.momentum.index_select(0, rows)
        ccsgd_reference(
            sub_weight,
            values,
            sub_mom,
            lr=lr,
            wd=wd,
            momentum=self.momentum,
            rescale_grad=self.rescale_grad,
            clip_gradient=self.clip_gradient,
        )
        weight.index_copy_(0, rows, sub_weight)
        if sub_mom is not None:
            state.momentum.index_copy_(0, rows, sub_mom)
