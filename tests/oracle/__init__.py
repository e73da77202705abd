"""Runs real MXNet as an oracle, in its own virtualenv (see scripts/setup-oracle.sh).

MXNet 2.0.0b1 / 1.9.1 need numpy<1.24 and cannot share a process with torch, so tests send
a snippet of MXNet code plus numpy inputs to a subprocess and get numpy outputs back:

    out = run_mxnet('outputs["w"] = (mx.nd.array(inputs["x"]) * 2).asnumpy()', {"x": x})

The snippet sees ``mx``, ``np``, ``inputs`` (dict of arrays), ``params`` (JSON value) and fills
``outputs`` (arrays) and ``results`` (JSON values). Without the oracle the caller is skipped,
unless ``OPTZOO_REQUIRE_ORACLE=1`` (set by scripts/test.sh and CI), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("runner.py")
VENVS = {"2.0": ROOT / ".venv-mxnet", "1.9": ROOT / ".venv-mxnet19"}
DRIVER = Path(__file__).with_name("optimizer_driver.py")


def oracle_python(version: str = "2.0") -> Path | None:
    python = VENVS[version] / "bin" / "python"
    return python if python.exists() else None


def _missing(version: str) -> None:
    message = f"MXNet {version} oracle not installed (run scripts/setup-oracle.sh)"
    if os.environ.get("OPTZOO_REQUIRE_ORACLE") == "1":
        pytest.fail(message)
    pytest.skip(message)


def run_mxnet(code: str, inputs: dict | None = None, params=None, version: str = "2.0",
              timeout: float = 900) -> tuple[dict, object]:
    """Executes ``code`` under MXNet; returns ``(outputs, results)``."""
    python = oracle_python(version)
    if python is None:
        _missing(version)
    with tempfile.TemporaryDirectory(prefix="optzoo-oracle-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "in.npz", **(inputs or {}))
        (tmp / "params.json").write_text(json.dumps(params))
        (tmp / "code.py").write_text(code)
        env = dict(os.environ, MXNET_STORAGE_FALLBACK_LOG_VERBOSE="0", OMP_NUM_THREADS="1",
                   PYTHONPATH=str(RUNNER.parent))
        proc = subprocess.run([str(python), str(RUNNER), str(tmp)], capture_output=True, text=True,
                              timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"MXNet oracle failed:\n{proc.stderr[-6000:]}")
        with np.load(tmp / "out.npz") as data:
            outputs = {k: data[k] for k in data.files}
        results = json.loads((tmp / "results.json").read_text())
    return outputs, results


def run_optimizer_cases(cases: list[dict], arrays: dict[str, np.ndarray], version: str = "2.0"):
    """Runs optimizer trajectory cases in one MXNet process (see optimizer_driver.py);
    returns ``(arrays, {case id: {"num_update": n}})``."""
    code = f"exec(open({str(DRIVER)!r}).read())"
    return run_mxnet(code, arrays, params=cases, version=version)


if __name__ == "__main__":  # manual smoke check
    print(run_mxnet('outputs["y"] = (mx.nd.array(inputs["x"]) * 2).asnumpy()', {"x": np.ones(3)}), file=sys.stderr)
