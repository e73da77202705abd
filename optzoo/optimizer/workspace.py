"""Scratch buffers that an optimizer keeps across steps for large temporaries (Muon's AdamW side: the
denominator of its embedding and head).

A temporary allocated afresh in every step costs an allocation, and the page faults of new memory whenever the
allocator has given the block back to the system; a kept buffer written with ``out=`` does not, and the same
kernel writes the same values into it.

A :class:`Workspace` belongs to one optimizer object (never a module global): an optimizer step is not
re-entrant, and two optimizers do not share buffers. A tensor handed out is valid until the next request for the
same name (whatever its shape): a caller uses it before asking for that name again.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Workspace", "workspace_of"]


class Workspace:
    """Buffers by ``(name, dtype, device)``, each grown to the largest size asked for and kept; a request returns
    a contiguous view of the first ``prod(shape)`` elements. One buffer per name (not per shape) keeps the memory
    that consecutive tensors of different shapes touch the same, and so in cache."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def buffer(self, name: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
        """A contiguous tensor of this shape, dtype and device (contents undefined) in the buffer ``name``."""
        shape = tuple(shape)
        numel = math.prod(shape)
        key = (name, dtype, torch.device(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held by all buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        """Frees every buffer (they are made again on the next use)."""
        self._buffers.clear()


def workspace_of(owner) -> Workspace:
    """``owner``'s workspace, made on first use (kept in its ``__dict__`` as ``_workspace``)."""
    space = owner.__dict__.get("_workspace")
    if space is None:
        space = owner.__dict__["_workspace"] = Workspace()
    return space
