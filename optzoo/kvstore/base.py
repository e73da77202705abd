"""The KVStore surface shared by every optzoo kvstore (MXNet's ``mx.kv.KVStore``)."""

from __future__ import annotations

import os

import torch

from ..optimizer.base import Optimizer
from ..optimizer.updater import Updater, get_updater
from .compression import Compression, create_compression

__all__ = ["KVStoreBase", "KVStoreError"]


class KVStoreError(RuntimeError):
    """Communication failed: a worker died, timed out or disagreed on what to exchange."""


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


class KVStoreBase:
    """Keys (``int`` or ``str``) map to tensors. Subclasses implement :meth:`_reduce` (sum of one key's pushed
    values over devices and workers) and may override :meth:`init`, :meth:`pull`, :meth:`barrier`.

    ``push`` sums the pushed values; with an updater (:meth:`set_optimizer`) it applies the optimizer to the
    stored weight with that sum, otherwise the sum replaces the stored value. ``pull`` copies the stored value
    out. Only dense tensors are stored; a row-sparse (``torch.sparse``) push is densified.
    """

    #: MXNet's type string
    type: str = ""

    def __init__(self, name: str):
        self.type = name
        self._store: dict = {}
        self._updater: Updater | None = None
        self._compression: Compression | None = None
        self._compression_params: dict | None = None
        self._residuals: dict = {}
        #: bytes this worker put on the wire for pushes so far (payloads, not protocol overhead)
        self.bytes_sent = 0
        self.bytes_received = 0

    # ----------------------------------------------------------------------------------------- identity
    @property
    def rank(self) -> int:
        """This worker's rank (0 in a single process)."""
        return 0

    @property
    def num_workers(self) -> int:
        """The number of workers."""
        return 1

    def is_capable(self, capability: str) -> bool:
        """MXNet's capability query: every optzoo kvstore can run an optimizer (``'optimizer'``)."""
        if capability != "optimizer":
            raise ValueError(f"unknown capability {capability!r}; optzoo kvstores know 'optimizer'")
        return True

    # ----------------------------------------------------------------------------------------- keys
    @staticmethod
    def _keys_values(key, value, what: str):
        if isinstance(key, (list, tuple)):
            values = _as_list(value)
            if len(values) != len(key):
                raise ValueError(f"{what}: {len(key)} keys but {len(values)} values")
            return list(zip(key, values))
        return [(key, value)]

    @staticmethod
    def _check_key(key):
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError(f"kvstore keys must be int or str, got {type(key).__name__}")
        return key

    def _stored(self, key, what: str) -> torch.Tensor:
        try:
            return self._store[self._check_key(key)]
        except KeyError:
            raise KeyError(f"{what}: key {key!r} has not been initialised (call init or broadcast first)") from None

    # ----------------------------------------------------------------------------------------- API
    def init(self, key, value) -> None:
        """Initialises ``key`` (or a list of keys) with ``value`` (a tensor, or a list: the first is used)."""
        for k, v in self._keys_values(key, value, "init"):
            k = self._check_key(k)
            if k in self._store:
                raise ValueError(f"init: key {k!r} is already initialised")
            v = _as_list(v)[0]
            self._store[k] = self._init_value(k, v.detach().to_dense() if v.is_sparse else v.detach())

    def _init_value(self, key, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    def push(self, key, value, priority: int = 0) -> None:
        """Pushes ``value`` (a tensor or a list of per-device tensors) for ``key``; the values are summed over
        devices and workers, then the updater (if set) applies them to the stored weight."""
        for k, v in self._keys_values(key, value, "push"):
            stored = self._stored(k, "push")
            merged = self._reduce(k, [self._dense(k, x, stored) for x in _as_list(v)])
            self._apply(k, merged, stored)

    def _apply(self, key, merged: torch.Tensor, stored: torch.Tensor) -> None:
        if self._updater is not None:
            with torch.no_grad():
                self._updater(key, merged, stored)
        else:
            stored.copy_(merged)

    def pull(self, key, out=None, priority: int = 0, ignore_sparse: bool = True) -> None:
        """Copies the stored value of ``key`` into ``out`` (a tensor or a list of per-device tensors)."""
        if out is None:
            raise ValueError("pull needs out= (the tensor(s) to write the value into)")
        for k, o in self._keys_values(key, out, "pull"):
            value = self._pull_value(k)
            for target in _as_list(o):
                if target.data_ptr() == value.data_ptr() and target.shape == value.shape:
                    continue  # the stored value is this tensor's memory (a replica aliasing a parameter)
                with torch.no_grad():
                    target.copy_(value.reshape(target.shape))

    def _pull_value(self, key) -> torch.Tensor:
        return self._stored(key, "pull")

    def pushpull(self, key, value, out=None, priority: int = 0) -> None:
        """``push`` then ``pull``; without ``out`` the result is written back into ``value`` (in-place
        all-reduce of gradients when no optimizer is set)."""
        self.push(key, value, priority)
        self.pull(key, value if out is None else out, priority)

    def broadcast(self, key, value, out, priority: int = 0) -> None:
        """Initialises ``key`` with ``value`` (rank 0's in a distributed kvstore) and pulls it into ``out``."""
        self.init(key, value)
        self.pull(key, out, priority)

    def _dense(self, key, value: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"push: key {key!r}: values must be torch tensors, got {type(value).__name__}")
        if value.layout != torch.strided:
            if self._compression is not None:
                raise ValueError(f"push: key {key!r} has a sparse gradient; gradient compression supports only "
                                 "dense gradients (as in MXNet). Disable compression_params or use dense "
                                 "gradients (nn.Embedding(sparse=False))")
            value = value.to_dense()
        if value.shape != stored.shape:
            raise ValueError(f"push: key {key!r}: shape {tuple(value.shape)} differs from the initialised "
                             f"{tuple(stored.shape)}")
        return value

    def _reduce(self, key, values: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _residual(self, key, slot, like: torch.Tensor) -> torch.Tensor:
        res = self._residuals.get((key, slot))
        if res is None:
            res = self._residuals[(key, slot)] = self._compression.init_residual(like)
        return res

    # ----------------------------------------------------------------------------------------- optimizer
    def set_optimizer(self, optimizer: Optimizer) -> None:
        """Runs ``optimizer`` inside the kvstore: every push updates the stored weight."""
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"set_optimizer needs an optzoo Optimizer, got {type(optimizer).__name__}")
        self._set_updater(get_updater(optimizer))

    def _set_updater(self, updater: Updater) -> None:
        self._updater = updater

    def set_gradient_compression(self, compression_params) -> None:
        """MXNet's ``{'type': '2bit'|'1bit', 'threshold': t}``; allowed for 'device' and 'dist*' kvstores."""
        if "device" not in self.type and "dist" not in self.type:
            raise ValueError(f"Gradient compression is not supported for this type of kvstore ({self.type!r}); "
                             "use 'device' or a 'dist_*' kvstore")
        if self._store and self._compression_params != compression_params:
            raise ValueError("set_gradient_compression must be called before keys are initialised")
        self._compression = create_compression(compression_params)
        self._compression_params = dict(compression_params) if compression_params else None
        self._residuals.clear()

    def save_optimizer_states(self, fname, dump_optimizer: bool = False) -> None:
        """Writes the updater's states (and the optimizer with ``dump_optimizer``) to ``fname``."""
        from ..serialization import atomic_write

        if self._updater is None:
            raise ValueError("save_optimizer_states: no optimizer is set on this kvstore (set_optimizer)")
        if not isinstance(fname, (str, os.PathLike)):
            raise TypeError(f"fname must be a path, got {type(fname).__name__}")
        atomic_write(fname, self._updater.get_states(dump_optimizer))

    def load_optimizer_states(self, fname) -> None:
        """Restores :meth:`save_optimizer_states` output."""
        if self._updater is None:
            raise ValueError("load_optimizer_states: no optimizer is set on this kvstore (set_optimizer)")
        with open(fname, "rb") as f:
            self._updater.set_states(f.read())

    def barrier(self) -> None:
        """Waits for every worker (nothing to wait for in one process)."""

    def close(self) -> None:
        """Releases communication resources (nothing in one process)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.type!r}, rank={self.rank}, num_workers={self.num_workers})"
