"""Distributed kvstores on ``torch.distributed``: 'dist_sync' / 'dist_device_sync' and 'dist_async'.

* **dist_sync**: every push is a collective. Without compression the gradients are summed with
  ``all_reduce(SUM)``. With compression the sum is a compressed reduce-scatter followed by an all-gather of
  small integers: each worker quantises its whole gradient (own residual, MXNet's packing), cuts the packed
  words into one contiguous slice per worker and sends every peer only the slice that peer owns
  (``all_to_all``); the owner of a slice counts, per element, how many workers sent each level (the sum of N
  values from {-t, 0, +t} is ``k * t`` with ``-N <= k <= N``; for 1bit, ``2k - N``) and the owners'
  counts, packed in ``ceil(log2(levels))`` bits (2bit: 3 bits for 2 workers, 4 up to 7, 5 up to 15; 1bit: 2, 3,
  4), travel with ``all_gather``.
  Every worker turns the counts into the summed gradient with one float32 rounding per element. With
  an optimizer set (``update_on_kvstore=True``) each worker applies it to its replica of the weight with the
  same summed gradient: MXNet's server applies it once and everybody pulls the result, which gives the same
  numbers without a server round trip.
* **dist_async**: rank 0 runs a parameter server in a background thread: the other workers send their
  (optionally compressed) gradients point-to-point (``send``/``recv`` on a private gloo group) and the server
  applies the optimizer per push, with no barrier between workers; ``pull`` asks the server for the current
  weight. Rank 0 is also a worker (its pushes go straight to the server object).

Failures: every blocking call of a kvstore is bounded by its timeout (``timeout=`` of
:func:`optzoo.kvstore.create`, else ``OPTZOO_KVSTORE_TIMEOUT``, else 300 s), whether or not the user created the
process group: the kvstore runs its collectives on process groups of its own created with that timeout, and the
dist_async header sends wait with it. Any communication failure becomes a :class:`KVStoreError` naming the
operation, the key and this rank; :meth:`barrier` is a ``monitored_barrier`` that names the ranks that did not
arrive. :meth:`close` destroys the groups the kvstore created (and the default group, if a kvstore created it
and no other open kvstore uses it).

Bytes: ``bytes_sent`` / ``bytes_received`` count the gradient payload each worker hands to and takes from the
wire, by the algorithm's arithmetic (a ring all-reduce moves ``2 (N-1)/N`` of the tensor each way);
``bench/scaling.py`` measures the real socket traffic beside them.
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
from .compression import pack_counts, packed_count_bytes, unpack_counts

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


def ensure_process_group(timeout=None) -> bool:
    """Uses the existing default process group, or creates one from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when CUDA is available, gloo otherwise.
    Returns True when this call created it."""
    if not dist.is_available():
        raise RuntimeError("distributed kvstores need torch.distributed, which this torch build lacks")
    if dist.is_initialized():
        return False
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
    return True


#: open kvstores that use a default process group a kvstore created (the last one to close destroys it)
_default_group_users = 0


class _DistBase(KVStoreBase):
    def __init__(self, name: str, timeout=None):
        global _default_group_users
        super().__init__(name)
        self._timeout = _timeout(timeout)
        created = ensure_process_group(self._timeout)
        if created or _default_group_users:
            _default_group_users += 1
            self._uses_created_default = True
        else:
            self._uses_created_default = False
        self._rank = dist.get_rank()
        self._size = dist.get_world_size()
        self._groups: list = []
        self._closed = False
        # the kvstore's own groups carry its timeout (the default group's may be 30 min or more); monitored_barrier
        # and the async server need gloo, so NCCL jobs get a gloo side group for them
        self._coll = self._new_group()
        self._ctrl = self._coll if dist.get_backend() == "gloo" else self._new_group("gloo")

    def _new_group(self, backend=None, timeout=None):
        group = dist.new_group(backend=backend, timeout=timeout or self._timeout)
        self._groups.append(group)
        return group

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

    def close(self) -> None:
        """Destroys the process groups this kvstore created (and the default group when a kvstore created it
        and this was the last open kvstore using it). The kvstore cannot communicate afterwards."""
        global _default_group_users
        if self._closed:
            return
        self._closed = True
        for group in self._groups:
            try:
                dist.destroy_process_group(group)
            except Exception:  # already gone (the default group was destroyed first): nothing left to free
                pass
        self._groups.clear()
        if self._uses_created_default:
            _default_group_users -= 1
            if _default_group_users == 0 and dist.is_initialized():
                dist.destroy_process_group()

    def save_optimizer_states(self, fname, dump_optimizer: bool = False) -> None:
        raise ValueError("Cannot save states for distributed training (as in MXNet): save the Trainer's states "
                         "instead (Trainer.save_states on every worker holds the same optimizer states)")

    load_optimizer_states = save_optimizer_states


class DistSyncKVStore(_DistBase):
    """``'dist_sync'`` / ``'dist_device_sync'``: gradients are summed over all workers on every push."""

    def _init_value(self, key, value):
        value = value.clone().contiguous()
        try:
            dist.broadcast(value, src=0, group=self._coll)  # MXNet: worker 0's initial value wins
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
                dist.broadcast(value, src=0, group=self._coll)
        except Exception as exc:
            raise self._fail("init (broadcast from rank 0)", key, exc) from exc
        self._store[key] = value.detach()

    def _reduce(self, key, values):
        merged = values[0].clone().contiguous()
        for v in values[1:]:
            merged += v.to(merged.device)
        try:
            if self._compression is None:
                ring = 2 * (self._size - 1) * merged.numel() * merged.element_size() // self._size
                self.bytes_sent += ring
                self.bytes_received += ring
                dist.all_reduce(merged, op=dist.ReduceOp.SUM, group=self._coll)
                return merged
            return self._compressed_sum(merged, self._residual(key, 0, merged)).reshape(merged.shape)
        except KVStoreError:
            raise
        except Exception as exc:
            raise self._fail("push (gradient sum)", key, exc) from exc

    def _compressed_sum(self, grad: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The sum over workers of every worker's dequantised gradient: a compressed reduce-scatter (each worker
        sends each peer the packed words of the slice that peer owns), then an all-gather of the owners' level
        counts. Flat float32 on ``grad``'s device."""
        comp, size, rank = self._compression, self._size, self._rank
        numel = grad.numel()
        packed = comp.compress(grad, residual).cpu()
        words = packed.numel() // 4
        per = comp.values_per_word
        bounds = [words * j // size for j in range(size + 1)]  # owner j: packed words bounds[j]..bounds[j+1]
        sizes = [4 * (bounds[j + 1] - bounds[j]) for j in range(size)]
        mine = sizes[rank]
        received = torch.empty(size * mine, dtype=torch.uint8)
        dist.all_to_all_single(received, packed, output_split_sizes=[mine] * size, input_split_sizes=sizes,
                               group=self._coll)
        self.bytes_sent += packed.numel() - sizes[rank]
        self.bytes_received += (size - 1) * mine
        first = bounds[rank] * per
        count = max(0, min(bounds[rank + 1] * per, numel) - first)
        counts = comp.sum_counts(list(received.view(size, mine)) if mine else [], count) if count else \
            torch.zeros(0, dtype=torch.int16)
        levels = comp.count_levels(size)
        # every owner's counts padded to the longest slice, so all_gather sees equal sizes
        longest = max(max(0, min(bounds[j + 1] * per, numel) - bounds[j] * per) for j in range(size))
        chunk = packed_count_bytes(longest, levels)
        mine_packed = torch.zeros(chunk, dtype=torch.uint8)
        encoded = pack_counts(counts, levels)
        mine_packed[:encoded.numel()] = encoded
        gathered = [torch.empty(chunk, dtype=torch.uint8) for _ in range(size)]
        dist.all_gather(gathered, mine_packed, group=self._coll)
        self.bytes_sent += (size - 1) * chunk
        self.bytes_received += (size - 1) * chunk
        parts = []
        for j, data in enumerate(gathered):
            n_j = max(0, min(bounds[j + 1] * per, numel) - bounds[j] * per)
            if n_j:
                parts.append(comp.counts_to_values(unpack_counts(data, n_j, levels), size))
        total = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float32)
        return total.to(grad.device)


def _key_id(key) -> int:
    return key if isinstance(key, int) else -1 - zlib.crc32(key.encode())  # str keys: negative ids


class DistAsyncKVStore(_DistBase):
    """``'dist_async'``: rank 0 hosts the parameter server; pushes are applied one at a time as they arrive."""

    def __init__(self, name: str = "dist_async", timeout=None):
        super().__init__(name, timeout)
        # requests arrive on a group whose timeout only bounds how long the *server* waits for any message
        # (workers may be idle for long); a worker's header send waits at most the kvstore's timeout (isend +
        # wait), and payloads and replies use a group with the normal timeout
        self._requests = self._new_group("gloo", timeout=datetime.timedelta(days=7))
        self._p2p = self._new_group("gloo")
        self._lock = threading.Lock()
        self._ids: dict = {}
        self._server_error: BaseException | None = None
        self._thread = None
        #: the rescale_grad of this worker's pushes (the Trainer sets it at every step); None: the optimizer's
        self.push_rescale: float | None = None
        self.pushes_applied = 0  # on rank 0: pushes the server has applied (all workers)
        if self._rank == 0 and self._size > 1:
            self._thread = threading.Thread(target=self._serve, name="optzoo-kvstore-server", daemon=True)
            self._thread.start()
        atexit.register(self.close)

    # ------------------------------------------------------------------------------------- server (rank 0)
    def _serve(self) -> None:
        stopped = 0
        header = torch.zeros(4, dtype=torch.float64)
        try:
            while stopped < self._size - 1:
                src = dist.recv(header, group=self._requests, tag=_HEADER)
                op, kid, nbytes = (int(x) for x in header[:3])
                rescale = float(header[3])
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
                        self._server_push(key, payload, stored, rescale)
                elif op == _PULL:
                    with self._lock:
                        reply = stored.detach().cpu().clone()
                    dist.send(reply, dst=src, group=self._p2p, tag=_REPLY)
        except Exception as exc:  # reported to rank 0's worker calls
            self._server_error = exc

    def _server_push(self, key, payload: torch.Tensor, stored: torch.Tensor, rescale: float) -> None:
        """Applies one push (called with the lock held) with the ``rescale_grad`` its worker used: the server's
        optimizer is shared by every worker's pushes, so the rescale travels with each push."""
        if self._updater is None:  # MXNet: CHECK "Updater needs to be set for async mode"
            raise ValueError("dist_async: a push arrived but rank 0 set no optimizer on its kvstore "
                             "(set_optimizer / update_on_kvstore=True); the server cannot apply it")
        self._updater.optimizer.rescale_grad = rescale
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

    def _rescale(self) -> float:
        if self.push_rescale is not None:
            return float(self.push_rescale)
        return float(self._updater.optimizer.rescale_grad) if self._updater is not None else 1.0

    def _send_header(self, op: int, kid: int, nbytes: int, rescale: float = 1.0) -> None:
        """Sends one request header to the server, waiting at most the kvstore's timeout."""
        work = dist.isend(torch.tensor([op, kid, nbytes, rescale], dtype=torch.float64), dst=0,
                          group=self._requests, tag=_HEADER)
        work.wait(timeout=self._timeout)

    def push(self, key, value, priority: int = 0) -> None:
        if self._updater is None and self._rank == 0:
            raise ValueError("dist_async needs an optimizer on the kvstore (set_optimizer / "
                             "update_on_kvstore=True): the server applies every push as it arrives")
        rescale = self._rescale()
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
                    self._server_push(k, payload, stored, rescale)
                continue
            try:
                self._send_header(_PUSH, _key_id(k), payload.numel(), rescale)
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
            self._send_header(_PULL, _key_id(key), 0)
            dist.recv(reply, src=0, group=self._p2p, tag=_REPLY)
            self.bytes_received += reply.numel() * reply.element_size()
        except Exception as exc:
            raise self._fail("pull (from the server on rank 0)", key, exc) from exc
        return reply

    def barrier(self) -> None:
        """Waits for every worker; on return, every push made by any worker before the barrier has been
        applied by the server."""
        if self._rank != 0:
            try:
                self._send_header(_FLUSH, 0, 0)
                dist.recv(torch.zeros(1, dtype=torch.int64), src=0, group=self._p2p, tag=_REPLY)
            except Exception as exc:
                raise self._fail("barrier (flush to the server on rank 0)", None, exc) from exc
        super().barrier()
        self._check_server(None, "barrier")

    def close(self) -> None:
        """Tells the server this worker is done (rank 0 waits for every worker, at most the timeout, then stops
        the server), then destroys the groups this kvstore created."""
        if self._closed:
            return
        try:
            if self._rank != 0:
                self._send_header(_STOP, 0, 0)
            elif self._thread is not None:
                self._thread.join(self._timeout.total_seconds())
        except Exception as exc:  # shutting down: the job is over either way
            warnings.warn(f"{self.type}: rank {self._rank} could not close cleanly: {exc}", stacklevel=2)
        if self._thread is not None and self._thread.is_alive():
            warnings.warn(f"{self.type}: the server thread on rank 0 did not stop within the timeout; its groups "
                          "are left in place", stacklevel=2)
            self._closed = True
            return
        super().close()
