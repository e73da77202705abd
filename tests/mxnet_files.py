"""Writers of MXNet's file formats for tests (no MXNet needed): legacy NDArray records/lists and ``.states``
pickles. tests/test_mxnet_files.py checks that ``legacy_file`` writes exactly the bytes ``mx.nd.save`` writes."""

from __future__ import annotations

import contextlib
import pickle
import struct
import sys
import types

import numpy as np

from optzoo.mxnet.ndarray import DTYPES, V1_MAGIC, V2_MAGIC, V3_MAGIC

CODE = {v: k for k, v in DTYPES.items()}


def _shape(shape, extent="q"):
    return struct.pack("<i" if extent == "q" else "<I", len(shape)) + b"".join(struct.pack("<" + extent, d)
                                                                             for d in shape)


def record(array, version: int = 2, code: int | None = None) -> bytes:
    """A dense record of a torch tensor (``version`` 0 = before V1, 1, 2, 3); ``code`` overrides the dtype."""
    code = CODE[array.dtype] if code is None else code
    raw = array.contiguous().reshape(-1).view(__import__("torch").uint8).numpy().tobytes() if array.numel() else b""
    ctx = struct.pack("<ii", 1, 0)
    dtype = struct.pack("<i", code)
    if version == 0:
        return _shape(tuple(array.shape), "I") + ctx + dtype + raw
    if version == 1:
        return struct.pack("<I", V1_MAGIC) + _shape(tuple(array.shape)) + ctx + dtype + raw
    magic = V2_MAGIC if version == 2 else V3_MAGIC
    return struct.pack("<Ii", magic, 0) + _shape(tuple(array.shape)) + ctx + dtype + raw


def row_sparse_record(values: np.ndarray, rows: np.ndarray, shape) -> bytes:
    return (struct.pack("<Ii", V2_MAGIC, 1) + _shape(values.shape) + _shape(shape) + struct.pack("<ii", 1, 0)
            + struct.pack("<i", 0) + struct.pack("<i", 6) + _shape(rows.shape)
            + values.astype("<f4").tobytes() + rows.astype("<i8").tobytes())


def csr_record(values: np.ndarray, indptr: np.ndarray, cols: np.ndarray, shape) -> bytes:
    return (struct.pack("<Ii", V2_MAGIC, 2) + _shape(values.shape) + _shape(shape) + struct.pack("<ii", 1, 0)
            + struct.pack("<i", 0) + struct.pack("<i", 6) + _shape(indptr.shape) + struct.pack("<i", 6)
            + _shape(cols.shape) + values.astype("<f4").tobytes() + indptr.astype("<i8").tobytes()
            + cols.astype("<i8").tobytes())


def legacy_file(records: list[bytes], names: list[str] | None = None) -> bytes:
    out = struct.pack("<QQQ", 0x112, 0, len(records)) + b"".join(records)
    names = names or []
    out += struct.pack("<Q", len(names))
    for name in names:
        out += struct.pack("<Q", len(name.encode())) + name.encode()
    return out


@contextlib.contextmanager
def fake_mxnet():
    """Stand-in ``mxnet`` modules with the classes a ``.states`` pickle references, so pickle can write them."""
    made = {}

    def module(name):
        mod = types.ModuleType(name)
        made[name] = mod
        return mod

    nd = module("mxnet.ndarray.ndarray")
    opt = module("mxnet.optimizer.adam")
    opt1 = module("mxnet.optimizer.optimizer")
    sched = module("mxnet.lr_scheduler")
    module("mxnet")
    module("mxnet.ndarray")
    module("mxnet.optimizer")

    class NDArray:
        def __init__(self, handle=None):
            self.handle = handle

        def __reduce__(self):
            return (NDArray, (None,), {"handle": bytearray(self.handle)})

    NDArray.__module__, NDArray.__qualname__ = nd.__name__, "NDArray"
    nd.NDArray = NDArray

    def klass(mod, name):
        cls = type(name, (), {})
        cls.__module__ = mod.__name__
        cls.__qualname__ = name
        setattr(mod, name, cls)
        return cls

    classes = {"NDArray": NDArray, "Adam": klass(opt, "Adam"), "SGD1": klass(opt1, "SGD"),
               "FactorScheduler": klass(sched, "FactorScheduler")}
    saved = {k: sys.modules.get(k) for k in made}
    sys.modules.update(made)
    try:
        yield classes
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def states_pickle(states: dict, optimizer_attrs: dict | None = None, scheduler_attrs: dict | None = None,
                  version: str = "2.0", class_name: str | None = None) -> bytes:
    """An MXNet-like ``.states`` pickle: ``states`` values are torch tensors or tuples of them."""
    with fake_mxnet() as cls:
        def wrap(s):
            if s is None:
                return None
            if isinstance(s, tuple):
                return tuple(wrap(x) for x in s)
            return cls["NDArray"](record(s))

        obj = {k: wrap(v) for k, v in states.items()}
        if optimizer_attrs is None:
            return pickle.dumps(obj, protocol=4)
        klass = cls["Adam"] if version == "2.0" else cls["SGD1"]
        if class_name is not None:
            klass.__name__ = klass.__qualname__ = class_name
            setattr(sys.modules[klass.__module__], class_name, klass)
        opt = klass()
        opt.__dict__.update(optimizer_attrs)
        if scheduler_attrs is not None:
            sched = cls["FactorScheduler"]()
            sched.__dict__.update(scheduler_attrs)
            opt.lr_scheduler = sched
        return pickle.dumps((obj, opt), protocol=4)


def adam_attrs(**over) -> dict:
    """The attribute dict of a pickled MXNet 2.0 Adam after 3 updates of indices 0 and 1."""
    attrs = {"_all_index_update_counts": {0: {0: 3, 1: 3}}, "_index_update_count": {0: 3, 1: 3},
             "aggregate_num": 1, "allow_np_array": True, "begin_num_update": 0, "beta1": 0.9, "beta2": 0.999,
             "clip_gradient": None, "epsilon": 1e-08, "idx2name": {}, "lazy_update": False, "lr": 0.1,
             "lr_mult": {}, "lr_scheduler": None, "multi_precision": False, "num_update": 3, "param_dict": {},
             "rescale_grad": 0.2, "sym_info": (), "use_fused_step": True, "wd": 0.0, "wd_mult": {}}
    attrs.update(over)
    return attrs
