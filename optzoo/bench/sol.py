"""The speed of light (SoL) of an optimizer step: optzoo's own single-pass C/OpenMP ``touch`` kernels.

``touch_sK`` reads p, g and K state arrays and writes p and the K states in one pass over a chunk table that
spans every tensor of the list (see ``sol_kernels.c``). Its time over the very tensors an optimizer just
updated, in the same process and at the same thread count, is the fastest any fp32 step with K full-size state
tensors can be on this machine: the SoL.

The C source is compiled with the system ``gcc`` at first use into ``$OPTZOO_CACHE`` (default
``~/.cache/optzoo``), keyed by a hash of the source and the flags, and loaded with ctypes. Import torch first so
the kernels share its ``libgomp.so.1``. Without gcc :func:`load` raises :class:`SolUnavailable` and the
benchmark reports SoL as n/a.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import torch

__all__ = ["CHUNK", "MAX_PASS_LISTS", "MAX_STATES", "PassKernel", "SolUnavailable", "TouchKernel", "bytes_per_param",
           "cache_dir", "load"]

#: elements per work item (128 KiB of fp32): small enough to balance threads, big enough to stream
CHUNK = 1 << 15
#: touch kernels exist for 0..MAX_STATES full-size state tensors
MAX_STATES = 4
#: pass kernels read 1..MAX_PASS_LISTS tensor lists (Prodigy's first pass reads six: w, g, p0, s, m, v)
MAX_PASS_LISTS = 6
#: the same vector width as the native kernels (optzoo.native.NATIVE_ARCH): the SoL is the fastest this machine streams
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC") + (
    ("-mprefer-vector-width=512",) if platform.machine().lower() in ("x86_64", "amd64") else ())

_lib = None


class SolUnavailable(RuntimeError):
    """The SoL kernels cannot be built or loaded (no gcc, or the compile failed)."""


def bytes_per_param(n_states: int, itemsize: int = 4) -> int:
    """Least bytes an in-place step moves per parameter: reads p, g, states; writes p, states."""
    return itemsize * ((2 + n_states) + (1 + n_states))


def cache_dir() -> Path:
    return Path(os.environ.get("OPTZOO_CACHE") or Path.home() / ".cache" / "optzoo")


def _source() -> bytes:
    return resources.files(__package__).joinpath("sol_kernels.c").read_bytes()


def load():
    """Builds (once, cached on disk) and loads the kernels; raises SolUnavailable when that is impossible."""
    global _lib
    if _lib is not None:
        return _lib
    gcc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc")
    source = _source()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"optzoo_sol_{digest}.so"
    if not target.exists():
        if gcc is None:
            raise SolUnavailable("gcc not found: the speed-of-light kernels cannot be built, SoL is reported as n/a")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / "sol_kernels.c"
            src.write_bytes(source)
            out = Path(tmp) / target.name
            proc = subprocess.run([gcc, *CFLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SolUnavailable(f"gcc failed to build the SoL kernels: {proc.stderr.strip()[-400:]}")
            os.replace(out, target)  # atomic: concurrent runs never load a half-written file
    lib = ctypes.CDLL(str(target))
    head = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    for k in range(MAX_STATES + 1):
        fn = getattr(lib, f"optzoo_touch_s{k}")
        fn.argtypes = head + [ctypes.c_void_p] * k + [ctypes.c_float]
        fn.restype = None
    for r in range(1, MAX_PASS_LISTS + 1):
        for w in range(r):
            fn = getattr(lib, f"optzoo_pass_r{r}w{w}")
            fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_float]
            fn.restype = None
    lib.optzoo_sol_set_threads.argtypes = [ctypes.c_int]
    lib.optzoo_sol_get_threads.restype = ctypes.c_int
    _lib = lib
    return lib


def _ptr_table(tensors):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


class TouchKernel:
    """One SoL kernel bound to a tensor list: ``weights``, ``grads`` and ``states[k]`` (one list per state).

    Every tensor must be contiguous float32 with the weight's number of elements. The caller keeps the tensors
    alive while the kernel is used; each call adds ``scale * g`` (negligible by default) to p and every state.
    """

    def __init__(self, weights, grads, states, threads: int, scale: float = 1e-30):
        if len(states) > MAX_STATES:
            raise ValueError(f"touch kernels cover at most {MAX_STATES} state tensors, got {len(states)}")
        lists = [list(weights), list(grads), *[list(s) for s in states]]
        for lst in lists:
            if len(lst) != len(lists[0]):
                raise ValueError("every tensor list must have one tensor per weight")
            for t, w in zip(lst, lists[0]):
                if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != w.numel():
                    raise ValueError("touch kernels need contiguous float32 tensors of the weight's size")
        self._lib = load()
        self._fn = getattr(self._lib, f"optzoo_touch_s{len(states)}")
        tensor, offset, length = [], [], []
        for i, w in enumerate(lists[0]):
            n = w.numel()
            for off in range(0, n, CHUNK):
                tensor.append(i)
                offset.append(off)
                length.append(min(CHUNK, n - off))
        self.n_chunks = len(tensor)
        self._ct = (ctypes.c_int32 * self.n_chunks)(*tensor)
        self._co = (ctypes.c_int64 * self.n_chunks)(*offset)
        self._cl = (ctypes.c_int64 * self.n_chunks)(*length)
        self._tables = [_ptr_table(lst) for lst in lists]
        self._keep = lists
        self._threads = threads
        self._args = (self.n_chunks, ctypes.addressof(self._ct), ctypes.addressof(self._co),
                      ctypes.addressof(self._cl), *[ctypes.addressof(t) for t in self._tables], ctypes.c_float(scale))

    def __call__(self) -> None:
        self._lib.optzoo_sol_set_threads(self._threads)
        self._fn(*self._args)


def _chunk_table(tensors):
    tensor, offset, length = [], [], []
    for i, w in enumerate(tensors):
        n = w.numel()
        for off in range(0, n, CHUNK):
            tensor.append(i)
            offset.append(off)
            length.append(min(CHUNK, n - off))
    n_chunks = len(tensor)
    return n_chunks, ((ctypes.c_int32 * n_chunks)(*tensor), (ctypes.c_int64 * n_chunks)(*offset),
                      (ctypes.c_int64 * n_chunks)(*length))


class PassKernel:
    """The traffic of one pass of a multi-pass step: reads every list of ``written + read`` and writes the
    ``written`` lists back in place (each a list of tensors, one per weight), summing squares per chunk (as a norm
    pass does). The sum of a step's passes is its multi-pass floor. Same tensor rules as :class:`TouchKernel`."""

    def __init__(self, written, read, threads: int, scale: float = 1e-30):
        lists = [list(x) for x in (*written, *read)]
        if not 1 <= len(lists) <= MAX_PASS_LISTS or len(written) >= len(lists):
            raise ValueError(f"a pass reads 1..{MAX_PASS_LISTS} tensor lists and writes fewer than it reads")
        for lst in lists:
            if len(lst) != len(lists[0]):
                raise ValueError("every tensor list must have one tensor per weight")
            for t, w in zip(lst, lists[0]):
                if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != w.numel():
                    raise ValueError("pass kernels need contiguous float32 tensors of the weight's size")
        self._lib = load()
        self._fn = getattr(self._lib, f"optzoo_pass_r{len(lists)}w{len(written)}")
        self.n_chunks, self._chunks = _chunk_table(lists[0])
        self._tables = [_ptr_table(lst) for lst in lists]
        self._table_of_tables = (ctypes.c_void_p * len(lists))(*[ctypes.addressof(t) for t in self._tables])
        self._out = (ctypes.c_double * max(1, self.n_chunks))()
        self._keep = lists
        self._threads = threads
        self._args = (self.n_chunks, *[ctypes.addressof(c) for c in self._chunks],
                      ctypes.addressof(self._table_of_tables), ctypes.addressof(self._out), ctypes.c_float(scale))

    def __call__(self) -> None:
        self._lib.optzoo_sol_set_threads(self._threads)
        self._fn(*self._args)
