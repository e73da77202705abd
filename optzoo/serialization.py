"""A small, safe container format for optimizer states and checkpoints.

Layout: ``MAGIC`` (8 bytes), header length (8 bytes, little endian), a UTF-8 JSON header, then the raw
bytes of every tensor. The header holds the format version, JSON metadata and, per tensor, its dtype,
shape and byte range. Loading parses JSON and copies bytes: nothing is unpickled, no code runs.
Writes to files are atomic (temporary file in the same folder, fsync, rename), so a crash mid-save
leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch

__all__ = ["FORMAT_VERSION", "CheckpointError", "atomic_write", "dumps", "load", "loads", "save"]

MAGIC = b"OPTZOO\x00\x01"
FORMAT_VERSION = 1
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128)}


class CheckpointError(ValueError):
    """A file or blob is not a valid optzoo checkpoint (wrong magic, truncated, newer format, ...)."""


def dumps(tensors: dict[str, torch.Tensor], meta) -> bytes:
    """Serialises named tensors (moved to CPU) and JSON-able metadata."""
    entries, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.is_sparse:
            raise TypeError(f"tensor {name!r} is sparse; store it dense")
        cpu = tensor.detach().to("cpu").contiguous()
        raw = cpu.reshape(-1).view(torch.uint8).numpy().tobytes() if cpu.numel() else b""
        entries[name] = {"dtype": str(cpu.dtype).removeprefix("torch."), "shape": list(cpu.shape),
                         "offset": offset, "nbytes": len(raw)}
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps({"format_version": FORMAT_VERSION, "meta": meta, "tensors": entries},
                        allow_nan=False).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header + b"".join(chunks)


def loads(blob: bytes) -> tuple[dict[str, torch.Tensor], object]:
    """Inverse of :func:`dumps`; raises :class:`CheckpointError` for anything that is not a valid blob."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if blob[:8] != MAGIC:
        raise CheckpointError("not an optzoo checkpoint (bad magic bytes)")
    if len(blob) < 16:
        raise CheckpointError("truncated checkpoint header")
    (length,) = struct.unpack("<Q", blob[8:16])
    try:
        header = json.loads(blob[16:16 + length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"corrupt checkpoint header: {err}") from None
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {version!r} is newer than this optzoo reads "
                              f"({FORMAT_VERSION}); upgrade optzoo")
    data = memoryview(blob)[16 + length:]
    tensors = {}
    for name, entry in header["tensors"].items():
        dtype = _DTYPES.get(entry["dtype"])
        start, size = entry["offset"], entry["nbytes"]
        if dtype is None or start < 0 or start + size > len(data):
            raise CheckpointError(f"corrupt or truncated entry for tensor {name!r}")
        raw = torch.frombuffer(bytearray(data[start:start + size]), dtype=torch.uint8) if size else \
            torch.empty(0, dtype=torch.uint8)
        shape = entry["shape"]
        numel = 1
        for dim in shape:
            numel *= dim
        itemsize = torch.empty((), dtype=dtype).element_size()
        if numel * itemsize != size:
            raise CheckpointError(f"tensor {name!r}: {size} bytes do not hold shape {shape} of {entry['dtype']}")
        tensors[name] = raw.view(dtype).reshape(shape) if size else torch.empty(shape, dtype=dtype)
    return tensors, header.get("meta")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` so that readers see either the old or the new file, never a mix.
    The new file gets ordinary permissions (``0o666`` less the umask), like ``open(path, "w")``."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save(path, tensors: dict[str, torch.Tensor], meta) -> None:
    atomic_write(path, dumps(tensors, meta))


def load(path) -> tuple[dict[str, torch.Tensor], object]:
    return loads(Path(path).read_bytes())
