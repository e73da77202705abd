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

__all__ = ["COMPRESSION_TYPES", "Compression", "OneBitCompression", "TwoBitCompression", "create_compression",
           "count_bits", "pack_counts", "packed_count_bytes", "unpack_counts"]

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

    # ----------------------------------------------------------------- summing packed gradients (dist_sync)
    def sum_counts(self, packed_parts, numel: int) -> torch.Tensor:
        """The sum of the gradients that ``packed_parts`` (one packed buffer per worker, same elements) encode,
        as one small non-negative integer per element (``int16``): every dequantised value is one of two or
        three levels, so the sum of N of them is fixed by how many workers sent each level."""
        raise NotImplementedError

    def counts_to_values(self, counts: torch.Tensor, workers: int) -> torch.Tensor:
        """The float32 sums :meth:`sum_counts` stands for, each computed with a single rounding."""
        raise NotImplementedError

    def count_levels(self, workers: int) -> int:
        """How many different values :meth:`sum_counts` can produce for ``workers`` workers."""
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


def count_bits(levels: int) -> int:
    """Bits per value for integers in ``[0, levels)``."""
    return max(1, (levels - 1).bit_length())


def pack_counts(counts: torch.Tensor, levels: int) -> torch.Tensor:
    """Non-negative integers below ``levels`` as a dense bit stream, :func:`count_bits` bits each, most
    significant bit first (uint8; the last byte zero-padded)."""
    bits = count_bits(levels)
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.int32, device=counts.device)
    stream = ((counts.to(torch.int32).reshape(-1, 1) >> shifts) & 1).reshape(-1).to(torch.uint8)
    padded = torch.zeros(8 * packed_count_bytes(counts.numel(), levels), dtype=torch.uint8, device=counts.device)
    padded[:stream.numel()] = stream
    return (padded.view(-1, 8) << _SHIFTS1.to(counts.device)).sum(dim=1, dtype=torch.uint8)


def unpack_counts(data: torch.Tensor, numel: int, levels: int) -> torch.Tensor:
    """Inverse of :func:`pack_counts` (``int16``)."""
    bits = count_bits(levels)
    stream = _unpack(data, numel * bits, _SHIFTS1, 1).to(torch.int32).view(numel, bits)
    weights = 1 << torch.arange(bits - 1, -1, -1, dtype=torch.int32, device=data.device)
    return (stream * weights).sum(dim=1).to(torch.int16)


def packed_count_bytes(numel: int, levels: int) -> int:
    """Bytes :func:`pack_counts` takes for ``numel`` counts."""
    return (numel * count_bits(levels) + 7) // 8


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

    def sum_counts(self, packed_parts, numel):
        # k = (#workers that sent +thr) - (#workers that sent -thr), stored as k + N in [0, 2N]
        total = torch.full((numel,), len(packed_parts), dtype=torch.int16)
        for packed in packed_parts:
            codes = _unpack(packed, numel, _SHIFTS2, 3).to(torch.int16)
            total += (codes == 3).to(torch.int16) - (codes == 2).to(torch.int16)
        return total

    def counts_to_values(self, counts, workers):
        thr = torch.tensor(self.threshold, dtype=torch.float32, device=counts.device)
        return (counts.to(torch.float32) - workers) * thr

    def count_levels(self, workers):
        return 2 * workers + 1


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

    def sum_counts(self, packed_parts, numel):
        # k = #workers that sent +1; the sum is k - (N - k)
        total = torch.zeros(numel, dtype=torch.int16)
        for packed in packed_parts:
            total += _unpack(packed, numel, _SHIFTS1, 1).to(torch.int16)
        return total

    def counts_to_values(self, counts, workers):
        return counts.to(torch.float32) * 2 - workers

    def count_levels(self, workers):
        return workers + 1


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
