"""Every optzoo optimizer on sharded parameters: torch.distributed ``DTensor`` (FSDP2's ``fully_shard``).

A step on DTensor parameters runs the optimizer's fast path on the local shards (``p.to_local()``), with
states that are DTensors placed like their parameter (so ``torch.distributed.checkpoint`` saves and reshards
them). Element-wise rules need nothing more: each rank updates its rows exactly as the unsharded rule would.

Rules that read whole-tensor norms (LARS, LAMB, LANS, LBSGD's ``'lars'`` ratio; ``uses_tensor_norms``) get a
*norm-sum reducer* for the step (``Optimizer.norm_sum_reducer``): the rule computes every tensor's float64
sum of squares on its local shard, the reducer adds the shards' sums with one ``all_reduce`` over the mesh
for all tensors of the step, and the rule continues with the whole tensors' norms (LANS needs two rounds:
the gradients' norms, then the weights' and directions' norms). The native kernels compute their norms
inside, so these rules run their ``torch._foreach`` path on shards; element-wise rules keep their kernel.
MARS reduces its corrected gradients' norms, and Prodigy (``joint_step``) the per-tensor sums of its ``d``
estimate, the same way. Adafactor and CAME add their shards' column sums, row-statistic sums and RMS sums with
:meth:`_ShardSums.sum_parts` (one all-reduce per stage for all tensors), keeping a 2-D weight's column
statistics whole on every rank; Muon and SOAP (``needs_whole_tensors``) gather whole tensors with
:meth:`_ShardSums.gather_rows` (one all-gather per step), compute the whole update on every rank and apply
their rows (SOAP's states are whole on every rank, ``whole_tensor_state``). On a mesh of one process the shards
are whole tensors: no reducer, the rule's unsharded fast path (one fused native call for LAMB), no collective.

Optimizer-wide quantities stay equal to the unsharded run: every rank updates every parameter in the same
order, so Nadam's momentum schedule and the update counts advance alike, and SGLD draws each tensor's
unsharded noise from its generator and keeps its own rows (all ranks must seed their generators equally,
as for any replicated randomness). Under ``ZeroRedundancyOptimizer`` a rank's optimizer sees only its
partition, so the optimizers with an optimizer-wide sequence (Nadam with ``schedule_scope='optimizer'``,
SGLD) or estimate (Prodigy) refuse it (see :func:`check_partitioned`).

Supported: 1-D meshes with ``Shard(0)`` (uneven shards and empty local shards included) or ``Replicate()``
placements. Anything else (2-D meshes, ``Shard(1)`` tensor parallelism, ``Partial``), a rule needing norms
on a mix of DTensor and plain parameters, or on DTensors of different meshes, is a ``ValueError`` naming
the parameter: a norm is never silently computed on a local shard.
"""

from __future__ import annotations

import copy
import math
import sys
import weakref

import torch

from .optimizer.base import Optimizer, _leaves, _map_state

__all__ = ["ShardingError", "check_partitioned", "create_state", "gathered", "is_dtensor", "local_views",
           "place_state", "writes_checkpoint"]


class ShardingError(RuntimeError):
    """A collective of a sharded step failed (a worker died, or the process group timed out)."""


def _dtensor_module():
    # torch.distributed.tensor costs ~0.5 s to import; a tensor can only be a DTensor once it is imported.
    return sys.modules.get("torch.distributed.tensor")


def is_dtensor(t) -> bool:
    """Whether ``t`` is a torch.distributed ``DTensor``."""
    module = _dtensor_module()
    return module is not None and isinstance(t, module.DTensor)


def _local(t):
    return t.to_local() if is_dtensor(t) else t


def _name(opt: Optimizer, index) -> str:
    name = opt.idx2name.get(index)
    return f"parameter {name!r} (index {index!r})" if name is not None else f"parameter {index!r}"


def _check_placement(opt: Optimizer, index, param) -> bool:
    """True for a ``Shard(0)`` parameter, False for ``Replicate()``; ValueError for anything else."""
    module = _dtensor_module()
    placements = tuple(param.placements)
    if param.device_mesh.ndim == 1 and len(placements) == 1:
        if placements[0] == module.Shard(0):
            return True
        if placements[0] == module.Replicate():
            return False
    raise ValueError(
        f"{_name(opt, index)} is a DTensor with placements {placements} on a {param.device_mesh.ndim}-D mesh; "
        "optzoo steps DTensor parameters on a 1-D mesh placed Shard(0) (FSDP2's fully_shard) or Replicate() "
        "only (tensor parallel Shard(1), 2-D meshes and Partial are not supported: a trust ratio or norm would "
        "be computed on part of the tensor)")


def _global_shape(param, local: torch.Tensor, leaf: torch.Tensor, sharded: bool) -> tuple:
    if leaf.shape == local.shape:
        return tuple(param.shape)
    if not sharded:
        return tuple(leaf.shape)
    if leaf.dim() >= 1 and leaf.shape[0] == local.shape[0]:  # one value per row (GroupAdaGrad's history)
        return (param.shape[0], *leaf.shape[1:])
    raise ValueError(f"a state tensor of shape {tuple(leaf.shape)} cannot be sharded like a parameter whose "
                     f"local shard has shape {tuple(local.shape)}")


#: attributes of a parameter that an optimizer reads when it creates the state (Muon's side)
_PARAMETER_FLAGS = ("use_muon",)


def create_state(opt: Optimizer, index, param: torch.Tensor):
    """``opt.create_state_multi_precision(index, param)``; for a DTensor parameter the state is made on the local
    shard and every state tensor is wrapped as a DTensor with the parameter's mesh and placements, except those
    the optimizer keeps whole on every rank (``Replicate()``): the column statistics of Adafactor's and CAME's
    2-D weights (:meth:`replicated_state`), and every state of SOAP (``whole_tensor_state``), made for the
    whole parameter."""
    if not is_dtensor(param):
        return opt.create_state_multi_precision(index, param)
    module = _dtensor_module()
    sharded = _check_placement(opt, index, param)
    local = param.to_local()
    for name in _PARAMETER_FLAGS:  # the optimizer decides on the local tensor: give it the parameter's flags
        if hasattr(param, name):
            setattr(local, name, getattr(param, name))
    master = opt._uses_master_copy(local)
    if sharded and getattr(opt, "whole_tensor_state", False):
        whole = torch.zeros(param.shape, dtype=torch.float32 if master else local.dtype, device=local.device)
        inner = opt.create_state(index, whole)
        state = (local.detach().to(torch.float32, copy=True), inner) if master else inner
        replicated = {id(leaf) for leaf in _leaves(inner)}
    else:
        state = opt.create_state_multi_precision(index, local)
        inner = state[1] if master else state
        replicas = getattr(opt, "replicated_state", None)
        replicated = {id(leaf) for leaf in replicas(inner)} if sharded and replicas else set()

    def wrap(leaf):
        if id(leaf) in replicated:
            shape, placements = tuple(leaf.shape), (module.Replicate(),)
        else:
            shape, placements = _global_shape(param, local, leaf, sharded), param.placements
        stride = tuple(math.prod(shape[d + 1:]) for d in range(len(shape)))
        return module.DTensor.from_local(leaf, param.device_mesh, placements, run_check=False,
                                         shape=torch.Size(shape), stride=stride)

    return _map_state(wrap, state)


class _ShardSums:
    """The reducer of one sharded step over the mesh's process group. Called as ``reduce(sums, owners)`` it adds
    up the partial sums of squares of ``Shard(0)`` tensors, one ``all_reduce`` for all tensors (other columns
    pass through); :meth:`sum_parts` does the same for partial sums of any shape (column sums, RMS), and
    :meth:`gather_rows` assembles whole tensors from every rank's rows (one ``all_gather``)."""

    def __init__(self, group, sharded_ids: set[int], rows: dict | None = None):
        self.group = group
        self.sharded_ids = sharded_ids
        self.rows = rows or {}  # id(local tensor) -> (whole shape, first row)
        self._owners: list = []  # the owners of the last call and their mask (kept: a step reuses its reducer)
        self._mask = None

    def _collective(self, what: str, collective, *args):
        try:
            return collective(*args, group=self.group)
        except RuntimeError as err:
            raise ShardingError(f"the {what} of a sharded step failed (a worker died or the process group timed "
                                f"out): {err}") from err

    def _sharded_mask(self, owners, device):
        """Which owners are sharded: ``True`` for all, ``False`` for none, else a boolean tensor."""
        if len(owners) != len(self._owners) or any(a is not b for a, b in zip(owners, self._owners)):
            picked = [id(w) in self.sharded_ids for w in owners]
            self._owners = list(owners)
            if all(picked) or not any(picked):
                self._mask = bool(picked) and all(picked)
            else:
                self._mask = torch.tensor(picked, device=device)
        return self._mask

    def __call__(self, sums: torch.Tensor, owners) -> torch.Tensor:
        mask = self._sharded_mask(owners, sums.device)
        if mask is False:
            return sums
        # FSDP2's usual case: every owner is sharded, the sums are all-reduced as they are (in a copy)
        partial = sums.clone(memory_format=torch.contiguous_format) if mask is True else \
            torch.where(mask, sums, torch.zeros_like(sums))
        self._collective("all-reduce of the sharded parameters' norms",
                         torch.distributed.all_reduce, partial)
        return partial if mask is True else torch.where(mask, partial, sums)

    def whole_shape(self, tensor) -> tuple:
        """The unsharded shape of a local shard (its own shape for a tensor that is not sharded)."""
        return self.rows[id(tensor)][0] if id(tensor) in self.rows else tuple(tensor.shape)

    def local_rows(self, whole: torch.Tensor, owner) -> torch.Tensor:
        """The rows of ``whole`` (shaped like ``owner``'s unsharded tensor) that ``owner``'s shard holds."""
        if id(owner) not in self.rows:
            return whole
        return whole.narrow(0, self.rows[id(owner)][1], owner.shape[0])

    def sum_parts(self, parts, owners) -> list:
        """``parts`` with each one whose owner is a sharded tensor summed over the mesh (partial sums over the
        owner's rows), in one float64 ``all_reduce``; parts owned by ``None`` or a whole tensor pass through."""
        picked = [k for k, owner in enumerate(owners) if owner is not None and id(owner) in self.sharded_ids]
        out = list(parts)
        if not picked:
            return out
        flat = torch.cat([parts[k].reshape(-1).to(torch.float64) for k in picked])
        self._collective("all-reduce of partial sums", torch.distributed.all_reduce, flat)
        offset = 0
        for k in picked:
            n = parts[k].numel()
            out[k] = flat[offset:offset + n].view(parts[k].shape).to(parts[k].dtype)
            offset += n
        return out

    def gather_rows(self, parts, owners) -> list:
        """``parts`` (each the local rows of a tensor shaped like its owner's shard) as whole tensors, with one
        ``all_gather`` per dtype for all of them; parts of tensors that are not sharded pass through."""
        out = list(parts)
        by_dtype: dict = {}
        for k, owner in enumerate(owners):
            if id(owner) in self.sharded_ids:
                by_dtype.setdefault(parts[k].dtype, []).append(k)
        world = torch.distributed.get_world_size(self.group)
        for dtype, picked in by_dtype.items():
            layout = []  # (k, whole shape, rows per rank, elements per row)
            for k in picked:
                shape = self.whole_shape(owners[k])
                layout.append((k, shape, -(-shape[0] // world), math.prod(shape[1:])))
            size = sum(chunk * row for _, _, chunk, row in layout)
            mine = torch.zeros(size, dtype=dtype, device=parts[picked[0]].device)
            offset = 0
            for k, _, chunk, row in layout:
                mine[offset:offset + parts[k].numel()] = parts[k].reshape(-1)
                offset += chunk * row
            pieces = [torch.empty_like(mine) for _ in range(world)]
            self._collective("all-gather of whole tensors",
                             torch.distributed.all_gather, pieces, mine)
            offset = 0
            for k, shape, chunk, row in layout:
                counts = [max(0, min(chunk, shape[0] - r * chunk)) for r in range(world)]
                out[k] = torch.cat([piece[offset:offset + n * row] for piece, n in zip(pieces, counts)]).view(shape)
                offset += chunk * row
        return out


def _sgld_shards(opt, sharded_rows) -> None:
    if hasattr(type(opt), "shard_rows"):  # SGLD draws each tensor's unsharded noise and keeps its own rows
        opt.shard_rows = sharded_rows or None


def _local_grad(opt: Optimizer, index, param, grad) -> torch.Tensor:
    if not is_dtensor(grad) or tuple(grad.placements) != tuple(param.placements):
        raise ValueError(f"the gradient of {_name(opt, index)} must be a DTensor placed like the parameter "
                         f"({tuple(param.placements)}); got {getattr(grad, 'placements', type(grad).__name__)}")
    return grad.to_local()


class _LocalViews:
    """The local shards of one list of parameters and states, and the step's reducer, as :func:`local_views` built
    them; reused by later steps while :meth:`fits` (the same parameters with the same local tensors and
    placements, the same state objects with the same local tensors, the same optimizer settings)."""

    def __init__(self, settings, params, states, local_params, local_states, reducer, rows):
        self.settings = settings
        self.params, self.states = list(params), list(states)
        # what to_local() returns and what the placements are (a re-sharded parameter changes them)
        self.shards = [(p._local_tensor, p.placements, p.device_mesh, p.shape) if is_dtensor(p) else None
                       for p in params]
        self.state_shards = [(leaf, leaf._local_tensor) for s in states for leaf in _leaves(s) if is_dtensor(leaf)]
        self.local_params, self.local_states = local_params, local_states
        self.reducer, self.rows = reducer, rows

    def fits(self, settings, params, states) -> bool:
        if settings != self.settings or len(params) != len(self.params):
            return False
        for p, s, cached_p, cached_s, shard in zip(params, states, self.params, self.states, self.shards):
            if p is not cached_p or s is not cached_s:
                return False
            if shard is not None and (p._local_tensor is not shard[0] or p.placements != shard[1]
                                      or p.device_mesh is not shard[2] or p.shape != shard[3]):
                return False
        return all(leaf._local_tensor is local for leaf, local in self.state_shards)


#: per optimizer, the last few :class:`_LocalViews` by their list of parameter indices
_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_VIEWS_KEPT = 4


def local_views(opt: Optimizer, indices, params, grads, states):
    """``(params, grads, states)`` for one step of ``opt`` on local shards, and ``opt.norm_sum_reducer`` set
    for that step (``None`` when no parameter is a DTensor: the lists come back unchanged).

    The checks and lists of a step are kept for the next step over the same parameters (a step then only checks
    that nothing was re-sharded or replaced, and takes the gradients' shards); parameters, states, local tensors
    or placements that changed build them anew."""
    if not any(is_dtensor(p) for p in params):
        opt.norm_sum_reducer = None
        _sgld_shards(opt, None)
        return params, grads, states
    # Prodigy's sums, and the whole tensors of Muon and SOAP, go through the reducer too
    needs_norms = bool(opt.uses_tensor_norms) or getattr(opt, "joint_step", False) \
        or bool(getattr(opt, "needs_whole_tensors", ""))
    settings = (needs_norms, opt.impl, opt.multi_precision)
    kept = _VIEWS.setdefault(opt, {})
    key = tuple(indices)
    views = kept.get(key)
    if views is not None and views.fits(settings, params, states):
        local_grads = [_local_grad(opt, index, p, g) if shard is not None else g
                       for index, p, g, shard in zip(indices, params, grads, views.shards)]
    else:
        views, local_grads = _build_views(opt, settings, indices, params, grads, states)
        kept.pop(key, None)
        kept[key] = views
        while len(kept) > _VIEWS_KEPT:
            del kept[next(iter(kept))]
    opt.norm_sum_reducer = views.reducer
    _sgld_shards(opt, views.rows)
    return list(views.local_params), local_grads, list(views.local_states)


def _build_views(opt: Optimizer, settings, indices, params, grads, states):
    needs_norms = settings[0]
    group, mesh_of, sharded_ids, rows = None, None, set(), {}
    local_params, local_grads, local_states = [], [], []
    for index, p, g, s in zip(indices, params, grads, states):
        if not is_dtensor(p):
            if needs_norms:
                raise ValueError(
                    f"{_name(opt, index)} is a plain tensor stepped together with DTensor parameters by "
                    f"{type(opt).__name__}, whose rule needs whole-tensor norms: optzoo cannot tell whether it "
                    "is whole or a shard. Shard it too (fully_shard / distribute_tensor) or give it its own "
                    "optimizer")
            local_params.append(p)
            local_grads.append(g)
            local_states.append(s)
            continue
        sharded = _check_placement(opt, index, p)
        local_grads.append(_local_grad(opt, index, p, g))
        if any(not is_dtensor(leaf) for leaf in _leaves(s)):
            raise ValueError(f"the state of {_name(opt, index)} holds plain tensors but the parameter is a "
                             "DTensor; restore sharded states with torch.distributed.checkpoint "
                             "(get_optimizer_state_dict / set_optimizer_state_dict)")
        local, local_state = p.to_local(), _map_state(_local, s)
        if sharded:
            if mesh_of is None:
                mesh_of, group = p.device_mesh, p.device_mesh.get_group()
            elif p.device_mesh != mesh_of and needs_norms:
                raise ValueError(f"{_name(opt, index)} is sharded over another device mesh than the other "
                                 f"parameters of this {type(opt).__name__} step; one optimizer per mesh")
            start = _row_start(p)
            for tensor in (local, *(_leaves(local_state)[:1] if opt._uses_master_copy(local) else ())):
                sharded_ids.add(id(tensor))
                rows[id(tensor)] = (tuple(p.shape), start)
        local_params.append(local)
        local_states.append(local_state)
    if needs_norms and opt.impl == "reference" and sharded_ids:
        raise ValueError(f"{type(opt).__name__}(impl='reference') computes each tensor's norm alone; sharded "
                         "parameters need the fast path (impl='auto' or 'foreach'), which reduces the norms")
    # a mesh of one process holds whole tensors: nothing to add up or gather, the rule's unsharded step serves
    one_rank = group is not None and torch.distributed.get_world_size(group) == 1
    reducer = _ShardSums(group, sharded_ids, rows) if needs_norms and sharded_ids and not one_rank else None
    return _LocalViews(settings, params, states, local_params, local_states, reducer, rows), local_grads


def _inside_zero_redundancy() -> bool:
    zero = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    if zero is None:
        return False
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return False
        if isinstance(frame.f_locals.get("self"), zero.ZeroRedundancyOptimizer):
            return True
        frame = frame.f_back
    return False


def check_partitioned(opt: Optimizer) -> None:
    """ValueError when ``opt`` is built for one rank's partition of ``ZeroRedundancyOptimizer`` and keeps an
    optimizer-wide sequence that advances with every parameter: that rank would see only its partition's
    updates, a silently different trajectory from the unsharded run."""
    if not _inside_zero_redundancy():
        return
    if getattr(opt, "schedule_scope", None) == "optimizer":
        raise ValueError(
            f"{type(opt).__name__} with schedule_scope='optimizer' (MXNet's one momentum schedule advanced at "
            "every parameter's update) cannot run under ZeroRedundancyOptimizer: each rank updates only its "
            "partition, so the schedule would differ from the unsharded run. Use schedule_scope='parameter', "
            "or DDP / FSDP2 (every rank updates every parameter)")
    if getattr(opt, "joint_step", False):
        raise ValueError(
            f"{type(opt).__name__} cannot run under ZeroRedundancyOptimizer: its step estimates one quantity from "
            "every parameter, and each rank would see its partition only. Use DDP or FSDP2")
    if hasattr(type(opt), "shard_rows"):
        raise ValueError(
            f"{type(opt).__name__} cannot run under ZeroRedundancyOptimizer: its noise is one generator's "
            "sequence over all parameters, and each rank would draw it for its partition only. Use DDP or FSDP2")


def is_state_init_step(torch_optimizer) -> bool:
    """Whether a ``step()`` is torch.distributed.checkpoint's state initialisation (``_init_optim_state``: no
    state yet, every group's ``lr`` 0 and every gradient all zeros): it must create the states and change
    nothing else (an update with lr 0 still moves FTRL's weights and counts every parameter's step)."""
    if torch_optimizer.state or any(float(g["lr"]) != 0.0 for g in torch_optimizer.param_groups):
        return False
    grads = [p.grad for g in torch_optimizer.param_groups for p in g["params"] if p.grad is not None]
    return bool(grads) and all(not bool(_local(grad).any()) for grad in grads)


def _row_start(param) -> int:
    chunk = -(-param.shape[0] // param.device_mesh.size())  # Shard(0) splits rows as torch.chunk does
    return min(param.device_mesh.get_local_rank() * chunk, param.shape[0])


def place_state(opt: Optimizer, index, param: torch.Tensor, state):
    """A loaded state made ready for ``param``: moved to its device; for a DTensor parameter, whole tensors (an
    ``optzoo.Trainer`` checkpoint) are cut to this rank's rows and wrapped like the parameter."""
    if not is_dtensor(param):
        return _map_state(lambda s: s.to(param.device), state)
    if all(is_dtensor(leaf) for leaf in _leaves(state)):
        return state
    placed = create_state(opt, index, param)
    wholes, targets = _leaves(state), _leaves(placed)
    if len(wholes) != len(targets) or any(w.shape != t.shape for w, t in zip(wholes, targets)):
        raise ValueError(f"the loaded state of {_name(opt, index)} does not fit the parameter: shapes "
                         f"{[tuple(w.shape) for w in wholes]}, expected {[tuple(t.shape) for t in targets]}")
    sharded = _check_placement(opt, index, param)
    start = _row_start(param) if sharded else 0
    for whole, target in zip(wholes, targets):
        local = target.to_local()
        cut = sharded and tuple(target.placements) == tuple(param.placements)  # not a Replicate() statistic
        local.copy_(whole.narrow(0, start, local.shape[0]) if cut else whole)
    return placed


def gathered(updater):
    """``updater`` itself, or a shallow copy whose DTensor states are gathered into whole tensors (a collective:
    every rank must call it) for an ``optzoo.Trainer`` checkpoint."""
    if not any(is_dtensor(leaf) for state in updater.states.values() for leaf in _leaves(state)):
        return updater
    whole = copy.copy(updater)
    whole.states = {i: _map_state(lambda t: t.full_tensor() if is_dtensor(t) else t, s)
                    for i, s in updater.states.items()}
    return whole


def writes_checkpoint(updater) -> bool:
    """Whether this process writes an ``optzoo.Trainer`` checkpoint: rank 0 when the states are sharded
    (DTensors, gathered by :func:`gathered`), every process otherwise (dist_sync replicas are identical)."""
    sharded = any(is_dtensor(leaf) for state in updater.states.values() for leaf in _leaves(state))
    return not sharded or torch.distributed.get_rank() == 0
