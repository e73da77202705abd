"""Schedule-Free AdamW and SGD (Defazio et al. 2024, "The Road Less Scheduled"), exact to ``schedulefree`` 1.4.

Schedule-Free keeps two sequences: ``z`` (the base optimizer's iterate, in the state) and ``x`` (the running
average of ``z``, the point to *evaluate*); the weight itself holds ``y = (1-beta)*z + beta*x`` during training,
where the gradient is taken. ``eval(weights, states)`` swaps the weights to ``x`` and ``train(weights, states)``
swaps them back; :class:`optzoo.Trainer` and :class:`optzoo.TorchOptimizer` have ``train()``/``eval()`` that do it
for their parameters. Stepping in eval mode raises: its gradients would be taken at the wrong point.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Optimizer, f32, f32s, register, rescale_clip, rescale_clip_foreach, state_class
from .reference_names import accepts_reference_names, split_tuple
from .validation import check_int, check_real

__all__ = ["ScheduleFreeAdamW", "ScheduleFreeAdamWState", "ScheduleFreeSGD", "ScheduleFreeSGDState",
           "schedulefree_adamw_foreach", "schedulefree_adamw_reference", "schedulefree_sgd_foreach",
           "schedulefree_sgd_reference"]


@state_class
class ScheduleFreeSGDState(NamedTuple):
    z: torch.Tensor


@state_class
class ScheduleFreeAdamWState(NamedTuple):
    z: torch.Tensor
    exp_avg_sq: torch.Tensor


def _interpolate_(y, z, direction, *, lr, ckp1, beta):
    """The shared end of both rules: ``y = lerp(y, z, ckp1) + lr*(beta*(1-ckp1) - 1)*d; z -= lr*d``."""
    y.lerp_(z, f32(ckp1))
    y.add_(direction, alpha=f32(lr * (beta * (1.0 - ckp1) - 1.0)))
    z.sub_(direction, alpha=f32(lr))


def _interpolate_foreach_(ys, zs, directions, *, lrs, ckp1s, beta):
    torch._foreach_lerp_(ys, zs, f32s(ckp1s))
    torch._foreach_add_(ys, torch._foreach_mul(directions, [f32(lr * (beta * (1.0 - c) - 1.0))
                                                            for lr, c in zip(lrs, ckp1s)]))
    torch._foreach_sub_(zs, torch._foreach_mul(directions, f32s(lrs)))


def schedulefree_sgd_reference(weight, grad, state: ScheduleFreeSGDState, *, lr, wd, ckp1, momentum, rescale_grad,
                               clip_gradient):
    """One tensor: ``d = clip(rg*grad) + wd*y``, then :func:`_interpolate_` with ``beta = momentum``."""
    d = rescale_clip(grad, rescale_grad, clip_gradient)
    if wd:
        d.add_(weight, alpha=f32(wd))
    _interpolate_(weight, state.z, d, lr=lr, ckp1=ckp1, beta=momentum)


def schedulefree_sgd_foreach(weights, grads, states, *, lrs, wds, ckp1s, momentum, rescale_grad, clip_gradient):
    ds = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    if any(wds):
        torch._foreach_add_(ds, torch._foreach_mul(weights, f32s(wds)))
    _interpolate_foreach_(weights, [s.z for s in states], ds, lrs=lrs, ckp1s=ckp1s, beta=momentum)


def schedulefree_adamw_reference(weight, grad, state: ScheduleFreeAdamWState, *, lr, wd, ckp1, bias_correction2,
                                 beta1, beta2, epsilon, rescale_grad, clip_gradient):
    """One tensor: ``v = b2*v + (1-b2)*g^2; d = g/(sqrt(v/bc2) + eps) + wd*y``, then :func:`_interpolate_`."""
    g = rescale_clip(grad, rescale_grad, clip_gradient)
    state.exp_avg_sq.mul_(f32(beta2)).addcmul_(g, g, value=f32(1.0 - beta2))
    denom = state.exp_avg_sq.div(f32(bias_correction2)).sqrt_().add_(f32(epsilon))
    d = g.div_(denom)
    if wd:
        d.add_(weight, alpha=f32(wd))
    _interpolate_(weight, state.z, d, lr=lr, ckp1=ckp1, beta=beta1)


def schedulefree_adamw_foreach(weights, grads, states, *, lrs, wds, ckp1s, bias_correction2s, beta1, beta2, epsilon,
                               rescale_grad, clip_gradient):
    gs = rescale_clip_foreach(grads, rescale_grad, clip_gradient)
    variances = [s.exp_avg_sq for s in states]
    torch._foreach_mul_(variances, f32(beta2))
    torch._foreach_addcmul_(variances, gs, gs, value=f32(1.0 - beta2))
    denoms = torch._foreach_div(variances, f32s(bias_correction2s))
    torch._foreach_sqrt_(denoms)
    torch._foreach_add_(denoms, f32(epsilon))
    torch._foreach_div_(gs, denoms)
    if any(wds):
        torch._foreach_add_(gs, torch._foreach_mul(weights, f32s(wds)))
    _interpolate_foreach_(weights, [s.z for s in states], gs, lrs=lrs, ckp1s=ckp1s, beta=beta1)


class _ScheduleFree(Optimizer):
    """The averaging weights, warmup, train/eval modes and their checkpointing, shared by both rules.

    Per parameter (index) the optimizer keeps the largest warmed-up rate seen, ``lr_max``, and the sum of the
    averaging weights ``t^r * lr_max^weight_lr_power``; the package keeps them per param group, which is the
    same when every parameter of a group steps together with the same rate.
    """

    sparse_support = "dense"

    def __init__(self, learning_rate=None, warmup_steps=0, r=0.0, weight_lr_power=2.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.r = check_real("r", r, 0.0)
        self.weight_lr_power = check_real("weight_lr_power", weight_lr_power, 0.0)
        self.train_mode = True
        self._lr_max: dict = {}
        self._weight_sum: dict = {}

    # ------------------------------------------------------------------ train / eval
    def _beta(self) -> float:
        raise NotImplementedError

    def _swap(self, weights, states, weight_fn, to_train: bool) -> None:
        if not isinstance(weights, (list, tuple)) or not isinstance(states, (list, tuple)) \
                or len(weights) != len(states):
            raise ValueError(f"{type(self).__name__}.{'train' if to_train else 'eval'} expects equally long lists "
                             "of weights and their states")
        if self.train_mode == to_train:
            return
        beta = self._beta()
        with torch.no_grad():
            for weight, state in zip(weights, states):
                if state is None:
                    continue
                master = state[0] if self._uses_master_copy(weight) else None
                inner = state[1] if master is not None else state
                target = master if master is not None else weight
                target.lerp_(inner.z.to(target.device), f32(weight_fn(beta)))
                if master is not None:
                    weight.copy_(master)
        self.train_mode = to_train

    def eval(self, weights, states) -> None:
        """Moves ``weights`` (training point ``y``) to the averaged point ``x``, where models are evaluated and
        saved: ``w = lerp(w, z, 1 - 1/beta)``. Idempotent."""
        self._swap(weights, states, lambda beta: 1.0 - 1.0 / beta, to_train=False)

    def train(self, weights, states) -> None:
        """Moves ``weights`` back from ``x`` to the training point: ``w = lerp(w, z, 1 - beta)``. Idempotent."""
        self._swap(weights, states, lambda beta: 1.0 - beta, to_train=True)

    # ------------------------------------------------------------------ averaging
    def _averaging(self, indices, lrs, ts):
        """Each tensor's ``(warmed-up lr, ckp1)`` and a ``commit`` that records the new ``lr_max``/weight sums."""
        lr_max, weight_sum = dict(self._lr_max), dict(self._weight_sum)
        out = []
        for index, lr, t in zip(indices, lrs, ts):
            k = t - 1
            sched = (k + 1) / self.warmup_steps if k < self.warmup_steps else 1.0
            lr = lr * sched
            top = lr_max[index] = max(lr, lr_max.get(index, -1.0))
            weight = ((k + 1) ** self.r) * (top ** self.weight_lr_power)
            total = weight_sum[index] = weight_sum.get(index, 0.0) + weight
            out.append((lr, weight / total if total != 0 else 0.0))

        def commit():
            self._lr_max, self._weight_sum = lr_max, weight_sum

        return out, commit

    def extra_state(self) -> dict:
        return {"train_mode": self.train_mode, "lr_max": [[k, v] for k, v in self._lr_max.items()],
                "weight_sum": [[k, v] for k, v in self._weight_sum.items()]}

    def load_extra_state(self, extra: dict) -> None:
        self.train_mode = bool(extra.get("train_mode", True))
        self._lr_max = {_key(k): float(v) for k, v in extra.get("lr_max", [])}
        self._weight_sum = {_key(k): float(v) for k, v in extra.get("weight_sum", [])}

    # ------------------------------------------------------------------ the step
    def _check_train_mode(self) -> None:
        if not self.train_mode:
            raise RuntimeError(f"{type(self).__name__} is in eval mode (its weights hold the averaged point x): "
                               "call train() (Trainer.train(), TorchOptimizer.train()) before the next step")

    def _update_count(self, index) -> None:
        self._check_train_mode()  # before anything moves, on every path
        super()._update_count(index)

    def _native_update(self, indices, weights, grads, states, multi_precision):
        self._check_train_mode()
        return super()._native_update(indices, weights, grads, states, multi_precision)

    def _native_aux(self, indices, lrs, ts):
        if not isinstance(lrs, (list, tuple)):
            lrs = [lrs] * len(indices)  # _native_update passes one rate when no multiplier exists
        coefficients, commit = self._averaging(indices, lrs, ts)
        return [x for lr_ckp1 in coefficients for x in lr_ckp1], commit

    def _apply(self, indices, weights, grads, states, lrs, wds, ts, fast):
        self._check_train_mode()
        grads = [g.to_dense() if g.is_sparse else g for g in grads]
        if fast and self.impl == "native" and self._native_call(indices, weights, grads, states, lrs, wds, ts, False):
            return
        coefficients, commit = self._averaging(indices, lrs, ts)
        with torch.no_grad():
            if fast:
                self._foreach_rule(weights, grads, states, [c[0] for c in coefficients], wds, ts,
                                   [c[1] for c in coefficients])
            else:
                for w, g, s, (lr, ckp1), wd, t in zip(weights, grads, states, coefficients, wds, ts):
                    self._reference_rule(w, g, s, lr, wd, t, ckp1)
        commit()


def _key(k):
    return k if isinstance(k, int) else str(k)


@register(name="schedulefree_sgd")
class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-Free SGD (exact to ``schedulefree.SGDScheduleFree``): momentum through interpolation and
    averaging instead of a momentum buffer, no learning-rate schedule needed.

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla f(y_{t-1}), \mathrm{clip\_gradient})
               + \lambda\, y_{t-1} \\
        \eta_t &= \eta\,\min(1, t/\mathrm{warmup\_steps}), \quad
        c_t = \frac{t^r\,(\max_{s\le t}\eta_s)^{p}}{\sum_{s\le t} s^r\,(\max_{u\le s}\eta_u)^{p}} \\
        y_t &= (1-c_t)\,y_{t-1} + c_t z_{t-1} + \eta_t\,(\beta(1-c_t) - 1)\, g_t \\
        z_t &= z_{t-1} - \eta_t\, g_t

    (:math:`p` = ``weight_lr_power``, :math:`\beta` = ``momentum``, :math:`z_0 = y_0` = the initial weight). The
    weight holds :math:`y`; the averaged point :math:`x = (y - (1-\beta) z)/\beta` that must be used for evaluation
    is reached with ``eval(weights, states)`` (``Trainer.eval()``, ``TorchOptimizer.eval()``) and left with
    ``train(...)``. optzoo starts in train mode (the package needs an explicit ``train()`` first; with no state
    yet it moves nothing, so the two agree).

    Args:
        learning_rate: default 1.0 (the package's); ``lr`` is accepted.
        momentum: the interpolation :math:`\beta` in (0, 1) (default 0.9).
        warmup_steps: linear warmup of the rate over this many updates (default 0).
        r: polynomial weighting power of the average (default 0).
        weight_lr_power: power of ``lr_max`` in the averaging weights (default 2).

    Example:
        >>> opt = ScheduleFreeSGD(learning_rate=1.0, momentum=0.9, warmup_steps=100)
    """

    default_learning_rate = 1.0
    native_rule = "schedulefree_sgd"

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd"})
    def __init__(self, learning_rate=None, momentum=0.9, warmup_steps=0, r=0.0, weight_lr_power=2.0, **kwargs):
        super().__init__(learning_rate=learning_rate, warmup_steps=warmup_steps, r=r,
                         weight_lr_power=weight_lr_power, **kwargs)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, low_open=True, high_open=True)

    def _beta(self) -> float:
        return self.momentum

    def create_state(self, index, weight):
        return ScheduleFreeSGDState(weight.detach().clone(memory_format=torch.contiguous_format))

    def _native_hyper(self):
        return [self.momentum, self.rescale_grad, self._native_clip()]

    def _hyper(self):
        return dict(momentum=self.momentum, rescale_grad=self.rescale_grad, clip_gradient=self.clip_gradient)

    def _reference_rule(self, weight, grad, state, lr, wd, t, ckp1):
        schedulefree_sgd_reference(weight, grad, state, lr=lr, wd=wd, ckp1=ckp1, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts, ckp1s):
        schedulefree_sgd_foreach(weights, grads, states, lrs=lrs, wds=wds, ckp1s=ckp1s, **self._hyper())


@register(name="schedulefree_adamw")
class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-Free AdamW (exact to ``schedulefree.AdamWScheduleFree``): the Schedule-Free interpolation and
    averaging of :class:`ScheduleFreeSGD` on an Adam-normalised gradient.

    .. math::
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        d_t &= g_t / (\sqrt{v_t/(1-\beta_2^t)} + \epsilon) + \lambda\, y_{t-1} \\
        y_t &= (1-c_t)\,y_{t-1} + c_t z_{t-1} + \eta_t\,(\beta_1(1-c_t) - 1)\, d_t \\
        z_t &= z_{t-1} - \eta_t\, d_t

    with :math:`g_t`, :math:`\eta_t` and :math:`c_t` as in :class:`ScheduleFreeSGD` (:math:`\beta_1` in the
    place of the momentum). Weight decay is applied at :math:`y` after the normalisation, as the package does.
    Evaluate with the averaged weights: ``eval(weights, states)`` / ``Trainer.eval()`` /
    ``TorchOptimizer.eval()``, and ``train(...)`` before the next step.

    Args:
        learning_rate: default 0.0025 (the package's); ``lr`` is accepted.
        beta1: interpolation/averaging :math:`\beta` in (0, 1) (default 0.9).
        beta2: second-moment decay (default 0.999); ``betas=(beta1, beta2)`` is accepted.
        epsilon: default 1e-8; ``eps`` is accepted.
        warmup_steps, r, weight_lr_power: as for :class:`ScheduleFreeSGD`.

    Example:
        >>> opt = ScheduleFreeAdamW(learning_rate=0.0025, warmup_steps=100, wd=0.01)
    """

    default_learning_rate = 0.0025
    native_rule = "schedulefree_adamw"

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "eps": "epsilon",
                              "betas": split_tuple("beta1", "beta2")})
    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, epsilon=1e-8, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, **kwargs):
        super().__init__(learning_rate=learning_rate, warmup_steps=warmup_steps, r=r,
                         weight_lr_power=weight_lr_power, **kwargs)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, low_open=True, high_open=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, high_open=True)
        self.epsilon = check_real("epsilon", epsilon, 0.0)

    def _beta(self) -> float:
        return self.beta1

    def create_state(self, index, weight):
        return ScheduleFreeAdamWState(weight.detach().clone(memory_format=torch.contiguous_format),
                                      self._zeros(weight))

    def _native_hyper(self):
        return [self.beta1, self.beta2, self.epsilon, self.rescale_grad, self._native_clip()]

    def _hyper(self):
        return dict(beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon, rescale_grad=self.rescale_grad,
                    clip_gradient=self.clip_gradient)

    def _reference_rule(self, weight, grad, state, lr, wd, t, ckp1):
        schedulefree_adamw_reference(weight, grad, state, lr=lr, wd=wd, ckp1=ckp1,
                                     bias_correction2=1.0 - self.beta2 ** t, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts, ckp1s):
        schedulefree_adamw_foreach(weights, grads, states, lrs=lrs, wds=wds, ckp1s=ckp1s,
                                   bias_correction2s=[1.0 - self.beta2 ** t for t in ts], **self._hyper())
