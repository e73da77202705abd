"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest
from native_support import refuse

from optzoo.optimizer.base import Optimizer


@pytest.fixture
def no_foreach(monkeypatch):
    """Makes every optimizer's torch._foreach path raise: a passing native run proves the kernel ran."""
    owners = {k for klass in Optimizer.opt_registry.values() for k in klass.__mro__
              if k is not Optimizer and "_foreach_rule" in k.__dict__}
    for klass in owners:
        monkeypatch.setattr(klass, "_foreach_rule", refuse)
