"""Shared by the native-kernel tests (tests/test_native_*.py); the ``no_foreach`` fixture is in conftest.py."""

from __future__ import annotations

import os

import pytest

from optzoo import native


def require_native() -> None:
    """Skips without the native kernels, or fails where they are required (``OPTZOO_REQUIRE_NATIVE=1``, as CI)."""
    if native.load() is None:
        if os.environ.get("OPTZOO_REQUIRE_NATIVE") == "1":
            pytest.fail(f"native kernels required (OPTZOO_REQUIRE_NATIVE=1) but unavailable: "
                        f"{native.unavailable_reason()}")
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")


def refuse(self, *args, **kwargs):
    """Stands in for a Python rule that must not run."""
    raise AssertionError("the torch path ran")
