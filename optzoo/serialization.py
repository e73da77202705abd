"""Checkpoint files: named tensors and JSON metadata in a `safetensors <https://huggingface.co/docs/safetensors>`_
file, with a content checksum.

Format (version 2, written since optzoo 0.1 checkpoints moved to safetensors): an ordinary safetensors file whose
``__metadata__`` holds three strings::

    "optzoo.format_version"  "2"
    "optzoo.meta"            the JSON metadata (the optimizer, the state structure, ...)
    "optzoo.sha256"          sha256 over the metadata and every tensor (name, dtype, shape, bytes), in name order

Any safetensors tool reads the tensors (``safetensors.torch.load_file``) and the metadata (``safe_open(...).
metadata()``). Loading parses JSON and copies bytes: nothing is unpickled, no code runs. A file whose bytes changed
after saving fails the checksum; truncated files, trailing bytes, crafted headers and foreign files are a
:class:`CheckpointError` (a ``ValueError``), never another exception.

Files of the first optzoo format (``OPTZOO\\0\\1`` magic, a JSON header, raw bytes; no checksum) still load.

Writes are atomic (:func:`atomic_write`): a temporary file in the target folder, fsync, rename, so a crash or an
error mid-save leaves the previous file intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
import struct
from pathlib import Path

import safetensors.torch
import torch

__all__ = ["FORMAT_VERSION", "CheckpointError", "atomic_write", "dumps", "load", "loads", "save"]

FORMAT_VERSION = 2
LEGACY_MAGIC = b"OPTZOO\x00\x01"  # format version 1
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool)}
_LEGACY_DTYPES = {**_DTYPES, "complex64": torch.complex64, "complex128": torch.complex128}
_KEY_VERSION, _KEY_META, _KEY_SHA = "optzoo.format_version", "optzoo.meta", "optzoo.sha256"


class CheckpointError(ValueError):
    """A file or blob is not a valid optzoo checkpoint (not one at all, truncated, corrupt, newer format, ...)."""


def _checksum(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    digest = hashlib.sha256(b"optzoo checkpoint v2\0" + meta_json.encode() + b"\0")
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode() + b"\0")
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def dumps(tensors: dict[str, torch.Tensor], meta) -> bytes:
    """Serialises named tensors (copied to CPU) and JSON-able metadata as a safetensors file's bytes."""
    out, storages = {}, set()
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.layout != torch.strided:
            raise TypeError(f"tensor {name!r} is {tensor.layout}; store it dense")
        if str(tensor.dtype).removeprefix("torch.") not in _DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which checkpoints do not store; "
                            f"supported: {', '.join(_DTYPES)}")
        cpu = tensor.detach().to("cpu").contiguous()
        if cpu.numel() and cpu.untyped_storage().data_ptr() in storages:
            cpu = cpu.clone()  # safetensors stores every tensor in its own bytes
        storages.add(cpu.untyped_storage().data_ptr())
        out[name] = cpu
    meta_json = json.dumps(meta, allow_nan=False, sort_keys=True)
    metadata = {_KEY_VERSION: str(FORMAT_VERSION), _KEY_META: meta_json, _KEY_SHA: _checksum(out, meta_json)}
    return safetensors.torch.save(out, metadata=metadata)


def loads(blob: bytes) -> tuple[dict[str, torch.Tensor], object]:
    """Inverse of :func:`dumps` (and reader of the first optzoo format); :class:`CheckpointError` for anything
    that is not an intact optzoo checkpoint."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if blob[:8] == LEGACY_MAGIC:
        return _loads_legacy(blob)
    if len(blob) < 8:
        raise CheckpointError("not an optzoo checkpoint (bad magic bytes: empty or truncated file)")
    (length,) = struct.unpack("<Q", blob[:8])
    if blob[8:9] != b"{":
        raise CheckpointError("not an optzoo checkpoint (bad magic bytes: neither a safetensors file nor an optzoo "
                              "file of the first format)")
    if 8 + length > len(blob):
        raise CheckpointError(f"truncated checkpoint: the header needs {length} bytes, the file has "
                              f"{len(blob) - 8}")
    try:
        header = json.loads(blob[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"corrupt checkpoint header: {err}") from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt checkpoint header: not a JSON object")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or _KEY_VERSION not in metadata:
        raise CheckpointError("a safetensors file, but not an optzoo checkpoint (no optzoo metadata)")
    version = metadata[_KEY_VERSION]
    if not (isinstance(version, str) and version.isdigit()):
        raise CheckpointError(f"corrupt checkpoint format version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {version} is newer than this optzoo reads "
                              f"({FORMAT_VERSION}); upgrade optzoo")
    offsets = [e.get("data_offsets") for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)]
    need = 8 + length + max((o[-1] for o in offsets if isinstance(o, list) and o and isinstance(o[-1], int)),
                            default=0)
    if need > len(blob):
        raise CheckpointError(f"truncated checkpoint: {len(blob)} bytes of {need}")
    try:
        tensors = safetensors.torch.load(blob)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # safetensors' own errors (and a Rust panic, which is a BaseException)
        raise CheckpointError(f"corrupt checkpoint: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                              ) from None
    meta_json, expected = metadata.get(_KEY_META), metadata.get(_KEY_SHA)
    if not isinstance(meta_json, str) or not isinstance(expected, str):
        raise CheckpointError("corrupt checkpoint: the optzoo metadata or checksum is missing")
    if _checksum(tensors, meta_json) != expected:
        raise CheckpointError("corrupt checkpoint: the checksum does not match its content (the file changed "
                              "after it was saved)")
    try:
        meta = json.loads(meta_json)
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"corrupt checkpoint metadata: {err}") from None
    return tensors, meta


def _loads_legacy(blob: bytes) -> tuple[dict[str, torch.Tensor], object]:
    """The first optzoo format: ``LEGACY_MAGIC``, header length (u64 LE), JSON header, raw tensor bytes."""
    if len(blob) < 16:
        raise CheckpointError("truncated checkpoint header")
    (length,) = struct.unpack("<Q", blob[8:16])
    if 16 + length > len(blob):
        raise CheckpointError("truncated checkpoint header")
    try:
        header = json.loads(blob[16:16 + length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"corrupt checkpoint header: {err}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict):
        raise CheckpointError("corrupt checkpoint header: no tensor table")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version != 1:
        raise CheckpointError(f"checkpoint format version {version!r} is not the first format's (1)")
    data = memoryview(blob)[16 + length:]
    tensors, end = {}, 0
    for name, entry in header["tensors"].items():
        try:
            dtype = _LEGACY_DTYPES[entry["dtype"]]
            start, size, shape = entry["offset"], entry["nbytes"], entry["shape"]
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, size, *shape))
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"corrupt entry for tensor {name!r}: {err!r}") from None
        if not ok or not isinstance(shape, list) or start + size > len(data):
            raise CheckpointError(f"corrupt or truncated entry for tensor {name!r}")
        numel = 1
        for dim in shape:
            numel *= dim
        if numel * torch.empty((), dtype=dtype).element_size() != size:
            raise CheckpointError(f"tensor {name!r}: {size} bytes do not hold shape {shape} of {entry['dtype']}")
        raw = torch.frombuffer(bytearray(data[start:start + size]), dtype=torch.uint8) if size else None
        tensors[name] = raw.view(dtype).reshape(shape) if size else torch.empty(shape, dtype=dtype)
        end = max(end, start + size)
    if end != len(data):
        raise CheckpointError(f"corrupt checkpoint: {len(data) - end} bytes after the last tensor")
    return tensors, header.get("meta")


def atomic_write(path, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` so that readers see either the old or the new file, never a mix, and a failed
    write leaves the old file as it was. The new file gets the old file's permissions, or ``0o666`` less the
    umask (the kernel applies it on creation, as for ``open(path, "w")``)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: the folder {folder} does not exist", str(path))
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        raise type(err)(err.errno, f"cannot write {path}: {err.strerror}", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # replacing a file keeps its permissions
            except FileNotFoundError:
                pass
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
        dir_fd = os.open(folder, os.O_RDONLY)
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
