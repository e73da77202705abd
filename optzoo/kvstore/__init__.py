"""MXNet's KVStore on ``torch.distributed``: 'local', 'device', 'dist_sync', 'dist_device_sync', 'dist_async'.

``create(name)`` returns a kvstore with MXNet's surface (``init``, ``push``, ``pull``, ``pushpull``,
``broadcast``, ``rank``, ``num_workers``, ``set_optimizer``, ``set_gradient_compression``, ``barrier``,
``save_optimizer_states``/``load_optimizer_states`` for local kvstores). Distributed kinds join the default
``torch.distributed`` process group, creating it from torchrun's environment when needed (NCCL with CUDA,
gloo on CPU). Usually the :class:`optzoo.Trainer` builds it: ``Trainer(model, 'sgd', ..., kvstore='dist_sync')``.

**Gradients are summed across workers, not averaged** (MXNet). Gluon's ``trainer.step(batch_size)`` sets
``rescale_grad = 1 / batch_size``, so ``batch_size`` must be the *global* batch to get a mean gradient.
Worked example: 4 workers, each with a batch of 32 samples and a loss summed over its samples:

* ``trainer.step(32)``: every worker's gradient is a sum over 32 samples; dist_sync adds the 4 of them
  (a sum over 128 samples) and the optimizer multiplies by ``1/32``: the update uses **4x** the mean
  gradient of the 128 samples, i.e. the learning rate is effectively 4x that of one process on 128 samples.
* ``trainer.step(32 * kv.num_workers)`` = ``step(128)``: rescale ``1/128`` gives exactly the mean over the
  global batch, so N workers on batches of B follow the single-process run on the concatenated N*B batch.

(MXNet's Module API used ``1/(batch_size * num_workers)`` for dist_sync; Gluon does not.)

Compression (``set_gradient_compression({'type': '2bit', 'threshold': 0.5})`` or the Trainer's
``compression_params``) quantises every gradient as MXNet does; dist_sync sums the packed gradients with a
compressed reduce-scatter (see :mod:`optzoo.kvstore.dist` and :mod:`optzoo.kvstore.compression`).
"""

from __future__ import annotations

from .base import KVStoreBase, KVStoreError
from .compression import Compression, OneBitCompression, TwoBitCompression, create_compression
from .dist import DistAsyncKVStore, DistSyncKVStore, ensure_process_group
from .local import LocalKVStore

__all__ = ["KVSTORE_TYPES", "Compression", "DistAsyncKVStore", "DistSyncKVStore", "KVStoreBase", "KVStoreError",
           "LocalKVStore", "OneBitCompression", "TwoBitCompression", "create", "create_compression",
           "ensure_process_group"]

#: the names :func:`create` accepts
KVSTORE_TYPES = ("local", "device", "nccl", "dist_sync", "dist_device_sync", "dist_async")


def create(name: str = "local", *, timeout=None) -> KVStoreBase:
    """MXNet's ``mx.kv.create``. ``timeout`` (seconds) bounds every blocking call of a distributed kvstore
    (default ``OPTZOO_KVSTORE_TIMEOUT``, else 300 s), whatever the process group's own timeout: the kvstore
    communicates on process groups it creates with it (``close()`` destroys them)."""
    if not isinstance(name, str):
        raise TypeError(f"kvstore name must be a string, got {type(name).__name__}")
    kind = name.lower()
    if kind in ("local", "device", "nccl"):
        return LocalKVStore(kind)
    if kind in ("dist_sync", "dist_device_sync"):
        return DistSyncKVStore(kind, timeout)
    if kind == "dist_async":
        return DistAsyncKVStore(kind, timeout)
    if kind in ("dist_sync_device", "dist", "horovod", "byteps", "p3"):
        hint = " (optzoo runs on torch.distributed; use 'dist_sync')"
    else:
        hint = ""
    raise ValueError(f"unknown kvstore type {name!r}{hint}; valid types: {', '.join(map(repr, KVSTORE_TYPES))}")
