"""Single-process kvstores: 'local' and 'device' (MXNet reduces over the devices of one machine)."""

from __future__ import annotations

from .base import KVStoreBase

__all__ = ["LocalKVStore"]


class LocalKVStore(KVStoreBase):
    """``'local'`` / ``'device'``: pushes of several per-device tensors are summed (in list order) on the
    stored value's device. ``'device'`` accepts gradient compression: each device's gradient is quantised
    with its own residual, dequantised and summed (MXNet's ``CommDevice::ReduceCompressed``)."""

    def _reduce(self, key, values):
        target = self._store[key].device
        if self._compression is None:
            merged = values[0].to(target, copy=True)
            for v in values[1:]:
                merged += v.to(target)
            return merged
        merged = None
        for slot, v in enumerate(values):
            packed = self._compression.compress(v, self._residual(key, slot, v))
            self.bytes_sent += packed.numel()
            part = self._compression.decompress(packed.to(target), v.numel()).reshape(v.shape)
            merged = part if merged is None else merged.add_(part)
        return merged
