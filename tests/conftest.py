"""Fixtures shared by several test files, and the hook that turns skips into failures where CI requires what
they skip for: ``OPTZOO_REQUIRE_NATIVE=1`` (native kernels, a C++ compiler) and ``OPTZOO_REQUIRE_ORACLE=1``
(the MXNet oracles, and MXNet's optimizer guide the snippet tests run). scripts/test.sh sets both."""

from __future__ import annotations

import os
import re

import pytest
import torch
from native_support import refuse

from optzoo.optimizer.base import Optimizer


@pytest.fixture
def no_foreach(monkeypatch):
    """Makes every optimizer's torch._foreach path raise: a passing native run proves the kernel ran."""
    owners = {k for klass in Optimizer.opt_registry.values() for k in klass.__mro__
              if k is not Optimizer and "_foreach_rule" in k.__dict__}
    for klass in owners:
        monkeypatch.setattr(klass, "_foreach_rule", refuse)


#: (environment variable, pattern of the skip reasons it forbids)
REQUIRED_SKIPS = [
    ("OPTZOO_REQUIRE_NATIVE", re.compile(r"native kernels? (are )?unavailable|no C\+\+ compiler", re.I)),
    ("OPTZOO_REQUIRE_ORACLE", re.compile(r"oracle|mxnet|optimizers-guide|\.\./shared", re.I)),
]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip whose reason names something CI requires (see REQUIRED_SKIPS) is reported as a failure, whatever
    raised it (a skipif mark, pytest.skip in a fixture or a test)."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2])
    for variable, pattern in REQUIRED_SKIPS:
        if os.environ.get(variable) == "1" and pattern.search(reason):
            report.outcome = "failed"
            report.longrepr = f"{variable}=1 forbids this skip: {reason}"
            return


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: small matrix products and few-kB networks, where a
    parallel region costs more than the work (modules use it with ``pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
