"""The writer of optzoo's first checkpoint format (magic, JSON header, raw bytes; optzoo before safetensors), kept
so that tests can make such files and check that they still load."""

from __future__ import annotations

import json
import struct

import torch

MAGIC = b"OPTZOO\x00\x01"


def dumps_v1(tensors: dict[str, torch.Tensor], meta) -> bytes:
    entries, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        cpu = tensor.detach().to("cpu").contiguous()
        raw = cpu.reshape(-1).view(torch.uint8).numpy().tobytes() if cpu.numel() else b""
        entries[name] = {"dtype": str(cpu.dtype).removeprefix("torch."), "shape": list(cpu.shape),
                         "offset": offset, "nbytes": len(raw)}
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps({"format_version": 1, "meta": meta, "tensors": entries}, allow_nan=False).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header + b"".join(chunks)
