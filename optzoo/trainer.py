"""Gluon's ``Trainer`` for ``torch.nn`` models: MXNet 2.0 semantics, exact resume.

A Gluon training loop ports by changing the imports and the model definition::

    trainer = optzoo.Trainer(model, "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4})
    for x, y in batches:
        loss = loss_fn(model(x), y)          # per-sample losses, as Gluon's loss blocks return
        loss.sum().backward()                # Gluon: loss.backward()
        trainer.step(x.shape[0])             # rescale_grad = 1 / batch_size, then one update

What the Trainer does (MXNet 2.0's ``gluon.Trainer``, spec section 7):

* ``step(batch_size)`` = ``allreduce_grads()`` + ``update(batch_size)``; the optimizer sees
  ``rescale_grad = scale / batch_size`` where ``scale`` is its ``rescale_grad`` when the Trainer was built.
* Gradients behave like Gluon's ``grad_req``: ``'write'`` (default) makes every backward *replace* the
  gradient, so no ``zero_grad`` is needed between steps; ``'add'`` accumulates (torch's habit) until
  :meth:`Trainer.zero_grad`; ``'null'`` (or ``requires_grad=False``) skips the parameter. Set it for all
  parameters with the ``grad_req`` argument or per parameter as an attribute (``p.grad_req = 'add'``).
* Stale gradients: stepping a parameter whose gradient no backward produced since its last update raises
  :class:`StaleGradientError` naming it; ``ignore_stale_grad=True`` skips exactly those parameters (their
  update counts do not advance). Freshness is observed with autograd hooks, so a gradient assigned by hand
  (``p.grad = g``) is not fresh: feed it through ``p.backward(g)``. ``torch.autograd.grad`` calls neither
  freshen nor overwrite ``.grad``.
* Per-parameter ``lr_mult``/``wd_mult`` attributes (``model.fc.bias.wd_mult = 0``) are read at every update.
* Checkpoints (:meth:`save_states`, :meth:`state_dict`) are keyed by parameter name, written atomically in a
  safetensors file with a checksum (no pickle), and resume bit-identically (see :mod:`optzoo.checkpoint`).
"""

from __future__ import annotations

import functools
import numbers
import os
import warnings
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch.utils.hooks import RemovableHandle

from . import checkpoint, sharding
from .kvstore.compression import create_compression
from .optimizer.base import Optimizer, create
from .optimizer.updater import Updater, get_updater
from .optimizer.validation import check_bool, check_choice, check_real
from .serialization import atomic_write, dumps, load

__all__ = [
    "GRAD_REQS",
    "LOCAL_KVSTORES",
    "KVStoreDecision",
    "StaleGradientError",
    "Trainer",
    "resolve_kvstore",
]

#: the values of ``grad_req`` (Trainer argument or parameter attribute), as in Gluon.
GRAD_REQS = ("write", "add", "null")
#: kvstore names that reduce on one machine; with one device (always, in one torch process) none is created.
LOCAL_KVSTORES = ("local", "device", "nccl")
#: distributed kvstore plugins whose names do not contain "dist".
_DIST_PLUGINS = ("horovod", "byteps")


class StaleGradientError(ValueError, UserWarning):
    """Parameters were stepped without a fresh gradient. ``names`` lists them.

    Also a ``UserWarning`` subclass: Gluon raises ``UserWarning`` here, so ported ``except`` clauses still
    work.
    """

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


# ---------------------------------------------------------------------------------------------- kvstore
@dataclass(frozen=True)
class KVStoreDecision:
    """Outcome of :func:`resolve_kvstore`: the kvstore to use (``None``: none) and where updates run."""

    kvstore: object | None
    update_on_kvstore: bool
    distributed: bool


def _default_update_on_kvstore() -> bool:
    return bool(int(os.environ.get("MXNET_UPDATE_ON_KVSTORE", "1")))  # Gluon 2.0 reads the same variable


def resolve_kvstore(kvstore, num_device: int, update_on_kvstore, aggregate_num, compression_params=None
                    ) -> KVStoreDecision:
    """Gluon 2.0's kvstore decision (``Trainer.__init__`` + ``_init_kvstore`` + ``model._create_kvstore``).

    One row per case; ``tests/test_trainer.py`` has a test per row (``uok`` = ``update_on_kvstore``; its
    default is ``MXNET_UPDATE_ON_KVSTORE``, 1 unless set):

    ==========================  ========  =====================  ============================================
    kvstore                     devices   update_on_kvstore      outcome
    ==========================  ========  =====================  ============================================
    any                         any       True, aggregate > 1    ValueError (aggregated updates cannot run on
                                                                 a kvstore)
    any                         any       None, aggregate > 1    as ``False`` below
    ``None``                    any       any                    no kvstore, updates in the Trainer
    'local'/'device'/'nccl'     1         any                    no kvstore (one device has nothing to
                                                                 reduce); ``compression_params`` unused
    'local'/'device'/'nccl'     > 1       None / True / False    ``optzoo.kvstore.create(name)``; uok default
    'dist_sync',                any       None / True / False    ``create(name)`` (needs a torch.distributed
    'dist_device_sync'                                           process group, e.g. torchrun); uok default
    'dist_async'                any       None / True            ``create(name)``; uok True (server updates)
    'dist_async'                any       False                  ValueError (async needs the server to update)
    a KVStoreBase object        any       as its type's row      that object
    horovod, byteps, other      any       any                    ValueError (not available / unknown)
    other types                 any       any                    TypeError
    ==========================  ========  =====================  ============================================

    With a kvstore, ``compression_params`` are set on it (``'local'`` refuses compression, as MXNet).
    """
    from . import kvstore as kvs  # lazy: torch.distributed is only touched when a kvstore is asked for

    if update_on_kvstore is not None:
        check_bool("update_on_kvstore", update_on_kvstore)
    create_compression(compression_params)  # validates the parameters (a single process ignores them)
    if aggregate_num > 1:
        if update_on_kvstore:
            raise ValueError("update_on_kvstore=True cannot be used with aggregated updates (the optimizer's "
                             f"aggregate_num is {aggregate_num} > 1); leave update_on_kvstore as None or "
                             "False")
        update_on_kvstore = False
    if kvstore is None:
        return KVStoreDecision(None, False, False)
    if isinstance(kvstore, (bool, numbers.Number)) or not isinstance(kvstore, (str, kvs.KVStoreBase)):
        raise TypeError(f"kvstore must be a string, an optzoo.kvstore KVStore object or None, got {kvstore!r}")
    name = kvstore.lower() if isinstance(kvstore, str) else kvstore.type
    if name in _DIST_PLUGINS:
        raise ValueError(f"kvstore={kvstore!r} is a Horovod/BytePS plugin, which optzoo does not include: "
                         "optzoo's distributed kvstores run on torch.distributed; use 'dist_sync'")
    if name not in kvs.KVSTORE_TYPES:
        raise ValueError(f"kvstore must be one of {', '.join(map(repr, kvs.KVSTORE_TYPES))}, a KVStore "
                         f"object or None; got {kvstore!r}")
    distributed = "dist" in name
    if isinstance(kvstore, str) and not distributed and num_device == 1:
        if compression_params:
            warnings.warn("compression_params have no effect: single-process training with one device per "
                          "parameter creates no kvstore, so gradients are not communicated (as in Gluon)",
                          stacklevel=3)
        return KVStoreDecision(None, False, False)
    if name == "dist_async":
        if update_on_kvstore is False:
            why = ("aggregated updates (aggregate_num > 1) run in the Trainer" if aggregate_num > 1
                   else "update_on_kvstore=False was given")
            raise ValueError(f"kvstore='dist_async' needs update_on_kvstore=True: the server applies the "
                             f"optimizer to every push as it arrives, but {why}")
        update_on_kvstore = True
    elif update_on_kvstore is None:
        update_on_kvstore = _default_update_on_kvstore()
    store = kvs.create(name) if isinstance(kvstore, str) else kvstore
    if compression_params:
        store.set_gradient_compression(compression_params)
    return KVStoreDecision(store, bool(update_on_kvstore), distributed)


# ---------------------------------------------------------------------------------------------- parameters
def _collect_params(params) -> tuple[list[str], list[torch.Tensor]]:
    """``(names, tensors)``, de-duplicated by identity (first name wins), in Gluon's order."""
    if isinstance(params, torch.nn.Module):
        params = dict(params.named_parameters())
    if isinstance(params, Mapping):
        bad = [k for k in params if not isinstance(k, str)]
        if bad:
            raise TypeError(f"params: a dict must map names (str) to parameters; got key {bad[0]!r}")
        items = [(k, params[k]) for k in sorted(params)]  # Gluon sorts a dict of parameters by name
    elif isinstance(params, (torch.Tensor, str, bytes)) or not isinstance(params, Iterable):
        raise TypeError("params must be a torch.nn.Module, module.named_parameters(), a dict name -> "
                        f"parameter or a list of parameters; got {type(params).__name__}")
    else:
        items = list(params)
        if any(isinstance(item, Mapping) for item in items):
            raise TypeError("params: torch-style param groups (dicts) are not supported; set lr_mult / "
                            "wd_mult attributes on parameters instead (p.lr_mult = 0.1)")
        named = [isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in items]
        if items and all(named):
            pass
        elif not any(named):
            items = [(f"param{i}", p) for i, p in enumerate(items)]
        else:
            raise TypeError("params: a list must hold either parameters or (name, parameter) pairs, not both")
    names, tensors, seen, taken = [], [], set(), set()
    for name, p in items:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params: {name!r} is a {type(p).__name__}, not a torch.Tensor / nn.Parameter")
        if not p.is_leaf:
            raise ValueError(f"params: {name!r} is not a leaf tensor (it was computed from others); pass the "
                             "nn.Parameter / leaf tensor itself")
        if not p.is_floating_point():
            raise TypeError(f"params: {name!r} has dtype {p.dtype}; only floating point parameters can be "
                            "trained")
        if id(p) in seen:  # shared parameter: updated once, under its first name
            continue
        if name in taken:
            raise ValueError(f"params: two different parameters are named {name!r}")
        seen.add(id(p))
        taken.add(name)
        names.append(name)
        tensors.append(p)
    if not tensors:
        raise ValueError("params is empty: the Trainer needs at least one parameter")
    return names, tensors


def _accumulator(p: torch.Tensor):
    """The AccumulateGrad node that writes ``p.grad`` (torch replaces it when ``p.data`` changes type)."""
    if hasattr(torch.autograd.graph, "get_gradient_edge"):
        return torch.autograd.graph.get_gradient_edge(p).node
    with torch.enable_grad():  # torch < 2.2
        return p.view_as(p).grad_fn.next_functions[0][0]


def _before_backward(trainer_ref, index, grad):
    """Tensor hook (kept across ``p.data`` swaps): makes sure the accumulator about to run has our pre-hook.
    It also runs for ``torch.autograd.grad``, which must not touch ``.grad``, hence the separate node hook."""
    trainer = trainer_ref()
    if trainer is not None:
        trainer._attach(index)


def _before_accumulate(trainer_ref, index, grad_inputs):
    """AccumulateGrad pre-hook (only runs when backward accumulates): with grad_req='write' the incoming
    gradient replaces the old one."""
    trainer = trainer_ref()
    if trainer is not None and trainer._grad_req_of(index) == "write":
        trainer._params[index].grad = None


def _after_accumulate(trainer_ref, index, tensor):
    trainer = trainer_ref()
    if trainer is not None:
        trainer._fresh[index] = True


def _remove_handles(hooks: dict) -> None:
    for entry in hooks.values():
        for item in entry:
            if isinstance(item, RemovableHandle):
                item.remove()
    hooks.clear()


# ---------------------------------------------------------------------------------------------- Trainer
class Trainer:
    """Applies an optzoo optimizer to a set of torch parameters, with MXNet 2.0 Gluon ``Trainer`` semantics.

    Args:
        params: a ``torch.nn.Module``, ``module.named_parameters()``, a dict name -> parameter (ordered by
            name, as Gluon orders ``collect_params()``; a Module is treated as ``dict(named_parameters())``)
            or a list of parameters (named ``param0``, ``param1``, ... in checkpoints). Shared parameters are
            updated once. Parameter *i* in this order is optimizer index *i*.
        optimizer: a registered optimizer name (``"sgd"``, ``"adam"``, ...) or an
            :class:`optzoo.optimizer.Optimizer` instance (then ``optimizer_params`` must be empty).
        optimizer_params: constructor arguments for a named optimizer, MXNet names (``{"learning_rate": 0.1,
            "momentum": 0.9, "wd": 1e-4, "clip_gradient": 1.0, "lr_scheduler": s}``).
        kvstore: ``'device'`` (default), ``'local'``, ``'nccl'``, ``None`` (in one process these create no
            kvstore, as Gluon does for one device), ``'dist_sync'``/``'dist_device_sync'``/``'dist_async'``
            (:mod:`optzoo.kvstore` on torch.distributed: gradients are *summed* over workers, so pass the
            global batch size to :meth:`step` for a mean) or an ``optzoo.kvstore`` object.
        compression_params: gradient compression for a kvstore, e.g. ``{'type': '2bit', 'threshold': 0.5}``;
            validated, and unused without a kvstore (a warning says so).
        update_on_kvstore: ``None``/``True``/``False`` (see :func:`resolve_kvstore`); ``True`` with
            ``aggregate_num > 1`` is an error, ``False`` with ``'dist_async'`` too.
        grad_req: ``'write'`` (every backward replaces the gradient, Gluon's default) or ``'add'``
            (backwards accumulate until :meth:`zero_grad`). A ``grad_req`` attribute on a parameter
            (``'write'``, ``'add'`` or ``'null'``) overrides it; ``requires_grad=False`` means ``'null'``.

    Example::

        trainer = Trainer(model, "adam", {"learning_rate": 1e-3})
        loss_fn(model(x), y).sum().backward(); trainer.step(len(x))
    """

    def __init__(self, params, optimizer, optimizer_params=None, kvstore="device", compression_params=None,
                 update_on_kvstore=None, *, grad_req: str = "write"):
        self._names, self._params = _collect_params(params)
        self._grad_req = check_choice("grad_req", grad_req, ("write", "add"))
        if (any(sharding.is_dtensor(p) for p in self._params) and kvstore is not None
                and not (isinstance(kvstore, str) and kvstore.lower() in ("device", "local", "nccl"))):
            raise ValueError(f"kvstore={kvstore!r}: the parameters are DTensors (FSDP2), whose gradients FSDP2 "
                             "already reduces across processes; use kvstore=None")
        self._optimizer = self._init_optimizer(optimizer, optimizer_params)
        self._updater: Updater = get_updater(self._optimizer)
        self._scale = self._optimizer.rescale_grad  # captured once, as Gluon does
        decision = resolve_kvstore(kvstore, 1, update_on_kvstore, self._optimizer.aggregate_num,
                                   compression_params)
        self._kvstore = decision.kvstore
        self._update_on_kvstore = decision.update_on_kvstore
        self._distributed = decision.distributed
        self._compression_params = compression_params
        self._kv_initialized = False
        self._kv_stepped = False
        if self._kvstore is not None:
            # Gluon does this at the first step, after the first backward has used each worker's own initial
            # weights; doing it here makes every worker's first gradient use rank 0's weights.
            self._init_kv_params()
        self._fresh = [False] * len(self._params)
        self._tensor_hooks: dict[int, tuple] = {}
        self._node_hooks: dict[int, tuple] = {}
        weakref.finalize(self, _remove_handles, self._tensor_hooks)
        weakref.finalize(self, _remove_handles, self._node_hooks)
        self._watch_params()

    def _param_dict(self) -> dict[int, torch.Tensor]:
        return dict(enumerate(self._params))

    def _init_optimizer(self, optimizer, optimizer_params) -> Optimizer:
        if optimizer_params is not None and not isinstance(optimizer_params, Mapping):
            raise TypeError(f"optimizer_params must be a dict of optimizer arguments or None, got "
                            f"{type(optimizer_params).__name__}")
        optimizer_params = dict(optimizer_params or {})
        if isinstance(optimizer, Optimizer):
            if optimizer_params:
                raise ValueError("optimizer_params must be empty when optimizer is an Optimizer instance; "
                                 "pass a registered name to have the Trainer build it")
            optimizer.param_dict = self._param_dict()  # not copied: lr_mult/wd_mult edits are seen live
            return optimizer
        if isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("optimizer must be an optzoo optimizer name or instance, not a torch.optim "
                            "optimizer")
        if not isinstance(optimizer, str):
            raise TypeError(f"optimizer must be a registered optimizer name or an optzoo Optimizer, got "
                            f"{type(optimizer).__name__}")
        if "param_dict" in optimizer_params:
            raise ValueError("optimizer_params must not contain 'param_dict': the Trainer passes its "
                             "parameters")
        return create(optimizer, param_dict=self._param_dict(), **optimizer_params)

    # ------------------------------------------------------------------------------------------ gradients
    def _grad_req_of(self, index: int) -> str:
        p = self._params[index]
        if not p.requires_grad:
            return "null"
        req = getattr(p, "grad_req", self._grad_req)
        if req not in GRAD_REQS:
            raise ValueError(f"parameter {self._names[index]!r}: grad_req must be one of "
                             f"{', '.join(map(repr, GRAD_REQS))}, got {req!r}")
        return req

    def _watch_params(self) -> None:
        """Hooks every parameter that requires grad (again for parameters unfrozen since the last step).

        A gradient that exists when watching starts counts as fresh (Gluon flags it at backward time,
        before any Trainer exists)."""
        ref = weakref.ref(self)
        for i, p in enumerate(self._params):
            if i in self._tensor_hooks or not p.requires_grad:
                continue
            self._tensor_hooks[i] = (
                p.register_hook(functools.partial(_before_backward, ref, i)),
                p.register_post_accumulate_grad_hook(functools.partial(_after_accumulate, ref, i)))
            self._attach(i)
            self._fresh[i] = p.grad is not None

    def _attach(self, index: int) -> None:
        """Puts the write pre-hook on the parameter's current AccumulateGrad node (once per node)."""
        node = _accumulator(self._params[index])
        held = self._node_hooks.get(index)
        if held is not None and held[0] is node:
            return
        if held is not None:
            held[1].remove()
        # holding the node keeps it (and so the hook) alive: torch only keeps a weak reference
        self._node_hooks[index] = (node, node.register_prehook(functools.partial(_before_accumulate,
                                                                                 weakref.ref(self), index)))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears every parameter's gradient (needed with ``grad_req='add'``; harmless with ``'write'``).

        ``set_to_none=False`` zeroes in place (Gluon's ``zero_grad``). Freshness is unchanged, as in Gluon; a
        parameter without a gradient (``None``) is stale until its next backward.
        """
        check_bool("set_to_none", set_to_none)
        for p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    # ------------------------------------------------------------------------------------------ stepping
    def _check_batch_size(self, batch_size) -> float:
        return self._scale / check_real("batch_size", batch_size, 0.0, low_open=True)

    def step(self, batch_size, ignore_stale_grad: bool = False) -> None:
        """One update: :meth:`allreduce_grads` then :meth:`update`.

        Args:
            batch_size: gradients are multiplied by ``scale / batch_size`` (pass 1 if the loss is a mean).
            ignore_stale_grad: skip parameters whose gradient no backward produced since their last update,
                instead of raising :class:`StaleGradientError`.
        """
        rescale_grad = self._check_batch_size(batch_size)
        check_bool("ignore_stale_grad", ignore_stale_grad)
        self._check_kv_rescale(rescale_grad)
        self._optimizer.rescale_grad = rescale_grad
        self._allreduce_grads()
        self._update(ignore_stale_grad)

    def allreduce_grads(self) -> None:
        """Sums each parameter's gradient over devices and workers (call between backward and :meth:`update`,
        e.g. to clip the summed gradients yourself). In one process the gradients are already complete;
        a distributed kvstore (``optzoo.kvstore``) sums them here. Not available with ``update_on_kvstore``
        (the kvstore updates the weights in :meth:`step`), as in Gluon."""
        if self._kvstore is not None and self._update_on_kvstore:
            raise ValueError("allreduce_grads() is not supported when parameters are updated on the kvstore "
                             "(update_on_kvstore=True); use step(), or create the Trainer with "
                             "update_on_kvstore=False")
        self._allreduce_grads()

    def _check_kv_rescale(self, rescale_grad: float) -> None:
        """Gluon's ``_check_and_rescale_grad``: with a distributed kvstore that updates, every worker (or the
        server) must keep one ``rescale_grad``; a changed ``batch_size`` after the first step is an error."""
        if not (self._distributed and self._update_on_kvstore):
            return
        # compared with this worker's own last value: on dist_async rank 0 the optimizer is the server's too, and
        # its rescale_grad is whatever the last applied push (from any worker) used
        if self._kv_stepped and self._kv_rescale != rescale_grad:
            raise UserWarning(
                f"Possible change in the `batch_size` from the previous `step` detected (rescale_grad "
                f"{self._kv_rescale} -> {rescale_grad}). With update_on_kvstore=True and a "
                "distributed kvstore the optimizer's rescale_grad cannot change (as in Gluon): keep the batch "
                "size constant (drop the last incomplete batch) or use update_on_kvstore=False")
        self._kv_stepped = True
        self._kv_rescale = rescale_grad
        if hasattr(self._kvstore, "push_rescale"):  # dist_async: every push carries its worker's rescale
            self._kvstore.push_rescale = rescale_grad

    def _init_kv_params(self) -> None:
        """Gluon's ``_init_params``: every worker starts from rank 0's weights (broadcast / server init)."""
        kv = self._kvstore
        if self._update_on_kvstore:
            kv._set_updater(self._updater)  # the kvstore's optimizer *is* the Trainer's (one state store)
        with torch.no_grad():
            for i, p in enumerate(self._params):
                kv.broadcast(i, p.data, out=p.data)
        self._kv_initialized = True

    def _allreduce_grads(self) -> None:
        # One process without a kvstore: the gradients are already complete, there is nothing to sum.
        kv = self._kvstore
        if kv is None:
            return
        if not self._kv_initialized:
            self._init_kv_params()
        if self._update_on_kvstore:
            kv._set_updater(self._updater)  # load_states may have replaced it
        with torch.no_grad():
            for i, p in enumerate(self._params):
                if self._grad_req_of(i) == "null":
                    continue
                # every worker must take part in every key's exchange: a missing gradient contributes zeros
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                if self._update_on_kvstore:
                    kv.pushpull(i, grad, out=p.data)
                elif grad.layout != torch.strided:
                    summed = torch.empty(p.shape, dtype=p.dtype, device=p.device)
                    kv.pushpull(i, grad, out=summed)
                    p.grad = summed
                else:
                    kv.pushpull(i, grad)

    def update(self, batch_size, ignore_stale_grad: bool = False) -> None:
        """The optimizer half of :meth:`step` (call it after :meth:`allreduce_grads`); not available with
        ``update_on_kvstore`` (Gluon asserts the same)."""
        if self._kvstore is not None and self._update_on_kvstore:
            raise ValueError("update() is not supported when parameters are updated on the kvstore "
                             "(update_on_kvstore=True); use step(), or update_on_kvstore=False")
        rescale_grad = self._check_batch_size(batch_size)
        check_bool("ignore_stale_grad", ignore_stale_grad)
        self._optimizer.rescale_grad = rescale_grad
        self._update(ignore_stale_grad)

    def _update(self, ignore_stale_grad: bool) -> None:
        self._watch_params()
        fresh, stale = [], []
        for i, p in enumerate(self._params):
            if self._grad_req_of(i) == "null":
                continue
            # FSDP2 writes a sharded (DTensor) parameter's .grad after backward, past the hooks: it is fresh when set
            (fresh if (self._fresh[i] or sharding.is_dtensor(p)) and p.grad is not None else stale).append(i)
        if stale and not ignore_stale_grad:
            listed = ", ".join(repr(self._names[i]) + ("" if self._params[i].grad is not None
                                                       else " (no gradient)") for i in stale[:10])
            more = f" and {len(stale) - 10} more" if len(stale) > 10 else ""
            raise StaleGradientError(
                f"Gradient of parameter(s) {listed}{more} has not been updated by backward since the last "
                "step. This could mean a bug in your model that made it use only a subset of its parameters "
                "in this iteration. If that is intended, call step(..., ignore_stale_grad=True) to skip "
                "them, or set requires_grad=False (or p.grad_req = 'null') on parameters you do not train.",
                [self._names[i] for i in stale])
        if not fresh:
            return
        if self._kvstore is not None and self._update_on_kvstore:
            for i in fresh:  # the kvstore already updated them in _allreduce_grads
                self._fresh[i] = False
            return
        for i in fresh:
            p = self._params[i]
            for attr in ("lr_mult", "wd_mult"):
                if hasattr(p, attr):
                    check_real(f"{attr} of parameter {self._names[i]!r}", getattr(p, attr), 0.0)
        with torch.no_grad():
            self._updater(fresh, [self._params[i].grad for i in fresh], [self._params[i] for i in fresh])
        for i in fresh:
            self._fresh[i] = False
            if sharding.is_dtensor(self._params[i]) and self._grad_req_of(i) == "write":
                self._params[i].grad = None  # FSDP2 adds to an existing gradient; 'write' replaces it

    # ------------------------------------------------------------------------------------------ learning rate
    @property
    def optimizer(self) -> Optimizer:
        """The optimizer (replaced by the saved one in :meth:`load_states`)."""
        return self._optimizer

    @property
    def kvstore(self):
        """The kvstore that sums gradients across processes (``rank``, ``num_workers``, ...), or ``None`` when
        nothing is reduced (one process)."""
        return self._kvstore

    @property
    def learning_rate(self) -> float:
        """The current learning rate (the scheduler's value at ``optimizer.num_update`` if it has one)."""
        return self._optimizer.learning_rate

    def set_learning_rate(self, lr: float) -> None:
        """Sets the learning rate; a ValueError if an ``lr_scheduler`` owns it."""
        self._optimizer.set_learning_rate(lr)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Parameter names in optimizer-index order (the keys of checkpoints)."""
        return tuple(self._names)

    # ------------------------------------------------------------------------------------------ train / eval
    def train(self) -> None:
        """Puts an optimizer with train/eval modes (Schedule-Free) in train mode, moving the parameters back to
        the point where gradients are taken; a no-op for other optimizers."""
        self._swap_mode("train")

    def eval(self) -> None:
        """Puts an optimizer with train/eval modes (Schedule-Free) in eval mode: the parameters take the averaged
        weights, which evaluation and saved models must use; a no-op for other optimizers."""
        self._swap_mode("eval")

    def _swap_mode(self, mode: str) -> None:
        swap = getattr(self._optimizer, mode, None)
        if callable(swap):
            states = self._updater.states
            indices = [i for i in range(len(self._params)) if i in states]
            swap([self._params[i].data for i in indices], [states[i] for i in indices])

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The optimizer and its per-parameter states keyed by parameter name, as
        ``{"meta": ..., "tensors": ...}``: JSON-able metadata and a flat dict of tensors (``torch.save`` and
        ``torch.load(weights_only=True)`` work; :meth:`save_states` writes the same with no pickle).

        Tensors are the live states (as torch's ``state_dict``): save or copy them before stepping again.
        Parameter values and ``lr_mult``/``wd_mult`` attributes are not included (Gluon does the same).
        """
        # sharded (FSDP2) states are gathered into whole tensors: every rank must call
        return checkpoint.trainer_state(self._names, self._params, sharding.gathered(self._updater))

    def load_state_dict(self, state_dict: Mapping, allow_optimizer_change: bool = False) -> None:
        """Restores :meth:`state_dict` output (tensors are copied). The saved optimizer replaces the current
        one (learning rate, weight decay, scheduler and update counts come from the checkpoint, as Gluon's
        ``load_states``); its ``param_dict`` is this Trainer's parameters. Parameters are matched by name,
        so a model whose parameter order changed loads; a missing, extra or mismatched (shape/dtype)
        parameter is a ValueError. On error the Trainer is unchanged.

        A checkpoint of another optimizer class (Adam states into an SGD Trainer) is a ValueError unless
        ``allow_optimizer_change=True``; states whose shape or dtype does not fit their parameter are one too."""
        self._restore(state_dict, copy=True, allow_optimizer_change=allow_optimizer_change)

    def _restore(self, state_dict: Mapping, copy: bool, allow_optimizer_change: bool = False) -> None:
        optimizer, states = checkpoint.restore_trainer_state(state_dict, self._names, self._params,
                                                             self._param_dict(), copy=copy, current=self._optimizer,
                                                             allow_optimizer_change=allow_optimizer_change)
        updater = get_updater(optimizer)
        updater.states = states
        updater.states_synced = dict.fromkeys(states, False)  # moved to the weight's device when next used
        self._optimizer, self._updater = optimizer, updater

    def save_states(self, fname) -> None:
        """Writes :meth:`state_dict` to ``fname`` atomically: a crash mid-save leaves the previous file
        intact. Sharded (FSDP2) states: every rank calls it, the states are gathered and rank 0 writes one
        file, which :meth:`load_states` cuts to each rank's rows on any number of processes. With
        ``dist_sync`` every rank holds the same states and writes them."""
        if not isinstance(fname, (str, os.PathLike)):
            raise TypeError(f"fname must be a path (str or os.PathLike), got {type(fname).__name__}")
        state = self.state_dict()
        if sharding.writes_checkpoint(self._updater):
            atomic_write(fname, dumps(state["tensors"], state["meta"]))

    def load_states(self, fname, allow_optimizer_change: bool = False, **mxnet_options) -> None:
        """Loads :meth:`save_states` output (see :meth:`load_state_dict`). Loading never executes code; a file that
        is not an intact checkpoint is a CheckpointError.

        An MXNet states file (Gluon ``Trainer.save_states``, ``Module.save_optimizer_states``; recognised by
        its content) is loaded by :func:`optzoo.mxnet.resume_trainer`, which takes ``mxnet_options``
        (``params``, ``param_names``, ``mapping``, ``mxnet_version``); ``allow_optimizer_change`` means the same for
        both formats."""
        if not isinstance(fname, (str, os.PathLike)):
            raise TypeError(f"fname must be a path (str or os.PathLike), got {type(fname).__name__}")
        from . import mxnet

        if mxnet.load_trainer_states(self, fname, allow_optimizer_change=allow_optimizer_change, **mxnet_options):
            return
        if mxnet_options:
            raise TypeError(f"options {sorted(mxnet_options)} only apply to MXNet states files")
        tensors, meta = load(fname)
        self._restore({"meta": meta, "tensors": tensors}, copy=False, allow_optimizer_change=allow_optimizer_change)

    def __repr__(self) -> str:
        return (f"Trainer({len(self._params)} parameters, optimizer={self._optimizer!r}, "
                f"grad_req={self._grad_req!r})")
