"""Entry point executed by the MXNet virtualenv's python (never imported by the test suite)."""

import json
import sys
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np

warnings.simplefilter("ignore")
tmp = Path(sys.argv[1])
with np.load(tmp / "in.npz") as data:
    inputs = {k: data[k] for k in data.files}
params = json.loads((tmp / "params.json").read_text())
outputs: dict = {}
results: dict = {}
namespace = {"mx": mx, "np": np, "inputs": inputs, "params": params, "outputs": outputs, "results": results}
exec(compile((tmp / "code.py").read_text(), "oracle_snippet", "exec"), namespace)
np.savez(tmp / "out.npz", **{k: np.asarray(v) for k, v in outputs.items()})
(tmp / "results.json").write_text(json.dumps(results))
