"""optzoo optimizers inside the frameworks users train with: timm-style creation by name, PyTorch Lightning and
Hugging Face ``transformers.Trainer``, each killed mid-run (SIGKILL) and resumed from the framework's own
checkpoint to the same weights as an uninterrupted run. The framework runs are the scripts in ``examples/``,
launched as a user launches them.

timm itself is not imported: every timm release imports torchvision at start-up, and PyPI's torchvision does not
load beside the CPU build of torch this project pins (``operator torchvision::nms does not exist``). The grouping
rule ``create_optimizer`` shares with timm (1-D tensors and ``model.no_weight_decay()`` names undecayed) is tested
here directly, by its effect on a step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optzoo

ROOT = Path(__file__).resolve().parents[1]


def run_example(script: str, *args: str, expect_killed: bool = False) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    if expect_killed:
        assert proc.returncode == -9, f"{script} {args} should have been killed:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode == 0, f"{script} {args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "weights.pt", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=f"{name} differs after resuming")


# ----------------------------------------------------------------------------------------------- timm style
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.ones(1, 4, 6))
        self.embed = torch.nn.Embedding(10, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.bn = torch.nn.BatchNorm1d(6)
        self.fc = torch.nn.Linear(6, 3)
        self.frozen = torch.nn.Linear(6, 6)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self):
        return ["pos_embed"]


def test_create_optimizer_groups_like_timm():
    model = Block()
    opt = optzoo.create_optimizer(model, "sgd", lr=0.1, weight_decay=0.5, momentum=0.9)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt.optimizer, optzoo.optimizer.SGD)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["wd"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert groups == {0.5: ["embed.weight", "fc.weight"],
                      0.0: ["bn.bias", "bn.weight", "fc.bias", "norm.bias", "norm.weight", "pos_embed"]}
    assert opt.optimizer.momentum == 0.9 and all(g["lr"] == 0.1 for g in opt.param_groups)


def test_create_optimizer_decay_reaches_the_step():
    """With zero gradients only weight decay moves a weight: decayed tensors shrink by lr*wd, the rest stay."""
    model = Block()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = optzoo.create_optimizer(model, "sgd", lr=0.1, weight_decay=0.5, no_weight_decay=["fc.*"])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if name == "embed.weight" else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=name)


def test_create_optimizer_options():
    model = Block()
    one_group = optzoo.create_optimizer(model, "adam", learning_rate=0.01, weight_decay=0.1, filter_bias_and_bn=False,
                                        no_weight_decay=lambda name, p: False)
    assert len(one_group.param_groups) == 1 and one_group.param_groups[0]["wd"] == 0.1
    assert one_group.optimizer.lr == 0.01
    default_lr = optzoo.create_optimizer(torch.nn.Linear(2, 2), "lamb")
    assert default_lr.param_groups[0]["lr"] == optzoo.optimizer.LAMB().lr


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"weight_decay": -1.0}, ValueError, "weight_decay"),
    ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
    ({"lr": 0.1, "learning_rate": 0.1}, ValueError, "lr or learning_rate"),
    ({"wd": 0.1}, ValueError, "weight_decay"),
    ({"no_weight_decay": "bias"}, TypeError, "no_weight_decay"),
    ({"filter_bias_and_bn": "yes"}, TypeError, "filter_bias_and_bn"),
    ({"momentum": 2.0}, ValueError, "momentum"),
])
def test_create_optimizer_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        optzoo.create_optimizer(Block(), "sgd", **kwargs)


def test_create_optimizer_bad_model_and_name():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        optzoo.create_optimizer([torch.zeros(2)], "sgd")
    with pytest.raises(ValueError, match="no trainable parameters"):
        optzoo.create_optimizer(torch.nn.Linear(2, 2).requires_grad_(False), "sgd")
    with pytest.raises(ValueError, match="unknown optimizer"):
        optzoo.create_optimizer(Block(), "adamm")


def test_groups_match_timms_own_rule_where_timm_imports():
    """Where timm imports (it needs a torchvision that loads: not beside this project's CPU torch pin, but on
    machines with a matching pair), create_optimizer's groups equal timm's ``param_groups_weight_decay``."""
    timm_optim = pytest.importorskip("timm.optim", reason="timm (with a working torchvision) is not installed")
    model = Block()
    model.frozen.requires_grad_(True)  # timm keeps frozen parameters out too; compare on trainable ones only
    ours = optzoo.factory.param_groups_weight_decay(model, 0.05)
    theirs = timm_optim.param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    as_sets = lambda groups, key: {g[key]: {id(p) for p in g["params"]} for g in groups}  # noqa: E731
    assert as_sets(ours, "wd") == as_sets(theirs, "weight_decay")


# ----------------------------------------------------------------------------------------------- Lightning
def test_lightning_resume_after_kill_matches_uninterrupted(tmp_path):
    pytest.importorskip("lightning")
    run_example("lightning_train.py", "--out", str(tmp_path / "full"))
    run_example("lightning_train.py", "--out", str(tmp_path / "cut"), "--die-at-epoch", "1", expect_killed=True)
    assert (tmp_path / "cut" / "ckpt" / "last.ckpt").exists() and not (tmp_path / "cut" / "weights.pt").exists()
    run_example("lightning_train.py", "--out", str(tmp_path / "cut"), "--resume")
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "cut"))


# ----------------------------------------------------------------------------------------------- transformers
def test_hf_trainer_resume_after_kill_matches_uninterrupted(tmp_path):
    pytest.importorskip("transformers")
    run_example("hf_trainer.py", "--out", str(tmp_path / "full"))
    run_example("hf_trainer.py", "--out", str(tmp_path / "cut"), "--die-at-step", "12", expect_killed=True)
    assert (tmp_path / "cut" / "checkpoint-8" / "optimizer.pt").exists()
    saved = torch.load(tmp_path / "cut" / "checkpoint-8" / "optimizer.pt", weights_only=True)
    assert len(saved["param_groups"]) == 2  # the timm-style groups travel through the Trainer's checkpoint
    run_example("hf_trainer.py", "--out", str(tmp_path / "cut"), "--resume")
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "cut"))


def test_timm_style_example_learns():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "timm_style.py")], capture_output=True, text=True,
                          timeout=120, check=True)
    losses = [float(line.split()[3]) for line in proc.stdout.splitlines() if line.startswith("step")]
    assert losses[-1] < 0.8 * losses[0], proc.stdout
