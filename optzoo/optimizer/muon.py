r"""Muon: momentum orthogonalised by a Newton–Schulz iteration, for the hidden 2-D weights of a network, with an
AdamW side for everything else; exact to ``torch.optim.Muon`` (and ``torch.optim.AdamW`` for the AdamW side).

Which parameters Muon takes is decided once per parameter, when its state is created, and recorded in the state's
type (:class:`MuonState` or :class:`MuonAdamWState`), so a checkpoint keeps the split. In order:

1. an explicit ``use_muon`` attribute, on the tensor (``p.use_muon = False``, as Gluon's ``lr_mult``) or on the
   optimizer's ``param_dict`` entry (the Trainer's parameters);
2. ``adamw_params``: indices or names (``param_idx2name``) that go to AdamW;
3. names that mark embeddings and output heads (``param_idx2name``: a name containing ``embed``, or a
   ``head``/``lm_head``/``classifier`` component) go to AdamW;
4. otherwise 2-D weights go to Muon, everything else (biases, norms' gains, scalars, convolution kernels) to AdamW.

:func:`label_params` sets rule 1's attribute on a module's parameters (embeddings and the last linear layer to
AdamW). A 0-D or 1-D parameter forced to Muon is an error (there is no matrix to orthogonalise); a weight of more
than two dimensions forced to Muon is flattened to ``(shape[0], -1)``, as Keller Jordan's implementation does
for convolution kernels.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import torch

from .. import native
from .base import Optimizer, register, rescale_clip, rescale_clip_readonly_foreach, state_class
from .reference_names import accepts_reference_names
from .validation import check_bool, check_choice, check_int, check_real
from .workspace import Workspace, workspace_of

__all__ = ["Muon", "MuonAdamWState", "MuonState", "label_params", "newton_schulz", "newton_schulz_batched",
           "newton_schulz_in_workspace", "ns_input_buffer"]

#: Keller Jordan's quintic coefficients (torch.optim.Muon's defaults)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = ("original", "match_rms_adamw", "none")
#: AdamW-side tensors this large are stepped one at a time on the fast path (torch's parallel grain size)
ADAMW_ONE_BY_ONE = 32768
#: Muon matrices this large take their Newton-Schulz products into the workspace on the fast path (smaller ones:
#: the allocating calls cost less than the buffers' bookkeeping)
NS_IN_WORKSPACE = 32768
_ADAMW_NAME = re.compile(r"embed|(^|[._/])(lm_head|head|classifier)([._/]|$)", re.IGNORECASE)


@state_class
class MuonState(NamedTuple):
    momentum: torch.Tensor


@state_class
class MuonAdamWState(NamedTuple):
    """A parameter on Muon's AdamW side."""

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor


def label_params(module: torch.nn.Module, head: torch.nn.Module | None = None) -> dict[str, bool]:
    """Sets ``use_muon`` on every parameter of ``module`` by the usual recipe and returns ``{name: use_muon}``:
    embedding tables and the output head (``head``, default the last ``nn.Linear``) go to AdamW, other 2-D weights
    to Muon, everything else to AdamW."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"label_params expects a torch.nn.Module, got {type(module).__name__}")
    if head is None:
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        head = linears[-1] if linears else None
    adamw = {id(p) for m in module.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
             for p in m.parameters(recurse=False)}
    if head is not None:
        adamw |= {id(p) for p in head.parameters()}
    labels = {}
    for name, p in module.named_parameters():
        p.use_muon = p.dim() == 2 and id(p) not in adamw
        labels[name] = p.use_muon
    return labels


def _adjusted_lr(lr: float, adjust_lr_fn: str, shape) -> float:
    """torch.optim.Muon's rate for a ``(A, B)`` matrix: ``lr*sqrt(max(1, A/B))`` ("original", Keller Jordan) or
    ``lr*0.2*sqrt(max(A, B))`` ("match_rms_adamw", Moonshot), or ``lr`` ("none")."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * (0.2 * math.sqrt(max(rows, cols)))
    return lr


def newton_schulz(update: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """``steps`` quintic Newton–Schulz iterations towards the orthogonal factor of a 2-D ``update``, in bfloat16
    (the wide side last), as torch.optim.Muon runs them: ``X /= max(||X||_F, eps)``, then
    ``A = X X^T; B = b A + c A^2; X = a X + B X``."""
    a, b, c = coefficients
    x = update.bfloat16()
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def ns_input_buffer(space: Workspace, rows: int, cols: int, device) -> torch.Tensor:
    """The ``[rows, cols]`` bfloat16 buffer :func:`newton_schulz_in_workspace` starts from (``prefilled=True``: a
    caller that wrote the bfloat16 input there itself)."""
    return space.buffer("ns_iterate0", (rows * cols,), torch.bfloat16, device).view(rows, cols)


def newton_schulz_in_workspace(update: torch.Tensor, coefficients, steps: int, eps: float,
                               space: Workspace, prefilled: bool = False) -> torch.Tensor:
    """:func:`newton_schulz` bit for bit, with every product written into ``space``'s buffers (``out=``) instead of
    fresh tensors: two bfloat16 buffers of ``rows*cols`` (the iterate, ping-ponged) and two of ``m x m`` (``m`` the
    short side: the Gram matrix and the polynomial in it). The same operands in the same layouts reach the same
    kernels: the first product reads the transposed view of the bfloat16 copy, as :func:`newton_schulz` does. The
    result is a view of a buffer, valid until the next call with this ``space``. ``prefilled``: ``update`` is
    :func:`ns_input_buffer` already holding ``update.bfloat16()`` (Muon's native pass writes it there)."""
    a, b, c = coefficients
    rows, cols = update.shape
    short, wide = min(rows, cols), max(rows, cols)
    iterates = [space.buffer(f"ns_iterate{k}", (rows * cols,), torch.bfloat16, update.device) for k in (0, 1)]
    x = iterates[0].view(rows, cols)
    if not prefilled:
        x.copy_(update)  # update.bfloat16()
    tall = rows > cols
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    gram = space.buffer("ns_gram", (short, short), torch.bfloat16, update.device)
    polynomial = space.buffer("ns_polynomial", (short, short), torch.bfloat16, update.device)
    for k in range(steps):
        torch.mm(x, x.T, out=gram)
        torch.addmm(gram, gram, gram, beta=b, alpha=c, out=polynomial)
        x = torch.addmm(x, polynomial, x, beta=a, out=iterates[(k + 1) % 2].view(short, wide))
    return x.T if tall else x


def newton_schulz_batched(updates: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """:func:`newton_schulz` of a stack ``[k, n, m]`` of same-shape matrices with one ``bmm`` chain. The same
    bfloat16 arithmetic, but batched GEMMs sum their products in another order than ``addmm``: a few elements in a
    thousand round to the neighbouring bfloat16 value, so the result agrees with the per-matrix one to bfloat16
    rounding, not bit for bit."""
    a, b, c = coefficients
    x = updates.bfloat16()
    tall = updates.size(1) > updates.size(2)
    if tall:
        x = x.transpose(1, 2)
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = torch.bmm(x, x.transpose(1, 2))
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.transpose(1, 2) if tall else x


@register
class Muon(Optimizer):
    r"""Muon (Keller Jordan, 2024) with an AdamW side, exactly as ``torch.optim.Muon`` + ``torch.optim.AdamW``.

    Muon side (2-D hidden weights; ``NS`` is :func:`newton_schulz`, in bfloat16):

    .. math::
        g_t &= \mathrm{clip}(\mathrm{rescale\_grad}\cdot\nabla, \mathrm{clip\_gradient}) \\
        B_t &= \mu B_{t-1} + (1-\mu) g_t, \quad
            \tilde B_t = \begin{cases} g_t + \mu (B_t - g_t) & \text{nesterov} \\ B_t & \text{else}\end{cases} \\
        w_t &= w_{t-1}(1 - \eta\,\mathrm{wd}) - \eta\,\mathrm{adjust}(A, B)\;\mathrm{NS}_k(\tilde B_t)

    AdamW side (torch.optim.AdamW, rate ``eta' = eta * adamw_lr_ratio``):

    .. math::
        w &\leftarrow w(1 - \eta'\mathrm{wd}), \quad m_t = \mathrm{lerp}(m_{t-1}, g_t, 1-\beta_1), \quad
            v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        w_t &= w - \frac{\eta'}{1-\beta_1^t}\, m_t / \left(\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon_{adamw}\right)

    Args:
        learning_rate: step size (default 1e-3, torch's; reference name ``lr``).
        momentum: ``mu`` (default 0.95).
        nesterov: Nesterov-style momentum (default True).
        ns_coefficients: the quintic's ``(a, b, c)`` (None: Keller Jordan's ``(3.4445, -4.7750, 2.0315)``);
            ns_steps: its iterations (default 5, fewer than 100).
        epsilon: floor of the Frobenius norm before the iteration (default 1e-7; reference name ``eps``).
        adjust_lr_fn: "original" (``sqrt(max(1, A/B))``, the default, torch's ``None``), "match_rms_adamw"
            (``0.2*sqrt(max(A, B))``) or "none".
        wd: decoupled weight decay, ``w *= 1 - lr*wd`` (default 0.1, torch's; reference name ``weight_decay``).
        adamw_lr_ratio: the AdamW side's rate as a multiple of the learning rate (default 1).
        adamw_beta1, adamw_beta2, adamw_epsilon: the AdamW side's ``betas`` and ``eps`` (torch's defaults).
        adamw_params: indices or names of parameters that go to AdamW whatever their shape.
        batch_newton_schulz: the fast path stacks same-shape matrices into one ``bmm`` chain
            (:func:`newton_schulz_batched`): fewer, larger matrix products, equal to torch.optim.Muon to bfloat16
            rounding of the update; default False: one matrix at a time, bit-identical to torch.optim.Muon.

    The fast path (``impl="auto"``, the default, or ``"foreach"``; ``self.impl`` says ``"foreach"`` for both)
    keeps a workspace (:mod:`optzoo.optimizer.workspace`) for its products and temporaries: two bfloat16 copies
    of the largest Muon matrix (the iterate), two bfloat16 ``m x m`` (``m`` its largest short side), one float32
    copy of the largest AdamW-side tensor of ``ADAMW_ONE_BY_ONE`` values or more and, with ``impl="foreach"``
    (torch operations only), a float32 copy of the largest Muon matrix for the Nesterov direction;
    torch.optim.Muon allocates as much afresh in every step. Matrices under ``NS_IN_WORKSPACE`` values take the
    allocating calls. With ``impl="auto"`` and the native kernels built, the element-wise work around each
    Newton–Schulz iteration is two native passes (:meth:`_muon_in_workspace`), bit-identical to the torch
    operations.
    """

    default_learning_rate = 1e-3
    #: on Shard(0) parameters (FSDP2) optzoo.sharding's reducer gathers each whole direction (one all_gather
    #: per step); every rank orthogonalises the whole matrices and keeps its rows. The momentum stays sharded.
    needs_whole_tensors = "orthogonalises each whole matrix update (Newton-Schulz)"
    sparse_support = "none"
    _decided: bool | None = None  # the side chosen for the weight whose master copy is being given a state

    @accepts_reference_names({"lr": "learning_rate", "weight_decay": "wd", "eps": "epsilon"})
    def __init__(self, learning_rate=None, momentum=0.95, nesterov=True, ns_coefficients=None,
                 ns_steps=5, epsilon=1e-7, adjust_lr_fn="original", wd=0.1, adamw_lr_ratio=1.0, adamw_beta1=0.9,
                 adamw_beta2=0.999, adamw_epsilon=1e-8, adamw_params=None, batch_newton_schulz=False, **kwargs):
        super().__init__(learning_rate=learning_rate, wd=wd, **kwargs)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.nesterov = check_bool("nesterov", nesterov)
        if ns_coefficients is None:
            ns_coefficients = NS_COEFFICIENTS
        if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
            raise TypeError(f"ns_coefficients must be three numbers (a, b, c), got {ns_coefficients!r}")
        self.ns_coefficients = [check_real(f"ns_coefficients[{i}]", v) for i, v in enumerate(ns_coefficients)]
        self.ns_steps = check_int("ns_steps", ns_steps, 0, 99)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.adjust_lr_fn = check_choice("adjust_lr_fn", "original" if adjust_lr_fn is None else adjust_lr_fn,
                                         ADJUST_LR_FNS)
        self.adamw_lr_ratio = check_real("adamw_lr_ratio", adamw_lr_ratio, 0.0)
        self.adamw_beta1 = check_real("adamw_beta1", adamw_beta1, 0.0, 1.0, high_open=True)
        self.adamw_beta2 = check_real("adamw_beta2", adamw_beta2, 0.0, 1.0, high_open=True)
        self.adamw_epsilon = check_real("adamw_epsilon", adamw_epsilon, 0.0)
        if adamw_params is None:
            adamw_params = []
        if isinstance(adamw_params, (str, bytes)) or not hasattr(adamw_params, "__iter__"):
            raise TypeError(f"adamw_params must be a list of parameter indices or names, got {adamw_params!r}")
        self.adamw_params = list(adamw_params)
        self.batch_newton_schulz = check_bool("batch_newton_schulz", batch_newton_schulz)

    # ------------------------------------------------------------------ which side
    def uses_muon(self, index, weight) -> bool:
        """Whether the parameter ``index`` with this weight goes to Muon (the module docstring's rules)."""
        flag = getattr(weight, "use_muon", None)
        if flag is None and index in self.param_dict:
            flag = getattr(self.param_dict[index], "use_muon", None)
        name = self.idx2name.get(index)
        if flag is None and (index in self.adamw_params or (name is not None and name in self.adamw_params)):
            flag = False
        if flag is None and name is not None and _ADAMW_NAME.search(str(name)):
            flag = False
        if flag is None:
            return weight.dim() == 2
        if not isinstance(flag, bool):
            raise TypeError(f"use_muon of parameter {index!r} must be True or False, got {flag!r}")
        if flag and weight.dim() < 2:
            raise ValueError(f"parameter {index!r} of shape {tuple(weight.shape)} has use_muon=True, but Muon "
                             "orthogonalises matrices: give it to AdamW (use_muon=False)")
        return flag

    def create_state(self, index, weight):
        use_muon = self.uses_muon(index, weight) if self._decided is None else self._decided
        if use_muon:
            return MuonState(self._zeros(weight))
        return MuonAdamWState(self._zeros(weight), self._zeros(weight))

    def create_state_multi_precision(self, index, weight):
        # decided on the caller's tensor: the float32 master copy does not carry its use_muon attribute
        self._decided = self.uses_muon(index, weight)
        try:
            return super().create_state_multi_precision(index, weight)
        finally:
            self._decided = None

    def _state_template(self, index, weight, fresh: bool = False, masters: bool = True):
        """No template: which side a parameter takes (and so its state's layout) depends on the parameter's own
        attributes and name, which a meta-tensor template does not have; ``_state_shape_fits`` checks the shapes."""
        return None

    def _state_shape_fits(self, weight, leaf) -> bool:
        return leaf.shape == weight.shape

    def _check_state_layout(self, index, weight, state, check_device: bool = True, masters: bool = True) -> None:
        """The state's type is its side (no template checks it): anything but a MuonState or MuonAdamWState (after
        a master copy) would be skipped by the rule, a silent no-op."""
        master = self._uses_master_copy(weight, masters)
        inner = state[1] if master and type(state) is tuple and len(state) == 2 else state
        if not isinstance(inner, (MuonState, MuonAdamWState)):
            raise ValueError(f"the state of parameter {index!r} is a {type(inner).__name__}, expected a MuonState "
                             "or MuonAdamWState as create_state makes it (its type says which side steps it)")
        super()._check_state_layout(index, weight, state, check_device, masters)

    # ------------------------------------------------------------------ the rule
    def _muon_direction(self, g, state: MuonState, space: Workspace | None = None) -> torch.Tensor:
        """The momentum updated and the direction to orthogonalise; with ``space``, the Nesterov direction is
        written into its ``muon_direction`` buffer (``torch.lerp(..., out=)``: the same kernel as ``g.lerp``)."""
        state.momentum.lerp_(g, 1 - self.momentum)
        if not self.nesterov:
            return state.momentum
        if space is None:
            return g.lerp(state.momentum, self.momentum)
        out = space.buffer("muon_direction", g.shape, g.dtype, g.device)
        return torch.lerp(g, state.momentum, self.momentum, out=out)

    def _adamw_scalars(self, lr, t):
        """``(rate, step_size, sqrt(1 - beta2^t))`` of the AdamW side, as torch.optim.AdamW computes them."""
        rate = lr * self.adamw_lr_ratio
        return rate, rate / (1 - self.adamw_beta1**t), (1 - self.adamw_beta2**t) ** 0.5

    def _adamw_reference(self, weight, g, state: MuonAdamWState, lr, wd, t) -> None:
        rate, step_size, bias2_sqrt = self._adamw_scalars(lr, t)
        weight.mul_(1 - rate * wd)
        state.exp_avg.lerp_(g, 1 - self.adamw_beta1)
        state.exp_avg_sq.mul_(self.adamw_beta2).addcmul_(g, g, value=1 - self.adamw_beta2)
        denom = (state.exp_avg_sq.sqrt() / bias2_sqrt).add_(self.adamw_epsilon)
        weight.addcdiv_(state.exp_avg, denom, value=-step_size)

    def _reference_rule(self, weight, grad, state, lr, wd, t):
        g = rescale_clip(grad, self.rescale_grad, self.clip_gradient)
        if isinstance(state, MuonAdamWState):
            return self._adamw_reference(weight, g, state, lr, wd, t)
        matrix = self._muon_direction(g, state)
        ortho = newton_schulz(matrix.reshape(len(matrix), -1), self.ns_coefficients, self.ns_steps, self.epsilon)
        weight.mul_(1 - lr * wd)
        weight.add_(ortho.view(weight.shape), alpha=-_adjusted_lr(lr, self.adjust_lr_fn, ortho.shape))

    def _foreach_rule(self, weights, grads, states, lrs, wds, ts):
        gs = rescale_clip_readonly_foreach(grads, self.rescale_grad, self.clip_gradient)
        muon = [i for i, s in enumerate(states) if isinstance(s, MuonState)]
        adamw = [i for i, s in enumerate(states) if isinstance(s, MuonAdamWState)]
        if adamw:
            self._adamw_foreach(*([seq[i] for i in adamw] for seq in (weights, gs, states, lrs, wds, ts)))
        if not muon:
            return
        reducer = self.norm_sum_reducer
        if reducer is None and not self.batch_newton_schulz:
            return self._muon_in_workspace(*([seq[i] for i in muon] for seq in (weights, gs, states, lrs, wds)))
        # momentum one tensor at a time: torch._foreach_lerp rounds differently from Tensor.lerp on some sizes
        directions = [self._muon_direction(gs[i], states[i]) for i in muon]
        if reducer is not None:  # FSDP2 shards: every rank gathers the whole directions (one all_gather)
            directions = reducer.gather_rows(directions, [weights[i] for i in muon])
        groups: dict[tuple, list[int]] = {}
        for k, i in enumerate(muon):
            key = (len(directions[k]), directions[k][0].numel(), weights[i].dtype) if self.batch_newton_schulz \
                else (k,)
            groups.setdefault(key, []).append(k)
        for members in groups.values():
            rows, cols = len(directions[members[0]]), directions[members[0]][0].numel()
            if len(members) > 1:
                stacked = torch.stack([directions[k].reshape(rows, cols) for k in members])
                orthos = newton_schulz_batched(stacked, self.ns_coefficients, self.ns_steps, self.epsilon)
            else:
                orthos = [newton_schulz(directions[members[0]].reshape(rows, cols), self.ns_coefficients,
                                        self.ns_steps, self.epsilon)]
            for k, ortho in zip(members, orthos):
                i = muon[k]
                w = weights[i]
                if reducer is not None:
                    ortho = reducer.local_rows(ortho.reshape(directions[k].shape), w)
                w.mul_(1 - lrs[i] * wds[i])
                w.add_(ortho.view(w.shape), alpha=-_adjusted_lr(lrs[i], self.adjust_lr_fn, (rows, cols)))

    def _native_passes(self):
        """The native module when the fast path runs Muon's element-wise passes natively (``impl="auto"``, the
        default, where the kernels are built: :mod:`optzoo.native`'s ``muon_direction`` and ``muon_apply``), else
        None (``impl="foreach"``: torch operations only). Both are bit-identical to torch.optim.Muon."""
        if self._impl_request != "auto":
            return None
        return native.load()

    def _muon_in_workspace(self, weights, gs, states, lrs, wds) -> None:
        """The default fast path: one matrix at a time, as torch.optim.Muon, bit for bit, with the Nesterov
        direction and every Newton–Schulz product of a matrix of ``NS_IN_WORKSPACE`` values or more written into
        the optimizer's workspace (kept across steps, each buffer as large as the largest matrix needs) instead of
        fresh tensors. A bfloat16 or non-contiguous direction takes :func:`newton_schulz` (``Tensor.bfloat16()``
        returns a bfloat16 tensor itself, which torch then scales in place; a strided one keeps its strides).

        With the native kernels (:meth:`_native_passes`), the element-wise work around the iteration is two passes
        over each matrix instead of six torch operations: ``muon_direction`` updates the momentum and writes the
        bfloat16 Nesterov direction straight into the iteration's input (no float32 direction, no cast), and
        ``muon_apply`` decays the weight and adds the scaled result (no float32 copy of the bfloat16 result). They
        round as torch's lerp, cast, mul and add do (a fused multiply-add for lerp and the add), so the weights and
        momenta equal the torch operations' bit for bit. A tensor they do not take (not float32, not contiguous)
        goes through the torch operations."""
        space = workspace_of(self)
        kernels = self._native_passes()
        for w, g, state, lr, wd in zip(weights, gs, states, lrs, wds):
            large = g.numel() >= NS_IN_WORKSPACE
            rows = len(g)
            cols = g.numel() // rows if rows else 0
            ortho = None
            if kernels is not None and rows and cols:
                start = ns_input_buffer(space, rows, cols, g.device) if large else \
                    torch.empty((rows, cols), dtype=torch.bfloat16, device=g.device)
                if kernels.muon_direction(g, state.momentum, start, self.momentum, self.nesterov):
                    ortho = newton_schulz_in_workspace(start, self.ns_coefficients, self.ns_steps, self.epsilon,
                                                       space, prefilled=True) if large else \
                        newton_schulz(start, self.ns_coefficients, self.ns_steps, self.epsilon)
            if ortho is None:
                direction = self._muon_direction(g, state, space if large and g.is_contiguous() else None)
                matrix = direction.reshape(len(direction), -1)
                if large and direction.dtype == torch.float32 and direction.is_contiguous():
                    ortho = newton_schulz_in_workspace(matrix, self.ns_coefficients, self.ns_steps, self.epsilon,
                                                       space)
                else:
                    ortho = newton_schulz(matrix, self.ns_coefficients, self.ns_steps, self.epsilon)
            decay, alpha = 1 - lr * wd, -_adjusted_lr(lr, self.adjust_lr_fn, ortho.shape)
            if kernels is None or not kernels.muon_apply(w, ortho, decay, alpha):
                w.mul_(decay)
                w.add_(ortho.view(w.shape), alpha=alpha)

    def _adamw_foreach(self, weights, gs, states, lrs, wds, ts) -> None:
        """torch.optim.AdamW's operations, bit for bit: tensors of ``ADAMW_ONE_BY_ONE`` values or more one at a
        time, all passes over a tensor while it is in cache (as torch's for-loop), the denominator in a workspace
        buffer (as large as the largest such tensor); the smaller ones together, in ``torch._foreach`` calls."""
        space = workspace_of(self)
        small = []
        for k, (w, g, state, lr, wd, t) in enumerate(zip(weights, gs, states, lrs, wds, ts)):
            if w.numel() < ADAMW_ONE_BY_ONE or not w.is_contiguous():
                small.append(k)
                continue
            rate, step_size, bias2_sqrt = self._adamw_scalars(lr, t)
            w.mul_(1 - rate * wd)
            state.exp_avg.lerp_(g, 1 - self.adamw_beta1)
            state.exp_avg_sq.mul_(self.adamw_beta2).addcmul_(g, g, value=1 - self.adamw_beta2)
            second = state.exp_avg_sq
            denom = torch.sqrt(second, out=space.buffer("adamw_denom", second.shape, second.dtype, second.device))
            denom.div_(bias2_sqrt).add_(self.adamw_epsilon)
            w.addcdiv_(state.exp_avg, denom, value=-step_size)
        if not small:
            return
        weights, gs, states, lrs, wds, ts = ([seq[k] for k in small] for seq in (weights, gs, states, lrs, wds, ts))
        scalars = [self._adamw_scalars(lr, t) for lr, t in zip(lrs, ts)]
        torch._foreach_mul_(weights, [1 - rate * wd for (rate, _, _), wd in zip(scalars, wds)])
        means, variances = [s.exp_avg for s in states], [s.exp_avg_sq for s in states]
        torch._foreach_lerp_(means, gs, 1 - self.adamw_beta1)
        torch._foreach_mul_(variances, self.adamw_beta2)
        torch._foreach_addcmul_(variances, gs, gs, value=1 - self.adamw_beta2)
        denoms = torch._foreach_sqrt(variances)
        torch._foreach_div_(denoms, [bias2_sqrt for _, _, bias2_sqrt in scalars])
        torch._foreach_add_(denoms, self.adamw_epsilon)
        torch._foreach_addcdiv_(weights, means, denoms, [-step_size for _, step_size, _ in scalars])
