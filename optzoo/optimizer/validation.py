"""Argument checks shared by every optimizer: clear errors that name the argument, the value and the
expected range. Written so that NaN fails every range check."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable

__all__ = ["check_real", "check_bool", "check_int", "check_choice", "reject_unknown_kwargs"]


def _describe_range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return "a finite number"


def check_real(name: str, value, low=None, high=None, *, low_open: bool = False, high_open: bool = False,
               allow_none: bool = False, allow_inf: bool = False):
    """Returns ``float(value)`` if it is a real number in the range, else raises TypeError/ValueError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        expected = "a real number or None" if allow_none else "a real number"
        raise TypeError(f"{name} must be {expected}, got {value!r} of type {type(value).__name__}")
    value = float(value)
    ok = not math.isnan(value) and (allow_inf or math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        expected = _describe_range(low, high, low_open, high_open)
        if not allow_inf:
            expected += " (finite)"
        if allow_none:
            expected += " or None"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")
    return value


def check_int(name: str, value, low=None, high=None, *, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {_describe_range(low, high, False, False)}, got {value!r}")
    return value


def check_choice(name: str, value, choices: Iterable):
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def reject_unknown_kwargs(owner: str, kwargs: dict, known: Iterable[str]) -> None:
    """Raises TypeError for the first unknown keyword, suggesting the closest known one."""
    if not kwargs:
        return
    known = sorted(set(known))
    name = sorted(kwargs)[0]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid arguments: {', '.join(known)}"
    raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint}")
