"""Gradient compression against real MXNet 2.0: a 'device' kvstore with compression on 2 CPU contexts (spec 9.3,
V26) runs the same gradient sequences as optzoo's compressors; the pulled sums must be bit-identical.

MXNet 2.0 exposes no quantise operator to Python, so the packed words are pinned down through the kvstore: with
the second device's gradients all zero (2bit: it always sends 0), the pulled value *is* the first device's
dequantised code for every element, from which MXNet's 2-bit codes are read back and packed with the layout of
spec 9.3 (checked byte by byte in test_kvstore.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import run_mxnet

from optzoo.kvstore.compression import OneBitCompression, TwoBitCompression

MX_CODE = '''
pulled = {}
for case in params:
    kv = mx.kv.create("device")
    kv.set_gradient_compression({"type": case["type"], "threshold": case["threshold"]})
    g = inputs[case["id"]]  # steps x devices x n
    n = g.shape[2]
    kv.init(0, mx.nd.zeros(n))
    outs = []
    for s in range(g.shape[0]):
        vals = [mx.nd.array(g[s, d], ctx=mx.cpu(d)) for d in range(g.shape[1])]
        out = [mx.nd.zeros(n, ctx=mx.cpu(d)) for d in range(g.shape[1])]
        kv.push(0, vals)
        kv.pull(0, out=out)
        outs.append(out[0].asnumpy())
    outputs[case["id"]] = np.stack(outs)
'''


def _gradients():
    rng = np.random.RandomState(0)
    cases = {}
    for ctype in ("2bit", "1bit"):
        for thr in (0.5, 0.3, 1.7) if ctype == "2bit" else (0.5, 0.0, -0.25):
            g = (rng.randn(6, 2, 53) * 0.6).astype(np.float32)
            g[0, :, :6] = [thr, -thr, thr / 2, -thr / 2, 0.0, 2 * thr]  # exactly at the threshold, etc.
            cases[f"{ctype}_{thr}"] = (ctype, thr, g)
            zero = g.copy()
            zero[:, 1] = 0.0  # device 1 silent: the pull shows device 0's codes alone
            cases[f"{ctype}_{thr}_solo"] = (ctype, thr, zero)
    return cases


CASES = _gradients()


@pytest.fixture(scope="module")
def mxnet_pulls():
    params = [{"id": k, "type": t, "threshold": thr} for k, (t, thr, _) in CASES.items()]
    outputs, _ = run_mxnet(MX_CODE, {k: g for k, (_, _, g) in CASES.items()}, params=params)
    return outputs


def _optzoo(ctype, thr, g):
    comp = TwoBitCompression(thr) if ctype == "2bit" else OneBitCompression(thr)
    residuals = [comp.init_residual(torch.zeros(g.shape[2])) for _ in range(g.shape[1])]
    pulled, packed0 = [], []
    for s in range(g.shape[0]):
        total = None
        for d in range(g.shape[1]):
            packed = comp.compress(torch.from_numpy(g[s, d]), residuals[d])
            if d == 0:
                packed0.append(packed)
            part = comp.decompress(packed, g.shape[2])
            total = part if total is None else total + part
        pulled.append(total.numpy())
    return np.stack(pulled), packed0


@pytest.mark.parametrize("case", list(CASES))
def test_pulled_sums_are_bit_identical_to_mxnet(mxnet_pulls, case):
    ctype, thr, g = CASES[case]
    ours, _ = _optzoo(ctype, thr, g)
    np.testing.assert_array_equal(ours, mxnet_pulls[case])


@pytest.mark.parametrize("case", [k for k in CASES if k.startswith("2bit") and k.endswith("solo")])
def test_two_bit_words_are_mxnets(mxnet_pulls, case):
    ctype, thr, g = CASES[case]
    _, packed = _optzoo(ctype, thr, g)
    thr32 = np.float32(thr)
    for step, words in enumerate(packed):
        mx_values = mxnet_pulls[case][step]
        codes = np.where(mx_values == thr32, 3, np.where(mx_values == -thr32, 2, 0)).astype(np.uint8)
        codes = np.concatenate([codes, np.zeros(-len(codes) % 16, np.uint8)]).reshape(-1, 4)
        mx_bytes = (codes[:, 0] << 6) | (codes[:, 1] << 4) | (codes[:, 2] << 2) | codes[:, 3]
        np.testing.assert_array_equal(words.numpy(), mx_bytes)
        assert words.numel() == 4 * -(-g.shape[2] // 16)  # ceil(n / 16) 32-bit words, as MXNet allocates
