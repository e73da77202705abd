"""MXNet's tensor files, read without MXNet: the legacy binary NDArray format and 2.0's ``.npz``.

Legacy list file (``mx.nd.save``, 1.x ``save_parameters``, ``save_checkpoint``'s ``-0000.params``, all
little endian)::

    uint64 0x112 (list magic)   uint64 0 (reserved)
    uint64 n, then n NDArray records
    uint64 m (0 for a list, n for a dict), then m names: uint64 length + UTF-8 bytes

NDArray record (``NDArray::Save``; the same bytes are the ``handle`` of a pickled ``NDArray``)::

    uint32 magic      0xF993FAC9 (V2) / 0xF993FACA (V3, NumPy shape semantics: 0-d is a scalar)
    int32  storage    0 dense, 1 row_sparse, 2 csr
    shape             storage shape first if sparse; a shape is int32 ndim + ndim int64 extents
    (V2 ndim 0 / V3 ndim -1: an empty "none" array, nothing follows)
    int32 dev_type, int32 dev_id (the context, ignored)
    int32 dtype code  (see DTYPES)
    sparse only: per aux array (row_sparse: row ids; csr: indptr, column ids) int32 dtype + shape
    raw data (storage shape), then each aux array's raw data

Older records: magic 0xF993FAC8 (V1: int64 shape, no storage type) and, before that, no magic at all (the
first uint32 is ndim, followed by uint32 extents). Every size is checked against the bytes left before
anything is allocated, so a corrupt or hostile file raises :class:`CheckpointError`, never a crash.
"""

from __future__ import annotations

import ast
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from ..serialization import CheckpointError

__all__ = ["DTYPES", "LIST_MAGIC", "read_tensor_file", "parse_record", "parse_list"]

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
#: MXNet (mshadow) dtype codes.
DTYPES: dict[int, torch.dtype] = {
    0: torch.float32, 1: torch.float64, 2: torch.float16, 3: torch.uint8, 4: torch.int32, 5: torch.int8,
    6: torch.int64, 7: torch.bool, 8: torch.int16, 9: torch.uint16, 10: torch.uint32, 11: torch.uint64,
    12: torch.bfloat16,
}
STORAGE = {0: "default", 1: "row_sparse", 2: "csr"}
_AUX_COUNT = {0: 0, 1: 1, 2: 2}
_MAX_NDIM = 32
#: NumPy ``descr`` strings of 2.0's ``.npz`` (``<b2`` is MXNet's bfloat16).
_NPY_DTYPES = {"<f4": torch.float32, "<f8": torch.float64, "<f2": torch.float16, "|u1": torch.uint8,
               "<i4": torch.int32, "|i1": torch.int8, "<i8": torch.int64, "|b1": torch.bool, "<i2": torch.int16,
               "<u2": torch.uint16, "<u4": torch.uint32, "<u8": torch.uint64, "<b2": torch.bfloat16,
               "<V2": torch.bfloat16}


class _Reader:
    """Bounds-checked little-endian reads over a byte buffer; errors name the source and offset."""

    def __init__(self, data: bytes, source: str, offset: int = 0):
        self.data, self.source, self.pos = memoryview(data), source, offset

    def fail(self, what: str):
        raise CheckpointError(f"{self.source}: {what} (at byte {self.pos})")

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            self.fail(f"truncated: {what} needs {size} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def left(self) -> int:
        return len(self.data) - self.pos


def _shape(reader: _Reader, what: str, extent: str = "q", allow_unknown: bool = False) -> tuple[int, ...] | None:
    ndim = reader.unpack("i" if extent == "q" else "I", f"{what} rank")
    if allow_unknown and ndim == -1:
        return None
    if not 0 <= ndim <= _MAX_NDIM:
        reader.fail(f"{what} has an invalid rank {ndim}")
    dims = tuple(reader.unpack(extent, f"{what} extent") for _ in range(ndim))
    if any(d < 0 for d in dims):
        reader.fail(f"{what} has a negative extent: {dims}")
    return dims


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dtype(reader: _Reader, what: str) -> torch.dtype:
    code = reader.unpack("i", f"{what} dtype")
    if code not in DTYPES:
        known = ", ".join(f"{k}={_name(v)}" for k, v in DTYPES.items())
        reader.fail(f"unknown MXNet dtype code {code} for {what} (known: {known})")
    return DTYPES[code]


def _raw(reader: _Reader, shape, dtype: torch.dtype, what: str) -> torch.Tensor:
    size = _numel(shape) * torch.empty((), dtype=dtype).element_size()
    if size > reader.left():
        reader.fail(f"truncated: {what} of shape {tuple(shape)} and dtype {str(dtype).removeprefix('torch.')} "
                    f"needs {size} bytes, {reader.left()} left")
    chunk = bytearray(reader.take(size, what))
    try:
        if not size:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(chunk, dtype=torch.uint8).view(dtype).reshape(shape)
    except RuntimeError as err:  # e.g. extents whose product overflows although one of them is 0
        reader.fail(f"{what} has an invalid shape {tuple(shape)} ({err})")


def _zeros(shape, dtype, reader: _Reader) -> torch.Tensor:
    try:
        return torch.zeros(shape, dtype=dtype)
    except (RuntimeError, MemoryError):
        reader.fail(f"a sparse array of shape {tuple(shape)} is too large to make dense; use sparse='torch'")


def _to_layout(stype: int, data, aux, shape, sparse: str, reader: _Reader) -> torch.Tensor:
    """Dense tensor (``sparse='dense'``) or torch sparse COO (row_sparse) / CSR (``sparse='torch'``)."""
    if stype == 1:
        rows = aux[0].to(torch.int64)
        if rows.dim() != 1 or rows.numel() != data.shape[0] or (rows.numel() and (
                rows.min() < 0 or rows.max() >= shape[0])):
            reader.fail(f"row_sparse array of shape {shape} has invalid row ids")
        if sparse == "torch":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch: "sparse invariant checks are implicitly disabled"
                return torch.sparse_coo_tensor(rows[None], data, shape).coalesce()
        dense = _zeros(shape, data.dtype, reader)
        dense[rows] = data
        return dense
    indptr, cols = aux[0].to(torch.int64), aux[1].to(torch.int64)
    if len(shape) != 2 or indptr.numel() != shape[0] + 1 or data.dim() != 1 or cols.numel() != data.numel() or (
            indptr.numel() and (indptr[0] != 0 or indptr[-1] != data.numel() or (indptr[1:] < indptr[:-1]).any())
    ) or (cols.numel() and (cols.min() < 0 or cols.max() >= shape[1])):
        reader.fail(f"csr array of shape {shape} has inconsistent indptr/indices")
    if sparse == "torch":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(indptr, cols, data, shape)
    dense = _zeros(shape, data.dtype, reader)
    rows = torch.repeat_interleave(torch.arange(shape[0]), indptr[1:] - indptr[:-1])
    dense[rows, cols] = data
    return dense


def _scalar_follows(reader: _Reader) -> bool:
    """A V2 record of rank 0 is either a "none" array (nothing follows) or, from 1.x arrays reshaped to
    ``()``, a scalar with context, dtype and one element: tell them apart by what the next bytes are."""
    if reader.left() < 12:
        return False
    dev_type, dev_id, code = struct.unpack("<iii", reader.data[reader.pos:reader.pos + 12])
    if dev_type not in (1, 2, 3, 5) or not 0 <= dev_id < 4096 or code not in DTYPES:
        return False
    return reader.left() >= 12 + torch.empty((), dtype=DTYPES[code]).element_size()


def _record(reader: _Reader, what: str, sparse: str) -> torch.Tensor:
    magic = reader.unpack("I", f"{what} magic")
    stype = 0
    if magic in (V2_MAGIC, V3_MAGIC):
        stype = reader.unpack("i", f"{what} storage type")
        if stype not in STORAGE:
            reader.fail(f"{what} has an unknown storage type {stype} (0 dense, 1 row_sparse, 2 csr)")
        storage_shape = _shape(reader, f"{what} storage shape") if stype else None
        shape = _shape(reader, f"{what} shape", allow_unknown=magic == V3_MAGIC)
        if shape is None or (magic == V2_MAGIC and not shape and not _scalar_follows(reader)):
            return torch.empty(0)  # MXNet's "none" array: no context, dtype or data follow
    elif magic == V1_MAGIC:
        shape = _shape(reader, f"{what} shape")
        if not shape:
            return torch.empty(0)
    elif magic <= _MAX_NDIM:  # the oldest layout: no magic, the first word is the rank
        reader.pos -= 4
        shape = _shape(reader, f"{what} shape", extent="I")
        if not shape:
            return torch.empty(0)
    else:
        reader.fail(f"{what} is not an MXNet NDArray record (magic {magic:#x})")
    reader.take(8, f"{what} context")
    dtype = _dtype(reader, what)
    aux_meta = [(_dtype(reader, f"{what} aux {i}"), _shape(reader, f"{what} aux {i} shape"))
                for i in range(_AUX_COUNT[stype])]
    if stype:
        if len(storage_shape) != (1 if stype == 2 else len(shape)) or (stype == 1 and storage_shape[1:] != shape[1:]):
            reader.fail(f"{what}: storage shape {storage_shape} does not fit shape {shape}")
        data = _raw(reader, storage_shape, dtype, f"{what} data")
        aux = [_raw(reader, s, d, f"{what} aux {i}") for i, (d, s) in enumerate(aux_meta)]
        return _to_layout(stype, data, aux, shape, sparse, reader)
    return _raw(reader, shape, dtype, f"{what} data")


def parse_record(data: bytes, source: str = "NDArray record", sparse: str = "dense") -> torch.Tensor:
    """One NDArray record (e.g. a pickled NDArray's ``handle``); trailing bytes are an error."""
    reader = _Reader(bytes(data), source)
    tensor = _record(reader, "array", sparse)
    if reader.left():
        reader.fail(f"{reader.left()} unexpected bytes after the array")
    return tensor


def parse_list(data: bytes, source: str, sparse: str = "dense") -> list[tuple[str | None, torch.Tensor]]:
    """A legacy list file: ``[(name or None, tensor), ...]`` in file order."""
    reader = _Reader(data, source)
    if len(data) < 16:
        reader.fail("truncated: not even the 16-byte header of an MXNet NDArray file")
    magic, _reserved = reader.unpack("Q", "magic"), reader.unpack("Q", "reserved word")
    if magic != LIST_MAGIC:
        raise CheckpointError(f"{source}: not an MXNet NDArray file (magic {magic:#x}, expected {LIST_MAGIC:#x})")
    count = reader.unpack("Q", "array count")
    if count > reader.left() // 4:
        reader.fail(f"claims {count} arrays, more than the file can hold")
    tensors = [_record(reader, f"array {i}", sparse) for i in range(count)]
    n_names = reader.unpack("Q", "name count")
    if n_names not in (0, count):
        reader.fail(f"has {count} arrays but {n_names} names")
    names = []
    for i in range(n_names):
        length = reader.unpack("Q", f"length of name {i}")
        try:
            names.append(bytes(reader.take(length, f"name {i}")).decode())
        except UnicodeDecodeError:
            reader.fail(f"name {i} is not UTF-8")
    if reader.left():
        reader.fail(f"{reader.left()} unexpected bytes after the names")
    return list(zip(names or [None] * count, tensors))


def _npy(blob: bytes, source: str) -> torch.Tensor:
    """One ``.npy`` member (versions 1-3), parsed without NumPy's pickle support."""
    reader = _Reader(blob, source)
    if bytes(reader.take(6, "npy magic")) != b"\x93NUMPY":
        reader.fail("not an .npy array")
    major = reader.unpack("B", "npy version")
    reader.unpack("B", "npy minor version")
    length = reader.unpack("H" if major == 1 else "I", "npy header length")
    try:
        header = ast.literal_eval(bytes(reader.take(length, "npy header")).decode("latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: corrupt .npy header ({err})") from None
    if not isinstance(descr, str) or descr not in _NPY_DTYPES:
        raise CheckpointError(f"{source}: unsupported array dtype {descr!r}")
    if any(not isinstance(d, int) or d < 0 for d in shape) or len(shape) > _MAX_NDIM:
        raise CheckpointError(f"{source}: invalid shape {shape}")
    if fortran:
        return _raw(reader, shape[::-1], _NPY_DTYPES[descr], "data").permute(*reversed(range(len(shape))))
    return _raw(reader, shape, _NPY_DTYPES[descr], "data")


def _read_npz(path: Path) -> list[tuple[str, torch.Tensor]]:
    out = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if info.file_size > path.stat().st_size * 1100 + (1 << 20):
                    raise CheckpointError(f"{path}: member {info.filename!r} claims an implausible size")
                out.append((name, _npy(archive.read(info), f"{path} [{info.filename}]")))
    except (CheckpointError, FileNotFoundError):
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, zlib.error,
            RuntimeError, ValueError, struct.error) as err:  # zipfile: RuntimeError for "encrypted" entries
        raise CheckpointError(f"{path}: corrupt .npz archive ({type(err).__name__}: {err})") from None
    return out


def sniff(data: bytes) -> str:
    """``'npz'``, ``'legacy'``, ``'pickle'``, ``'optzoo'``, ``'safetensors'`` or ``'unknown'`` from a file's
    first 16 bytes."""
    if len(data) >= 9 and data[8:9] == b"{" and struct.unpack("<Q", data[:8])[0] < (1 << 32):
        return "safetensors"  # u64 header length + JSON; its first byte may look like a pickle opcode
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        return "npz"
    if data[:8] == struct.pack("<Q", LIST_MAGIC):
        return "legacy"
    if data[:1] and data[:1] in b"\x80(}]c)N":  # protocol 2+ / the first opcodes of protocol 0-1 pickles
        return "pickle"
    if data[:6] == b"OPTZOO":
        return "optzoo"
    return "unknown"


def read_tensor_file(path, sparse: str = "dense") -> list[tuple[str | None, torch.Tensor]]:
    """Every ``(name, tensor)`` of an MXNet ``.params`` / ``mx.nd.save`` / ``npx.savez`` file, in file order."""
    if sparse not in ("dense", "torch"):
        raise ValueError(f"sparse must be 'dense' or 'torch', got {sparse!r}")
    path = Path(path)
    data = path.read_bytes()
    kind = sniff(data)
    if kind == "npz":
        return _read_npz(path)
    if kind == "legacy":
        return parse_list(data, str(path), sparse)
    if kind == "pickle":
        raise CheckpointError(f"{path}: is a pickled optimizer-states file, not parameters "
                              "(read it with optzoo.mxnet.load_states)")
    raise CheckpointError(f"{path}: not an MXNet parameters file (expected the NDArray magic 0x112 or an .npz "
                          f"archive; the file starts with {data[:8].hex() or 'nothing'})")
