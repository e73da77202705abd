"""Checks of an update's tensors shared by every implementation (readable, foreach, native).

* **No shared memory.** A tensor an update writes (a weight, a master copy, a state) may not share memory with
  any other tensor of the same update: a tied weight listed twice, a state that is a view of a weight or two
  overlapping views would be updated twice or raced on by threads, and each path would give a different answer.
  Gradients are only read, so gradients may share memory with each other. Storage is compared by byte range, so
  two interleaved views of one tensor (``x[::2]``, ``x[1::2]``) count as sharing memory.
* **States as the optimizer makes them.** Every state tensor has the shape, dtype and device of the tensor
  ``create_state`` makes for that weight (a state with the right number of elements but another shape is an
  error, not a reshaped update).

The native core (``optzoo/native/src/core.cpp``) makes the same checks in C++ and names tensors by their position
in the call (``@3``); :func:`native_positions` turns those into the optimizer's parameter indices.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["check_no_shared_memory", "check_state_layout", "native_positions"]

_POSITION = re.compile(r"@(\d+)")


@contextmanager
def native_positions(indices):
    """Rewrites the positions (``@i``) in a native ValueError as the parameter indices ``indices[i]``."""
    try:
        yield
    except ValueError as err:
        if not _POSITION.search(str(err)):
            raise
        raise ValueError(_POSITION.sub(lambda m: f"parameter {indices[int(m.group(1))]!r}", str(err))) from None


def _flat(state) -> list:
    """The state's entries in order, nested tuples flattened, ``None`` kept (entry k is "state k")."""
    if state is None or isinstance(state, torch.Tensor):
        return [state]
    if not isinstance(state, (tuple, list)):
        return [state]
    out = []
    for item in state:  # a leaf is taken here, without a call per leaf (SOAP's states hold dozens per step)
        if item is None or isinstance(item, torch.Tensor):
            out.append(item)
        else:
            out.extend(_flat(item))
    return out


def _region(t: torch.Tensor):
    """``(device, first byte, end byte)`` of the memory a strided tensor can touch; None for none or sparse."""
    if t.numel() == 0 or t.layout != torch.strided:
        return None
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    begin = t.data_ptr()
    return t.device, begin, begin + extent * t.element_size()


def _state_tensors(states) -> list[torch.Tensor]:
    """Every state tensor of ``states``, in order."""
    out = []
    for s in states:
        if isinstance(s, torch.Tensor):
            out.append(s)
        elif s is not None:
            out.extend(leaf for leaf in _flat(s) if isinstance(leaf, torch.Tensor))
    return out


def _may_share_memory(written, read) -> bool:
    """False when no tensor of ``written`` shares memory with another of ``written + read`` (all on one device,
    strided): one sweep over the byte ranges sorted by start, in numpy. True means "look closer"."""
    tensors = written + read
    if len({t.device for t in tensors}) > 1 or any(t.layout != torch.strided for t in tensors):
        return True
    begins = np.array([t.data_ptr() for t in tensors], dtype=np.int64)
    sizes = np.array([t.nbytes if t.is_contiguous() else _region(t)[2] - t.data_ptr() if t.numel() else 0
                      for t in tensors], dtype=np.int64)
    is_written = np.arange(len(tensors)) < len(written)
    order = np.argsort(begins, kind="stable")
    order = order[sizes[order] > 0]  # empty tensors touch no memory
    if len(order) < 2:
        return False
    begins, ends, is_written = begins[order], begins[order] + sizes[order], is_written[order]
    reach_any = np.maximum.accumulate(ends)
    reach_written = np.maximum.accumulate(np.where(is_written, ends, -1))
    clash_any = begins[1:] < reach_any[:-1]  # the first range reaching into this one, whatever it is
    clash_written = begins[1:] < reach_written[:-1]  # ... one that is written
    return bool(np.where(is_written[1:], clash_any, clash_written).any())


def check_no_shared_memory(indices, weights, grads, states) -> None:
    """ValueError naming both tensors when a written tensor shares memory with another tensor of the update."""
    if not _may_share_memory(list(weights) + _state_tensors(states), list(grads)):
        return  # the usual case, checked in one pass; the loop below names the tensors
    regions = []  # (device, begin, end, written, description)
    for index, w, g, s in zip(indices, weights, grads, states):
        items = [(w, True, f"the weight of parameter {index!r}"), (g, False, f"the gradient of parameter {index!r}")]
        items += [(leaf, True, f"state {k} of parameter {index!r}") for k, leaf in enumerate(_flat(s))
                  if isinstance(leaf, torch.Tensor)]
        for tensor, written, what in items:
            if isinstance(tensor, torch.Tensor) and (region := _region(tensor)) is not None:
                regions.append((str(region[0]), region[1], region[2], written, what))
    regions.sort(key=lambda r: (r[0], r[1]))
    reach_any = reach_written = None
    for r in regions:
        device, begin, _, written, what = r
        clash = None
        if written and reach_any is not None and reach_any[0] == device and begin < reach_any[2]:
            clash = reach_any
        elif not written and reach_written is not None and reach_written[0] == device and begin < reach_written[2]:
            clash = reach_written
        if clash is not None:
            raise ValueError(f"{clash[4]} and {what} share memory; every weight and state must have its own storage")
        if reach_any is None or reach_any[0] != device or r[2] > reach_any[2]:
            reach_any = r
        if written and (reach_written is None or reach_written[0] != device or r[2] > reach_written[2]):
            reach_written = r


def check_state_layout(index, weight: torch.Tensor, state, template, check_device: bool = True) -> None:
    """ValueError when a state has another number of entries than the ``template`` state, or a state tensor
    differs in shape, dtype or device from it (``template``: ``[(shape, dtype) or None, ...]`` per flat entry,
    from ``create_state`` on a meta tensor; None: no check). An entry may be None where the template has a tensor
    or the reverse (optional states depend on settings such as ``momentum``)."""
    if template is None:
        return  # a custom create_state that cannot run on meta tensors: its rule decides what it accepts
    entries = _flat(state)
    if len(entries) != len(template):
        raise ValueError(f"the state of parameter {index!r} has {len(entries)} entries, but this optimizer's "
                         f"states have {len(template)} (a state of another optimizer or other settings?)")
    for k, (leaf, expected) in enumerate(zip(entries, template)):
        if expected is None or leaf is None:
            continue
        if not isinstance(leaf, torch.Tensor):
            raise ValueError(f"state {k} of parameter {index!r} is a {type(leaf).__name__}, expected a tensor")
        shape, dtype = expected
        if check_device and leaf.device != weight.device:
            raise ValueError(f"state {k} of parameter {index!r} is on {leaf.device} but its weight is on "
                             f"{weight.device}")
        if tuple(leaf.shape) != shape or leaf.dtype != dtype:
            raise ValueError(f"state {k} of parameter {index!r} is a {tuple(leaf.shape)} {leaf.dtype} tensor; "
                             f"expected {shape} {dtype} for a weight of shape {tuple(weight.shape)} "
                             f"({weight.dtype}), as create_state makes it")


def repeat_rounds(indices, weights, states) -> list[list[int]] | None:
    """Positions split into rounds without repeats, or None when no entry repeats. An entry repeats when the same
    index comes again with the same weight and state objects (MXNet updates it once per occurrence, in order):
    round r holds the (r+1)-th occurrence of every entry, so running the rounds in turn is that order."""
    seen: dict = {}
    rounds: list[list[int]] = []
    for position, (index, weight, state) in enumerate(zip(indices, weights, states)):
        key = (index, id(weight), id(state))
        r = seen.get(key, 0)
        seen[key] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(position)
    return rounds if len(rounds) > 1 else None
