"""MXNet's gradient compression ('2bit', '1bit') as a small protocol with explicit state.

A compressor is stateless apart from its parameters; the caller owns one *residual* tensor per key (and per
device/worker), created by :meth:`Compression.init_residual`. One step is::

    packed = comp.compress(grad, residual)     # residual += grad; quantise; residual -= what was sent
    values = comp.decompress(packed, numel)    # what the receiver reconstructs (float32)

so that, after any number of steps, ``sum(values sent) + residual == sum(grads)`` up to float32 rounding
(error feedback: nothing is lost, it is only delayed).

Quantisation and packing are bit-identical to MXNet 2.0 (``src/kvstore/gradient_compression-inl.h``):

* **2bit** (``threshold`` > 0, default 0.5): ``r += g``; ``r >= thr`` sends ``+thr`` (code ``11``) and
  ``r -= thr``; ``r <= -thr`` sends ``-thr`` (code ``10``) and ``r += thr``; otherwise ``0`` (code ``00``).
  16 values per 32-bit word: byte ``k`` holds elements ``4k .. 4k+3``, most significant bits first (masks
  ``0xc0, 0x30, 0x0c, 0x03``). The packed buffer has ``ceil(n / 16)`` words.
* **1bit** (any threshold, default 0.5): ``r += g``; ``r > thr`` sends ``+1`` (bit 1) and ``r -= 1``;
  otherwise ``-1`` (bit 0) and ``r += 1``. The dequantised values are ±1 whatever the threshold, which
  only sets the cut. 32 values per word, byte ``k`` holds elements ``8k .. 8k+7``, MSB first.

The packed buffer is a ``torch.uint8`` tensor whose bytes are the same memory image as MXNet's float32
buffer (``packed.view(torch.int32)`` gives the words on a little-endian machine); that tensor is what the
distributed kvstores put on the wire.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..optimizer.validation import check_choice, check_real

__all__ = ["COMPRESSION_TYPES", "Compression", "OneBitCompression", "TwoBitCompression", "create_compression"]

COMPRESSION_TYPES = ("2bit", "1bit")
_SHIFTS2 = torch.tensor([6, 4, 2, 0], dtype=torch.uint8)
_SHIFTS1 = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)


class Compression:
    """The protocol: ``init_residual``, ``compress`` (updates the residual in place), ``decompress``."""

    type: str = ""
    #: values per 32-bit word on the wire
    values_per_word: int = 1

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    def packed_bytes(self, numel: int) -> int:
        """Bytes on the wire for ``numel`` gradient values (whole 32-bit words, as MXNet allocates)."""
        return 4 * math.ceil(numel / self.values_per_word)

    def init_residual(self, like: torch.Tensor) -> torch.Tensor:
        """A zero residual for gradients shaped like ``like`` (flat float32, on its device)."""
        return torch.zeros(like.numel(), dtype=torch.float32, device=like.device)

    def _check(self, grad: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if grad.layout != torch.strided:
            raise ValueError(f"gradient compression ({self.type}) supports only dense gradients, got a "
                             f"{grad.layout} gradient")
        if grad.dtype != torch.float32:
            raise TypeError(f"gradient compression ({self.type}) supports only float32 gradients (as MXNet), "
                            f"got {grad.dtype}")
        if residual.dtype != torch.float32 or residual.numel() != grad.numel():
            raise ValueError(f"residual must be a float32 tensor of {grad.numel()} elements (init_residual)")
        return grad.reshape(-1)

    def compress(self, grad: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Adds ``grad`` to ``residual``, quantises it, subtracts what is sent; returns the packed uint8 bytes."""
        raise NotImplementedError

    def decompress(self, packed: torch.Tensor, numel: int) -> torch.Tensor:
        """The float32 values (flat, ``numel`` long) that ``packed`` encodes."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold})"


def _pack(codes: torch.Tensor, per_byte: int, shifts: torch.Tensor, nbytes: int) -> torch.Tensor:
    padded = torch.zeros(nbytes * per_byte, dtype=torch.uint8, device=codes.device)
    padded[:codes.numel()] = codes
    return (padded.view(nbytes, per_byte) << shifts.to(codes.device)).sum(dim=1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, numel: int, shifts: torch.Tensor, mask: int) -> torch.Tensor:
    if packed.dtype != torch.uint8:
        packed = packed.contiguous().view(torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts.to(packed.device)) & mask).reshape(-1)[:numel]


class TwoBitCompression(Compression):
    """MXNet's ``{'type': '2bit', 'threshold': thr}``: sends ``-thr``, ``0`` or ``+thr`` per value."""

    type = "2bit"
    values_per_word = 16

    def __init__(self, threshold: float = 0.5):
        check_real("threshold", threshold, 0.0, low_open=True)
        super().__init__(threshold)

    def compress(self, grad, residual):
        g = self._check(grad, residual)
        thr = torch.tensor(self.threshold, dtype=torch.float32, device=g.device)
        residual.add_(g)
        pos = residual >= thr
        neg = (residual <= -thr) & ~pos
        residual.sub_(torch.where(pos, thr, torch.where(neg, -thr, torch.zeros((), device=g.device))))
        codes = pos.to(torch.uint8) * 3 + neg.to(torch.uint8) * 2
        return _pack(codes, 4, _SHIFTS2, self.packed_bytes(g.numel()))

    def decompress(self, packed, numel):
        codes = _unpack(packed, numel, _SHIFTS2, 3)
        thr = torch.tensor(self.threshold, dtype=torch.float32, device=codes.device)
        out = torch.zeros(numel, dtype=torch.float32, device=codes.device)
        out = torch.where(codes == 3, thr, out)
        return torch.where(codes == 2, -thr, out)


class OneBitCompression(Compression):
    """MXNet 2.0's ``{'type': '1bit', 'threshold': thr}``: sends ``+1`` where ``residual > thr``, else ``-1``."""

    type = "1bit"
    values_per_word = 32

    def __init__(self, threshold: float = 0.5):
        check_real("threshold", threshold)  # MXNet 2.0 has no range check for 1bit
        super().__init__(threshold)

    def compress(self, grad, residual):
        g = self._check(grad, residual)
        residual.add_(g)
        bits = residual > torch.tensor(self.threshold, dtype=torch.float32, device=g.device)
        residual.sub_(bits.to(torch.float32) * 2 - 1)  # r -= 1 where sent +1, r += 1 where sent -1
        return _pack(bits.to(torch.uint8), 8, _SHIFTS1, self.packed_bytes(g.numel()))

    def decompress(self, packed, numel):
        return _unpack(packed, numel, _SHIFTS1, 1).to(torch.float32) * 2 - 1


def create_compression(params) -> Compression | None:
    """``{'type': '2bit'|'1bit', 'threshold': float}`` (MXNet's ``set_gradient_compression`` argument) ->
    a :class:`Compression`; ``None`` or ``{'type': 'none'}`` -> ``None``."""
    if params is None:
        return None
    if not isinstance(params, Mapping):
        raise TypeError("compression_params must be a dict such as {'type': '2bit', 'threshold': 0.5} or None, "
                        f"got {type(params).__name__}")
    unknown = sorted(set(params) - {"type", "threshold"})
    if unknown:
        raise ValueError(f"compression_params: unknown key(s) {unknown}; valid keys: 'type', 'threshold'")
    if "type" not in params:
        raise ValueError("compression_params needs a 'type' ('2bit' or '1bit')")
    if params["type"] == "none":
        return None
    kind = check_choice("compression_params['type']", params["type"], COMPRESSION_TYPES)
    threshold = params.get("threshold", 0.5)
    return TwoBitCompression(threshold) if kind == "2bit" else OneBitCompression(threshold)
