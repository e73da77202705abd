"""The runnable examples in examples/, run as the README says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_distributed_example_logs_whole_rank_prefixed_lines(tmp_path):
    """examples/dist_train.py under torchrun with 2 workers: every line of the shared output is one whole log line
    of one worker, prefixed with its rank."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(EXAMPLES / "dist_train.py"), "--epochs", "2"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert all(re.fullmatch(r"\[rank [01]/2\] epoch [01]: mean loss \d+\.\d{4}", line) for line in lines), lines
    assert sorted(line[:16] for line in lines) == ["[rank 0/2] epoch", "[rank 0/2] epoch", "[rank 1/2] epoch",
                                                    "[rank 1/2] epoch"]
