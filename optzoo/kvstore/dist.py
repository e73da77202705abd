"""Distributed kvstores on ``torch.distributed``: 'dist_sync' / 'dist_device_sync' and 'dist_async'.

* **dist_sync**: every push is a collective. Without compression the gradients are summed with
  ``all_reduce(SUM)``; with compression each worker quantises its gradient (own residual), the packed
  ``uint8`` words travel with ``all_gather`` and every worker dequantises and sums them in rank order. With
  an optimizer set (``update_on_kvstore=True``) each worker applies it to its replica of the weight with the
  same summed gradient: MXNet's server applies it once and everybody pulls the result, which gives the same
  numbers without a server round trip.
* **dist_async**: rank 0 runs a parameter server in a background thread: the other workers send their
  (optionally compressed) gradients point-to-point (``send``/``recv`` on a private gloo group) and the server
  applies the optimizer per push, with no barrier between workers; ``pull`` asks the server for the current
  weight. Rank 0 is also a worker (its pushes go straight to the server object).

Failures: every collective runs under the process group timeout (``timeout=`` of :func:`optzoo.kvstore.create`
when it creates the group, else the group's own; ``OPTZOO_KVSTORE_TIMEOUT`` or 300 s by default) and any
communication failure becomes a :class:`KVStoreError` naming the operation, the key and this rank;
:meth:`barrier` is a ``monitored_barrier`` that names the ranks that did not arrive.
"""

from __future__ import annotations

import atexit
import datetime
import os
import threading
import warnings
import zlib

import torch
import torch.distributed as dist

from .base import KVStoreBase, KVStoreError

__all__ = ["DistAsyncKVStore", "DistSyncKVStore", "ensure_process_group"]

_PUSH, _PULL, _STOP, _FLUSH = 1, 2, 3, 4
_HEADER, _PAYLOAD, _REPLY = 11, 12, 13  # p2p tags


def _timeout(timeout) -> datetime.timedelta:
    if timeout is None:
        timeout = float(os.environ.get("OPTZOO_KVSTORE_TIMEOUT", "300"))
    if isinstance(timeout, datetime.timedelta):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return datetime.timedelta(seconds=float(timeout))


def ensure_process_group(timeout=None) -> None:
    """Uses the existing default process group, or creates one from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when CUDA is available, gloo otherwise."""
    if not dist.is_available():
        raise RuntimeError("distributed kvstores need torch.distributed, which this torch build lacks")
    if dist.is_initialized():
        return
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"distributed kvstores need a torch.distributed process group: launch the script with torchrun "
            f"(e.g. `torchrun --nproc-per-node=2 train.py`) or call torch.distributed.init_process_group "
            f"first (missing environment variables: {', '.join(missing)})")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=_timeout(timeout))


def _group_timeout():
    """The default process group's timeout (``init_process_group(timeout=...)``), or None if unknown."""
    try:
        return dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu")).options._timeout
    except Exception:  # private API: fall back to OPTZOO_KVSTORE_TIMEOUT / 300 s
        return None


class _DistBase(KVStoreBase):
    def __init__(self, name: str, timeout=None):
        super().__init__(name)
        ensure_process_group(timeout)
        self._timeout = _timeout(timeout if timeout is not None else _group_timeout())
        self._rank = dist.get_rank()
        self._size = dist.get_world_size()
        # monitored_barrier and the async server need gloo; NCCL jobs get a gloo side group for them
        self._ctrl = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=self._timeout)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def num_workers(self) -> int:
        return self._size

    def _fail(self, what: str, key, exc: BaseException) -> KVStoreError:
        return KVStoreError(
            f"{self.type}: {what} of key {key!r} failed on rank {self._rank} of {self._size}: another worker "
            f"probably died, timed out (timeout {self._timeout.total_seconds():g} s) or pushed different keys. "
            f"Cause: {type(exc).__name__}: {str(exc).strip()[:500]}")

    def barrier(self) -> None:
        try:
            dist.monitored_barrier(group=self._ctrl, timeout=self._timeout, wait_all_ranks=True)
        except Exception as exc:
            raise KVStoreError(f"{self.type}: barrier failed on rank {self._rank}: {str(exc).strip()[:800]}") from exc

    def save_optimizer_states(self, fname, dump_optimizer: bool = False) -> None:
        raise ValueError("Cannot save states for distributed training (as in MXNet): save the Trainer's states "
                         "instead (Trainer.save_states on every worker holds the same optimizer states)")

    load_optimizer_states = save_optimizer_states


class DistSyncKVStore(_DistBase):
    """``'dist_sync'`` / ``'dist_device_sync'``: gradients are summed over all workers on every push."""

    def _init_value(self, key, value):
        value = value.clone().contiguous()
        try:
            dist.broadcast(value, src=0)  # MXNet: worker 0's initial value wins
        except Exception as exc:
            raise self._fail("init (broadcast from rank 0)", key, exc) from exc
        return value

    def broadcast(self, key, value, out, priority: int = 0) -> None:
        """As MXNet; when an optimizer is set and ``out`` is ``value`` (or a view of the same memory, as the
        Trainer passes each parameter), rank 0's value is broadcast into it and the kvstore keeps *that* tensor
        as its weight replica: updates land in the caller's tensor and in-place changes to it
        (``load_state_dict``) are seen."""
        same = (self._updater is not None and isinstance(value, torch.Tensor) and isinstance(out, torch.Tensor)
                and value.layout == torch.strided
                and value.is_contiguous() and out.data_ptr() == value.data_ptr() and out.shape == value.shape
                and out.dtype == value.dtype)
        if not same:
            return super().broadcast(key, value, out, priority)
        key = self._check_key(key)
        if key in self._store:
            raise ValueError(f"init: key {key!r} is already initialised")
        try:
            with torch.no_grad():
                dist.broadcast(value, src=0)
        except Exception as exc:
            raise self._fail("init (broadcast from rank 0)", key, exc) from exc
        self._store[key] = value.detach()

    def _reduce(self, key, values):
        merged = values[0].clone().contiguous()
        for v in values[1:]:
            merged += v.to(merged.device)
        try:
            if self._compression is None:
                self.bytes_sent += merged.numel() * merged.element_size()
                dist.all_reduce(merged, op=dist.ReduceOp.SUM)
                return merged
            packed = self._compression.compress(merged, self._residual(key, 0, merged))
            self.bytes_sent += packed.numel()
            gathered = [torch.empty_like(packed) for _ in range(self._size)]
            dist.all_gather(gathered, packed)
        except KVStoreError:
            raise
        except Exception as exc:
            raise self._fail("push (gradient sum)", key, exc) from exc
        total = self._compression.decompress(gathered[0], merged.numel())
        for part in gathered[1:]:
            total += self._compression.decompress(part, merged.numel())
        return total.reshape(merged.shape)


def _key_id(key) -> int:
    return key if isinstance(key, int) else -1 - zlib.crc32(key.encode())  # str keys: negative ids


class DistAsyncKVStore(_DistBase):
    """``'dist_async'``: rank 0 hosts the parameter server; pushes are applied one at a time as they arrive."""

    def __init__(self, name: str = "dist_async", timeout=None):
        super().__init__(name, timeout)
        # requests arrive on a group whose timeout only bounds how long the server waits for *any* message
        # (workers may be idle for long); payloads and replies use the normal timeout
        self._requests = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))
        self._p2p = dist.new_group(backend="gloo", timeout=self._timeout)
        self._lock = threading.Lock()
        self._ids: dict = {}
        self._server_error: BaseException | None = None
        self._closed = False
        self._thread = None
        self.pushes_applied = 0  # on rank 0: pushes the server has applied (all workers)
        if self._rank == 0 and self._size > 1:
            self._thread = threading.Thread(target=self._serve, name="optzoo-kvstore-server", daemon=True)
            self._thread.start()
        atexit.register(self.close)

    # ------------------------------------------------------------------------------------- server (rank 0)
    def _serve(self) -> None:
        stopped = 0
        header = torch.zeros(3, dtype=torch.int64)
        try:
            while stopped < self._size - 1:
                src = dist.recv(header, group=self._requests, tag=_HEADER)
                op, kid, nbytes = (int(x) for x in header)
                if op == _STOP:
                    stopped += 1
                    continue
                if op == _FLUSH:  # everything this worker pushed before has been applied (FIFO per pair)
                    dist.send(torch.zeros(1, dtype=torch.int64), dst=src, group=self._p2p, tag=_REPLY)
                    continue
                with self._lock:
                    key = self._ids[kid]
                    stored = self._store[key]
                if op == _PUSH:
                    payload = torch.empty(nbytes, dtype=torch.uint8)
                    dist.recv(payload, src=src, group=self._p2p, tag=_PAYLOAD)
                    with self._lock:
                        self._server_push(key, payload, stored)
                elif op == _PULL:
                    with self._lock:
                        reply = stored.detach().cpu().clone()
                    dist.send(reply, dst=src, group=self._p2p, tag=_REPLY)
        except Exception as exc:  # reported to rank 0's worker calls
            self._server_error = exc

    def _server_push(self, key, payload: torch.Tensor, stored: torch.Tensor) -> None:
        if self._updater is None:  # MXNet: CHECK "Updater needs to be set for async mode"
            raise ValueError("dist_async: a push arrived but rank 0 set no optimizer on its kvstore "
                             "(set_optimizer / update_on_kvstore=True); the server cannot apply it")
        if self._compression is not None:
            grad = self._compression.decompress(payload, stored.numel()).reshape(stored.shape)
        else:
            grad = payload.view(stored.dtype).reshape(stored.shape)
        self._apply(key, grad.to(stored.device), stored)
        self.pushes_applied += 1

    def _check_server(self, key, what: str) -> None:
        if self._server_error is not None:
            raise self._fail(what, key, self._server_error)

    # ------------------------------------------------------------------------------------- worker side
    def init(self, key, value) -> None:
        with self._lock:
            super().init(key, value)
        self.barrier()  # every worker knows the keys (and rank 0 holds the values) before anyone pushes

    def _init_value(self, key, value):
        kid = _key_id(key)
        if kid in self._ids:
            raise ValueError(f"init: key {key!r} has the same wire id as key {self._ids[kid]!r}; rename one")
        self._ids[kid] = key
        return value.clone().contiguous()  # only rank 0's copy is used: it is the server's

    def push(self, key, value, priority: int = 0) -> None:
        if self._updater is None and self._rank == 0:
            raise ValueError("dist_async needs an optimizer on the kvstore (set_optimizer / "
                             "update_on_kvstore=True): the server applies every push as it arrives")
        for k, v in self._keys_values(key, value, "push"):
            stored = self._stored(k, "push")
            values = [self._dense(k, x, stored) for x in (v if isinstance(v, (list, tuple)) else [v])]
            merged = values[0].detach().clone().contiguous()
            for x in values[1:]:
                merged += x.to(merged.device)
            if self._compression is not None:
                payload = self._compression.compress(merged, self._residual(k, 0, merged)).cpu()
            else:
                payload = merged.cpu().reshape(-1).view(torch.uint8)
            self.bytes_sent += payload.numel()
            if self._rank == 0:
                self._check_server(k, "push")
                with self._lock:
                    self._server_push(k, payload, stored)
                continue
            try:
                dist.send(torch.tensor([_PUSH, _key_id(k), payload.numel()]), dst=0, group=self._requests, tag=_HEADER)
                dist.send(payload, dst=0, group=self._p2p, tag=_PAYLOAD)
            except Exception as exc:
                raise self._fail("push (to the server on rank 0)", k, exc) from exc

    def _pull_value(self, key):
        stored = self._stored(key, "pull")
        if self._rank == 0:
            self._check_server(key, "pull")
            with self._lock:
                return stored.clone()
        reply = torch.empty(stored.shape, dtype=stored.dtype)
        try:
            dist.send(torch.tensor([_PULL, _key_id(key), 0]), dst=0, group=self._requests, tag=_HEADER)
            dist.recv(reply, src=0, group=self._p2p, tag=_REPLY)
        except Exception as exc:
            raise self._fail("pull (from the server on rank 0)", key, exc) from exc
        return reply

    def barrier(self) -> None:
        """Waits for every worker; on return, every push made by any worker before the barrier has been
        applied by the server."""
        if self._rank != 0:
            try:
                dist.send(torch.tensor([_FLUSH, 0, 0]), dst=0, group=self._requests, tag=_HEADER)
                dist.recv(torch.zeros(1, dtype=torch.int64), src=0, group=self._p2p, tag=_REPLY)
            except Exception as exc:
                raise self._fail("barrier (flush to the server on rank 0)", None, exc) from exc
        super().barrier()
        self._check_server(None, "barrier")

    def close(self) -> None:
        """Tells the server this worker is done (rank 0 waits for every worker, then stops the server)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._rank != 0:
                dist.send(torch.tensor([_STOP, 0, 0]), dst=0, group=self._requests, tag=_HEADER)
            elif self._thread is not None:
                self._thread.join(self._timeout.total_seconds())
        except Exception as exc:  # shutting down: the job is over either way
            warnings.warn(f"{self.type}: rank {self._rank} could not close cleanly: {exc}", stacklevel=2)
