"""Real ``torchrun`` launches (``python -m torch.distributed.run --standalone``) of tests/torchrun_job.py:
FSDP2, DDP and ZeroRedundancyOptimizer jobs against one process, and a worker killed with SIGKILL mid-run
(the job ends promptly with an error naming it; the last complete DCP checkpoint resumes exactly).

CI runs a sample of optimizers (one per kind of sharded step); ``OPTZOO_FULL=1`` every optimizer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_sharding as harness
import torch
from optimizer_table import ROWS

JOB = Path(__file__).resolve().parent / "torchrun_job.py"
#: CI: an element-wise rule on its native kernel, trust ratios, factored sums, gathered matrices, whole states
NAMES = [row.name for row in ROWS] if harness.FULL else ["adam", "lamb", "came", "muon", "soap"]
MODES = ("fsdp", "ddp", "zero")


def torchrun(*args, log: Path) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node=2 tests/torchrun_job.py ARGS`` in the background, output in ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                 str(JOB), *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the torchrun job did not finish within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    log = out / "log"
    rc = finish(torchrun("parity", str(out), "--names", ",".join(NAMES), "--modes", ",".join(MODES), log=log), log)
    assert rc == 0, log.read_text()[-5000:]
    return {rank: torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_torchrun_job_equals_one_process(launched, name, mode):
    if name in harness.NOT_COMPARABLE and mode != "fsdp":
        pytest.skip(harness.NOT_COMPARABLE[name])
    for rank, result in launched.items():
        got = result[(name, mode)]
        if isinstance(got, str):  # refused, never a different run (see test_sharding.py)
            assert mode == "zero" and "ZeroRedundancyOptimizer" in got, got
            continue
        if name in harness.NOT_COMPARABLE:  # the same rule on the recorded gradients
            want = harness.replay_run(name, result[(name, "grads")])
        else:
            want = harness.reference_run(name)
        harness._assert_matches(got, want, f"{name} {mode} under torchrun, rank {rank}")


def _wait_for(path: Path, at_least: int, proc, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if path.exists() and int(path.read_text() or 0) >= at_least:
            return
        time.sleep(0.05)
    pytest.fail(f"{path.name} did not reach {at_least} (job exit code {proc.poll()})")


def test_a_worker_killed_mid_run_ends_the_job_promptly_and_the_last_checkpoint_resumes(tmp_path):
    log = tmp_path / "killed.log"
    proc = torchrun("train", str(tmp_path), "--name", "lamb", "--save-every", "4", "--pause", "0.2", log=log)
    _wait_for(tmp_path / "progress1", 10, proc)
    pids = [int((tmp_path / f"pid{rank}").read_text()) for rank in range(2)]
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    rc = finish(proc, log, timeout=120)
    seconds = time.monotonic() - killed
    text = log.read_text()
    assert rc != 0, text[-3000:]
    assert "Signal 9 (SIGKILL)" in text and f"{pids[1]}" in text, text[-3000:]  # torchrun names the killed worker
    assert seconds < 30, f"the job took {seconds:.0f} s to end after a worker was killed"
    with pytest.raises(ProcessLookupError):  # the surviving worker is gone too, not hanging
        os.kill(pids[0], 0)
    # the last complete checkpoint: written before the kill, never after
    latest = int((tmp_path / "latest").read_text())
    assert 8 <= latest <= int((tmp_path / "progress0").read_text()) and latest % 4 == 0
    assert not (tmp_path / "final.pt").exists()
    # a fresh job resumes from it and ends exactly where the uninterrupted one-process run does
    log = tmp_path / "resumed.log"
    assert finish(torchrun("train", str(tmp_path), "--name", "lamb", "--save-every", "100", log=log), log) == 0, \
        log.read_text()[-3000:]
    final = torch.load(tmp_path / "final.pt", weights_only=False)
    assert final["resumed_from"] == latest
    harness._assert_matches(final["snapshot"], harness.reference_run("lamb"), f"lamb resumed from step {latest}")
