"""Every optimizer on a CUDA device: the same run on CPU and on the GPU, through ``optzoo.TorchOptimizer`` and
``optzoo.Trainer``, for 25 steps with a learning-rate change. Skipped without CUDA (CI has no GPU; the project
runs it on a lent GPU machine).

The GPU takes the ``torch._foreach`` path (the native kernels are CPU code), whose CUDA kernels contract
multiply-adds and reduce norms in another order: weights and states agree to rtol 1e-4 / atol 1e-5 (per-row
exceptions below, with their reason), not bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from optimizer_table import ROWS
from test_torch_contract import kwargs_of, make_params, set_grads, snapshot

import optzoo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: rows whose GPU run cannot follow the CPU run, with the reason
DIFFERENT_ON_GPU = {
    "sgld": "the Langevin noise comes from a generator of the parameter's device: CPU and CUDA draw other numbers",
}
#: looser tolerances, with the reason
TOLERANCE = {
    "muon": (2e-3, 2e-4, "Newton-Schulz runs in bfloat16: tensor-core products round differently from the CPU's"),
    "soap": (2e-3, 2e-4, "eigendecompositions (cuSOLVER vs LAPACK) give eigenvectors that differ in the last bits"),
}


def _run(row, device: str, steps: int = 25):
    params = [p.detach().to(device).requires_grad_() for p in make_params(row)]
    opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row))
    for step in range(steps):
        set_grads(params, step)
        if step == steps // 2:
            for group in opt.param_groups:
                group["lr"] = group["lr"] * 0.5
        opt.step()
    return [t.cpu() for t in snapshot(opt)]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_every_optimizer_on_cuda_follows_the_cpu(row):
    if row.name in DIFFERENT_ON_GPU:
        pytest.skip(DIFFERENT_ON_GPU[row.name])
    rtol, atol, _ = TOLERANCE.get(row.name, (1e-4, 1e-5, ""))
    cpu, gpu = _run(row, "cpu"), _run(row, "cuda")
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("name", ["sgd", "adam", "lamb", "adagrad"])
def test_trainer_on_cuda_follows_the_cpu(name):
    def train(device):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(device)
        trainer = optzoo.Trainer(model, name, {"learning_rate": 0.01, "wd": 1e-3})
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            x, y = torch.randn(16, 6, generator=gen).to(device), torch.randn(16, 3, generator=gen).to(device)
            ((model(x) - y) ** 2).sum().backward()
            trainer.step(16)
        return [p.detach().cpu() for p in model.parameters()]

    for a, b in zip(train("cpu"), train("cuda")):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
