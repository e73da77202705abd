"""A restricted unpickler for MXNet's optimizer-state files: MXNet's classes become inert records.

A ``.states`` file is ``pickle.dumps(states)`` or ``pickle.dumps((states, optimizer))`` where ``states`` maps an
index to a state (``None``, an ``NDArray`` or nested tuples of them). The only globals such a file needs are
``builtins.bytearray``, ``mxnet.ndarray.ndarray.NDArray`` (pickled as ``{'handle': bytearray(record)}``), the
optimizer class (``mxnet.optimizer.*``) and the ``mxnet.lr_scheduler`` classes; Python 2 era files add
``copy_reg._reconstructor`` and numpy scalars. :class:`SafeUnpickler` resolves exactly these to classes
defined here that only store what they are given; any other global raises :class:`CheckpointError` naming it
before anything is called, so no code from the file ever runs.
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np

from ..serialization import CheckpointError

__all__ = ["MXNetObject", "NDArrayHandle", "SafeUnpickler", "safe_loads"]


class NDArrayHandle:
    """A pickled ``mxnet.ndarray.NDArray``: only its raw record bytes (parsed later)."""

    def __init__(self, *args):
        self.handle = None

    def __setstate__(self, state):
        if not isinstance(state, dict) or not isinstance(state.get("handle"), (bytes, bytearray)):
            raise CheckpointError("a pickled NDArray has no 'handle' bytes")
        self.handle = bytes(state["handle"])


class MXNetObject:
    """A pickled MXNet optimizer or lr scheduler: its class path and attribute dict, nothing else."""

    module = ""
    name = ""

    def __init__(self, *args):
        self.attrs: dict = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots dict)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise CheckpointError(f"pickled {self.module}.{self.name} has a state of type {type(state).__name__}")
        self.attrs = dict(state)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<MXNet {self.qualname}>"


_CLASSES: dict[tuple[str, str], type] = {}


def _record_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _CLASSES:
        _CLASSES[key] = type(name, (MXNetObject,), {"module": module, "name": name})
    return _CLASSES[key]


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` limited to the inert classes above (Python 2 protocol 0/1 pickles)."""
    if not (isinstance(cls, type) and issubclass(cls, (MXNetObject, NDArrayHandle))) or base is not object:
        raise CheckpointError(f"refusing to reconstruct {cls!r} from base {base!r}")
    return cls()


_NUMPY_KINDS = {"f", "i", "u", "b"}


def _np_dtype(spec, *args):
    dtype = np.dtype(spec) if isinstance(spec, str) and len(spec) <= 4 else None
    if dtype is None or dtype.kind not in _NUMPY_KINDS:
        raise CheckpointError(f"refusing numpy dtype {spec!r} in an optimizer-state file")
    return _NumpyDtype(dtype)


class _NumpyDtype:
    def __init__(self, dtype):
        self.dtype = dtype

    def __setstate__(self, state):  # numpy pickles (version, byteorder, ...); the str spec already fixed it
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.dtype = self.dtype.newbyteorder(state[1]) if state[1] in "<>" else self.dtype


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, (bytes, str)):
        raise CheckpointError("corrupt numpy scalar in an optimizer-state file")
    raw = data.encode("latin1") if isinstance(data, str) else data
    if len(raw) != dtype.dtype.itemsize:
        raise CheckpointError("corrupt numpy scalar in an optimizer-state file")
    return np.frombuffer(raw, dtype=dtype.dtype)[0].item()


def _allowed(module: str, name: str):
    if (module, name) == ("builtins", "bytearray"):
        return bytearray
    if (module, name) == ("copyreg", "_reconstructor"):
        return _reconstructor
    if (module, name) == ("builtins", "object"):
        return object
    if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in ("dtype", "scalar"):
        return _np_dtype if name == "dtype" else _np_scalar
    if module == "mxnet.ndarray.ndarray" and name == "NDArray":
        return NDArrayHandle
    if (module == "mxnet.optimizer" or module.startswith("mxnet.optimizer.")
            or module == "mxnet.lr_scheduler") and name.isidentifier():
        return _record_class(module, name)
    return None


class SafeUnpickler(pickle.Unpickler):
    """Resolves only MXNet's optimizer-state globals (see the module docstring); refuses every other."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module, name):
        found = _allowed(module, name)
        if found is None:
            raise CheckpointError(f"{self.source}: refusing to load: the pickle references {module}.{name}, "
                                  "which is not part of an MXNet optimizer-state file (nothing was executed)")
        return found

    def persistent_load(self, pid):
        raise CheckpointError(f"{self.source}: refusing to load: the pickle uses persistent ids")


def safe_loads(data: bytes, source: str):
    """Unpickles an MXNet ``.states`` blob with :class:`SafeUnpickler`; every failure is a CheckpointError."""
    try:
        return SafeUnpickler(io.BytesIO(data), source).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, UnicodeDecodeError, OverflowError, MemoryError, RecursionError) as err:
        raise CheckpointError(f"{source}: corrupt or truncated pickle ({type(err).__name__}: {err})") from None
