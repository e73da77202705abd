"""SGLD: stochastic gradient Langevin dynamics (MXNet 2.0 ``sgld``): half a gradient step plus Gaussian noise."""

from __future__ import annotations

import base64
import binascii
import math

import torch

from .. import native
from ..serialization import CheckpointError
from .base import Optimizer, decayed_grads_foreach, f32, register, rescale_clip
from .input_checks import check_no_shared_memory, native_positions
from .validation import check_int

__all__ = ["SGLD", "sgld_foreach", "sgld_noise", "sgld_reference"]


def sgld_noise(weight: torch.Tensor, lr: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise ``N(0, lr)`` (standard deviation ``sqrt(lr)``) shaped like ``weight``, in its dtype and on its device.

    Standard normal float32 values are drawn from ``generator`` on the generator's device (torch's default
    generator of ``weight``'s device when ``None``), scaled by ``float32(sqrt(lr))`` and then cast and moved.
    Drawing in float32 whatever the weight's dtype makes one seed give one noise sequence for float16,
    float32 and float64 weights alike.
    """
    device = weight.device if generator is None else generator.device
    z = torch.randn(weight.shape, generator=generator, dtype=torch.float32, device=device)
    z.mul_(f32(math.sqrt(lr)))
    return z.to(device=weight.device, dtype=weight.dtype)


def sgld_reference(weight, grad, noise, *, lr, wd, rescale_grad, clip_gradient):
    """One tensor: ``g = clip(rg*grad) + wd*w``; ``w -= lr/2 * g``; ``w += noise``."""
    g = rescale_clip(grad, rescale_grad, clip_gradient) + f32(wd) * weight
    weight.sub_(f32(lr / 2) * g)
    weight.add_(noise)


def sgld_foreach(weights, grads, noises, *, lrs, wds, rescale_grad, clip_gradient):
    """All tensors at once; the same arithmetic as :func:`sgld_reference`."""
    gs = decayed_grads_foreach(weights, grads, wds, rescale_grad, clip_gradient)
    torch._foreach_mul_(gs, [f32(lr / 2) for lr in lrs])
    torch._foreach_sub_(weights, gs)
    torch._foreach_add_(weights, noises)


def _generator_to_json(generator: torch.Generator) -> dict:
    state = generator.get_state().numpy().tobytes()
    return {"device": str(generator.device), "state": base64.b64encode(state).decode("ascii")}


def _generator_from_json(raw) -> torch.Generator:
    try:
        state = torch.frombuffer(bytearray(base64.b64decode(raw["state"], validate=True)), dtype=torch.uint8)
        generator = torch.Generator(device=raw["device"])
        generator.set_state(state)
    except (KeyError, TypeError, ValueError, binascii.Error, RuntimeError) as err:
        raise CheckpointError(f"SGLD: bad random generator state in checkpoint: {err}") from None
    return generator


@register
class SGLD(Optimizer):
    r"""Stochastic gradient Langevin dynamics (MXNet 2.0 ``sgld``).

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) + \mathrm{wd}\cdot w_{t-1} \\
        w_t &= w_{t-1} - \tfrac{\eta}{2}\, g_t + \varepsilon_t,\qquad \varepsilon_t \sim \mathcal{N}(0,\ \eta)

    The noise has variance ``eta`` (standard deviation ``sqrt(eta)``), where ``eta`` is the parameter's
    learning rate including ``lr_mult`` and the scheduler; it is drawn independently for every element
    and update. Run long enough with a decaying learning rate, the iterates sample from the posterior
    ``p(w) ∝ exp(-loss(w))`` (Welling & Teh, 2011) rather than converge to its mode.

    Compatibility: there is no torch.optim equivalent. The half step ``eta/2`` and the noise variance
    ``eta`` follow Welling & Teh's parametrisation and MXNet. MXNet draws the noise from its own
    random generator, which optzoo cannot reproduce: only the deterministic part matches MXNet exactly.
    MXNet rescales the caller's gradient in place; optzoo never modifies it. MXNet has no fused path
    (``use_fused_step`` defaults to False there); optzoo's fast path adds exactly the same noise as its
    readable path, so both give identical results for the same generator state.

    Randomness: ``generator=None`` and ``seed=None`` draw from torch's default generator of each weight's
    device (``torch.manual_seed`` makes a run reproducible). ``seed`` gives the optimizer its own CPU
    generator (reproducible whatever the device; weights elsewhere receive the noise by copy).
    ``generator`` uses the caller's ``torch.Generator`` (noise drawn on its device), and the
    ``generator`` attribute may be replaced at any time. Checkpoints (``Updater.get_states(dump_optimizer=True)``,
    ``TorchOptimizer.state_dict``) store ``seed`` and the current state of a seeded or given generator,
    so a restored optimizer continues the same noise sequence from a private generator; a
    ``torch.Generator`` object itself is never saved. The default generator is the caller's to save
    (``torch.get_rng_state``).

    Args:
        learning_rate: step size and noise variance (default 0.1; MXNet's docstring says 0.001, its code uses 0.1).
        generator: a ``torch.Generator`` for the noise, or ``None``.
        seed: an integer in ``[0, 2**64)`` seeding a private generator (exclusive with ``generator``), or ``None``.

    Example:
        >>> opt = SGLD(learning_rate=1e-3, wd=1e-4, seed=0)

    References:
        Welling & Teh, "Bayesian Learning via Stochastic Gradient Langevin Dynamics", ICML 2011.
        Patterson & Teh, "Stochastic Gradient Riemannian Langevin Dynamics on the Probability Simplex", NeurIPS 2013.
    """

    default_learning_rate = 0.1
    sparse_support = "dense"
    native_rule = "sgld"

    def __init__(self, learning_rate=None, generator=None, seed=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        seed = check_int("seed", seed, 0, 2**64 - 1, allow_none=True)
        self.generator = generator
        if seed is not None:
            if generator is not None:
                raise ValueError("SGLD: pass either generator or seed, not both")
            self._generator = torch.Generator().manual_seed(seed)
        self.seed = seed

    @property
    def generator(self) -> torch.Generator | None:
        """The ``torch.Generator`` the noise is drawn from (``None``: torch's default generator)."""
        return self._generator

    @generator.setter
    def generator(self, generator: torch.Generator | None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r} of type "
                            f"{type(generator).__name__}")
        self._generator = generator
        self.seed = None  # the seed no longer describes where the noise comes from

    def get_config(self) -> dict:
        """As :meth:`Optimizer.get_config`, without ``generator`` (not JSON-able; see :meth:`extra_state`)."""
        config = super().get_config()
        del config["generator"]
        return config

    def extra_state(self) -> dict:
        """The seeded or given generator's state (JSON), so that a restored optimizer continues its noise."""
        return {} if self._generator is None else {"generator": _generator_to_json(self._generator)}

    def load_extra_state(self, extra: dict) -> None:
        if extra.get("generator") is not None:
            self._generator = _generator_from_json(extra["generator"])

    #: set by :mod:`optzoo.sharding` for a step on local shards: ``{id(local shard): (global shape, first row)}``
    shard_rows: dict | None = None

    def _noise(self, weights, lrs) -> list[torch.Tensor]:
        """The noise of one update, one tensor per weight in order. Both paths draw through here, so they add
        identical noise for the same generator state (tests override it to inject MXNet's noise). A local
        shard gets its rows of the whole tensor's noise, so a sharded run adds the unsharded run's noise."""
        rows = self.shard_rows or {}
        noises = []
        for w, lr in zip(weights, lrs):
            where = rows.get(id(w))
            if where is None:
                noises.append(sgld_noise(w, lr, self._generator))
            else:
                shape, start = where
                whole = sgld_noise(w.new_empty(()).expand(shape), lr, self._generator)
                noises.append(whole.narrow(0, start, w.shape[0]))
        return noises

    def _hyper(self):
        return {"rescale_grad": self.rescale_grad, "clip_gradient": self.clip_gradient}

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        sgld_reference(weight, grad, self._noise([weight], [lr])[0], lr=lr, wd=wd, **self._hyper())

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        sgld_foreach(weights, grads, self._noise(weights, lrs), lrs=lrs, wds=wds, **self._hyper())

    # ------------------------------------------------------------------ native kernel (rules_legacy.cpp "sgld")
    def _native_hyper(self):
        return [self.rescale_grad, self._native_clip()]

    @staticmethod
    def _native_target(weight, grad, state, multi_precision: bool):
        """The float32 tensor the kernel updates for this weight (the master copy under multi-precision), or
        None when the kernel would not take the pair: checked before any noise is drawn."""
        def plain(t, dtype, shape):
            return (isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type == "cpu"
                    and t.dtype == dtype and t.shape == shape and t.is_contiguous() and not t.is_neg()
                    and not t.is_conj())

        if not isinstance(weight, torch.Tensor) or not plain(grad, weight.dtype, weight.shape):
            return None
        if weight.dtype == torch.float32:
            return weight if plain(weight, torch.float32, weight.shape) else None
        if (multi_precision and weight.dtype in (torch.float16, torch.bfloat16)
                and plain(weight, weight.dtype, weight.shape) and isinstance(state, tuple) and len(state) == 2
                and plain(state[0], torch.float32, weight.shape)):
            return state[0]
        return None

    def _native_call(self, indices, weights, grads, states, lrs, wds, ts, multi_precision: bool) -> bool:
        """One tensor at a time: draw its noise through :meth:`_noise` (as both Python paths do, in the same
        order), then one kernel call with the noise as its read-only state, so at most one tensor's noise exists
        at a time. Every tensor is checked before the first draw: a declined step draws nothing."""
        n = len(weights)
        lrs = list(lrs) if isinstance(lrs, (list, tuple)) else [lrs] * n
        wds = list(wds) if isinstance(wds, (list, tuple)) else [wds] * n
        ts = list(ts) if isinstance(ts, (list, tuple)) else [ts] * n
        if not (len(grads) == len(states) == len(lrs) == len(wds) == len(ts) == n):
            return False
        check_no_shared_memory(indices, weights, grads, states)  # tensor by tensor: overlaps are checked here
        targets = [self._native_target(w, g, s, multi_precision) for w, g, s in zip(weights, grads, states)]
        if any(target is None for target in targets):
            return False
        step, hyper = native.load().step, self._native_hyper()
        for index, w, g, target, lr, wd, t in zip(indices, weights, grads, targets, lrs, wds, ts):
            noise = self._noise([target], [lr])[0]
            state = noise if target is w else (target, noise)
            with native_positions([index]):
                done = step(self._native_kernel(), [w], [g], [state], lr, wd, t, hyper, multi_precision, None)
            if not done:
                with torch.no_grad():  # e.g. a noise tensor from an overridden _noise: the Python rule
                    sgld_reference(target, g.to(torch.float32), noise, lr=lr, wd=wd, **self._hyper())
                    if target is not w:
                        w.copy_(target)
        return True
