"""Resuming real MXNet checkpoints: MXNet trains k steps and saves ``.params`` + ``.states``; optzoo (no MXNet
in this process) loads both into the mirrored torch net and an ``optzoo.Trainer`` and trains m more steps;
MXNet continues the same m steps from the same files. Weights, states, ``num_update`` and update counts must
agree.

The fixtures are produced at test time by ``tests/oracle/checkpoint_driver.py`` (one MXNet process per MXNet
version for all cases) and cached under ``.oracle-cache/`` keyed by a hash of the driver and the cases.

Tolerances: float32 ``rtol=1e-4, atol=1e-5`` (as tests/test_trainer_mxnet.py: MXNet and torch compute the
forward and backward passes of the network with different summation orders, so gradients differ by a few ulp).
Measured over the 46 cases (MXNet 2.0.0b1 / 1.9.1 vs torch 2.13, CPU): largest float32 gap 1.5e-5 absolute on
FTML's large states (relative 2e-7), 1.9e-6 elsewhere. Float16 weights with a float32 master copy:
``rtol=atol=2e-3``, measured 3.4e-4 (the float16 forward pass rounds differently). Breaking the rules on
purpose fails these checks by far more: no 1.x multi-precision swap 0.78, no 1.x RMSProp reorder NaN, update
counts not restored 0.013-0.02, Nadam's m_schedule not restored 0.003; a scheduler rebuilt from its decayed
``base_lr`` and unsorted Gluon indices are refused outright.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle import ROOT, run_mxnet

from optzoo import lr_scheduler, mxnet
from optzoo.optimizer.base import _leaves
from optzoo.trainer import Trainer

DRIVER = Path(__file__).parent / "oracle" / "checkpoint_driver.py"
K, M, BATCH, STEPS = 4, 4, 4, 8
SCHED_WARM = {"type": "FactorScheduler", "kwargs": {"step": 3, "factor": 0.5, "base_lr": 0.05, "warmup_steps": 2,
                                                    "warmup_begin_lr": 0.01}}
COSINE = {"type": "CosineScheduler", "kwargs": {"max_update": 12, "base_lr": 0.01, "final_lr": 0.001,
                                                "warmup_steps": 3}}
MULTI = {"type": "MultiFactorScheduler", "kwargs": {"step": [2, 5, 7], "factor": 0.5, "base_lr": 0.05}}
POLY = {"type": "PolyScheduler", "kwargs": {"max_update": 12, "base_lr": 0.02, "pwr": 2, "warmup_steps": 2}}


def _case(cid, optimizer, kwargs=None, kind="mlp", **extra):
    return {"id": cid, "optimizer": optimizer, "kwargs": kwargs or {}, "kind": kind, "k": K, "m": M, **extra}


CASES_20 = [
    _case("sgd-mom-factor-warmup-mults", "sgd", {"momentum": 0.9, "wd": 1e-3, "learning_rate": 0.05},
          scheduler=SCHED_WARM, mults={"0.weight": [0.5, 1.0], "1.bias": [1.0, 0.0]}),
    _case("sgd-fp16-mp", "sgd", {"momentum": 0.9, "multi_precision": True, "learning_rate": 0.05},
          dtype="float16", kind="elem"),
    _case("adam-bn-cosine-warmup", "adam", {"wd": 1e-4, "learning_rate": 0.01}, kind="bn", scheduler=COSINE),
    _case("adam-fp16-mp", "adam", {"multi_precision": True, "learning_rate": 0.01}, dtype="float16", kind="elem"),
    _case("nag", "nag", {"momentum": 0.9, "learning_rate": 0.02}, scheduler=POLY),
    _case("sgd-multifactor-clip", "sgd", {"momentum": 0.5, "clip_gradient": 0.5, "learning_rate": 0.05},
          scheduler=MULTI),
    # the optimizer's learning_rate overrides the scheduler's base_lr (MXNet's rule, kept by optzoo)
    _case("adam-lr-overrides-schedule", "adam", {"learning_rate": 0.02}, scheduler=SCHED_WARM),
    _case("adamw", "adamw", {"wd": 0.01, "learning_rate": 0.01}),
    _case("adabelief", "adabelief", {"learning_rate": 0.01}),
    _case("adamax", "adamax", {"learning_rate": 0.01}),
    _case("nadam", "nadam", {"learning_rate": 0.01}),
    _case("ftml", "ftml", {"learning_rate": 0.01}),
    _case("ftrl", "ftrl", {"learning_rate": 0.05, "lamda1": 0.001}),
    _case("signum", "signum", {"learning_rate": 0.01, "momentum": 0.9}),
    _case("rmsprop", "rmsprop", {"learning_rate": 0.01}),
    _case("rmsprop-centered", "rmsprop", {"learning_rate": 0.01, "centered": True, "momentum": 0.9}),
    _case("adagrad", "adagrad", {"learning_rate": 0.05}),
    _case("adadelta", "adadelta", {"learning_rate": 1.0}),
    _case("dcasgd", "dcasgd", {"learning_rate": 0.05, "momentum": 0.9}),
    _case("lamb", "lamb", {"learning_rate": 0.01}),
    _case("lans", "lans", {"learning_rate": 0.01}),
    _case("lars", "lars", {"learning_rate": 0.05, "momentum": 0.9}),
    _case("groupadagrad", "groupadagrad", {"learning_rate": 0.05}, kind="nobias"),
    _case("test", "test", {"learning_rate": 0.01}),
]
CASES_19 = [  # Gluon 2.0 has no sparse gradients: the lazy sparse updates are checked against 1.x
    _case("adam-sparse-lazy", "adam", {"lazy_update": True, "learning_rate": 0.01}, kind="embed"),
    _case("sgd-sparse-lazy", "sgd", {"lazy_update": True, "momentum": 0.9, "learning_rate": 0.05}, kind="embed"),
    _case("sgd-fp16-mp", "sgd", {"momentum": 0.9, "multi_precision": True, "learning_rate": 0.05,
                                 "lazy_update": True}, dtype="float16", kind="elem"),
    _case("rmsprop-centered", "rmsprop", {"learning_rate": 0.01, "centered": True, "gamma2": 0.9}),
    _case("adam-factor-warmup", "adam", {"learning_rate": 0.05, "lazy_update": True}, scheduler=SCHED_WARM),
    _case("nag-mom", "nag", {"momentum": 0.9, "learning_rate": 0.02}),
    # 1.x defaults differ from 2.0's (epsilon): take the file's settings
    _case("adadelta", "adadelta", {"learning_rate": 1.0}, override=True),
    _case("adagrad-eps-inside", "adagrad", {"learning_rate": 0.05}, override=True),
    _case("adamax-no-eps", "adamax", {"learning_rate": 0.01}, override=True),
    _case("dcasgd", "dcasgd", {"learning_rate": 0.05}),  # 1.9.1's DCASGD fails with a momentum (`if mom:`)
    _case("ftml", "ftml", {"learning_rate": 0.01}),
    _case("ftrl", "ftrl", {"learning_rate": 0.05, "lamda1": 0.001}),
    _case("groupadagrad", "groupadagrad", {"learning_rate": 0.05}, kind="nobias", override=True),
    _case("lamb", "lamb", {"learning_rate": 0.01}),
    _case("nadam", "nadam", {"learning_rate": 0.01}),
    _case("rmsprop", "rmsprop", {"learning_rate": 0.01}),
    _case("signum", "signum", {"learning_rate": 0.01, "momentum": 0.9}),
    _case("ccsgd", "ccsgd", {"learning_rate": 0.05, "momentum": 0.9, "lazy_update": True}),
    _case("lbsgd", "lbsgd", {"learning_rate": 0.05, "momentum": 0.9, "warmup_epochs": 1, "updates_per_epoch": 4}),
    _case("adam-bn-explicit-order", "adam", {"learning_rate": 0.01, "lazy_update": True}, kind="bn"),
    _case("module-sgd", "sgd", {"momentum": 0.9, "learning_rate": 0.05, "wd": 1e-3}, style="module"),
    _case("module-adam", "adam", {"learning_rate": 0.01}, style="module", begin_num_update=K),
]
for _c in CASES_19:  # every parameter shape differs: optzoo pairs 1.x states with parameters by shape
    _c["infer_order"] = _c.get("style") != "module" and _c["kind"] != "bn"
#: not resumable against MXNet step by step: SGLD draws MXNet's random noise (it has no optimizer state)
SKIPPED = {"sgld": "random noise from MXNet's generator"}
FP16_TOL = {"rtol": 2e-3, "atol": 2e-3}
F32_TOL = {"rtol": 1e-4, "atol": 1e-5}


def make_inputs(cases):
    rng = np.random.default_rng(3)
    inputs = {"X": rng.standard_normal((STEPS, BATCH, 6)).astype(np.float32),
              "XI": rng.integers(0, 10, (STEPS, BATCH)).astype(np.int64),
              "Y": rng.standard_normal((STEPS, BATCH, 3)).astype(np.float32)}
    for case in cases:
        for name, tensor in torch_net(case).state_dict().items():
            if "running" in name or "num_batches" in name:
                continue
            gluon = name
            if case["kind"] == "bn" and name.startswith("1."):
                gluon = name.replace("weight", "gamma").replace("bias", "beta")
            inputs[f"{case['id']}/init/{gluon}"] = (rng.standard_normal(tuple(tensor.shape)) * 0.5).astype(np.float32)
    return inputs


class Dense(torch.nn.Linear):
    def __init__(self, n_in, n_out, tanh, bias=True):
        super().__init__(n_in, n_out, bias=bias)
        self.tanh = tanh

    def forward(self, x):
        y = super().forward(x)
        return torch.tanh(y) if self.tanh else y


class Elem(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, 6))
        self.bias = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return (x[:, None, :] * self.weight[None]).sum(2) + self.bias


def torch_net(case) -> torch.nn.Module:
    """The Gluon network of checkpoint_driver.py in torch, with the same structural parameter names."""
    if case["kind"] == "elem":
        return Elem().half() if case.get("dtype") == "float16" else Elem()
    layers, bias = [], case["kind"] != "nobias"
    if case["kind"] == "embed":
        layers.append(torch.nn.Embedding(10, 6, sparse=True))
    layers.append(Dense(6, 8, True, bias))
    if case["kind"] == "bn":
        layers.append(torch.nn.BatchNorm1d(8))
    layers.append(Dense(8, 3, False, bias))
    net = torch.nn.Sequential(*layers)
    return net.half() if case.get("dtype") == "float16" else net


def generate(cases, version):
    """Runs the driver for all cases in one MXNet process (or reuses the cached files)."""
    inputs = make_inputs(cases)
    digest = hashlib.sha256(DRIVER.read_bytes() + json.dumps(cases, sort_keys=True).encode()
                            + b"".join(inputs[k].tobytes() for k in sorted(inputs))).hexdigest()[:16]
    out = ROOT / ".oracle-cache" / f"mxnet-checkpoints-{version}-{digest}"
    done = out / "done.json"
    if not done.exists():
        code = f"exec(open({str(DRIVER)!r}).read())"
        _, results = run_mxnet(code, inputs, params={"out": str(out), "cases": cases}, version=version)
        done.write_text(json.dumps(results))
    return out, inputs, json.loads(done.read_text())


@pytest.fixture(scope="module")
def mxnet20():
    return generate(CASES_20, "2.0")


@pytest.fixture(scope="module")
def mxnet19():
    return generate(CASES_19, "1.9")


pytestmark = pytest.mark.usefixtures("one_thread")


def optzoo_scheduler(spec):
    if not spec:
        return None
    name = {"FactorScheduler": "factor", "CosineScheduler": "cosine", "PolyScheduler": "poly",
            "MultiFactorScheduler": "multifactor"}[spec["type"]]
    return lr_scheduler.create(name, **spec["kwargs"])


def optzoo_kwargs(case):
    kwargs = dict(case["kwargs"])
    if "gamma2" in kwargs:  # 1.x RMSProp's momentum is 2.0's (optzoo's) momentum
        kwargs["momentum"] = kwargs.pop("gamma2")
    if case.get("scheduler"):
        kwargs["lr_scheduler"] = optzoo_scheduler(case["scheduler"])
    if case.get("style") == "module":
        kwargs["begin_num_update"] = case.get("begin_num_update", 0)
    return kwargs


def train(case, net, trainer, inputs):
    dtype = torch.float16 if case.get("dtype") == "float16" else torch.float32
    for step in range(K, K + M):
        x = torch.from_numpy(inputs["XI"][step]) if case["kind"] == "embed" else torch.from_numpy(
            inputs["X"][step]).to(dtype)
        y = torch.from_numpy(inputs["Y"][step]).to(dtype)
        ((net(x) - y) ** 2).sum().backward()
        trainer.step(BATCH)


def resume(case, folder, order):
    """What a user does: the torch net, the MXNet files, an optzoo Trainer, go on."""
    net = torch_net(case)
    if case.get("style") == "module":
        report = mxnet.load_params_into(net, folder / "model-0000.params")
        names = mxnet.module_param_names(folder / "model-symbol.json", folder / "model-0000.params",
                                         label_names=("label",))
        assert names == order  # the symbol file gives the Module's index order
        for name, p in net.named_parameters():  # 1.x Module: no weight decay unless the name ends in _weight
            p.wd_mult = 1.0 if name.endswith("weight") else 0.0
        trainer = Trainer(net, case["optimizer"], optzoo_kwargs(case))
        trainer.load_states(folder / "model-0000.states", param_names=names, mapping=report["mapping"])
        return net, trainer, report["mapping"]
    mxnet.load_params_into(net, folder / "model.params")
    for name, (lr_mult, wd_mult) in case.get("mults", {}).items():
        p = net.get_parameter(name)
        p.lr_mult, p.wd_mult = lr_mult, wd_mult
    trainer = Trainer(net, case["optimizer"], optzoo_kwargs(case))
    # MXNet 1.x Gluon: the index order (sorted prefixed names) is not in the files; optzoo pairs states with
    # parameters by shape when that is unambiguous (param_names=None), else it needs the order
    names = None if case.get("infer_order") else order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1.x AdaGrad's epsilon note
        trainer.load_states(folder / "trainer.states", param_names=names,
                            allow_optimizer_change=case.get("override", False))
    return net, trainer, None


def check(case, folder, order, inputs, version):
    tol = FP16_TOL if case.get("dtype") == "float16" else F32_TOL
    net, trainer, mapping = resume(case, folder, order)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train(case, net, trainer, inputs)
    module = case.get("style") == "module"
    final = mxnet.load_params(folder / ("final-0000.params" if module else "final.params"))
    state = net.state_dict()
    for name, theirs in final.items():
        key = mapping[name] if module else mxnet.names.torch_param_name(name)
        if "running" in key:
            continue  # not trained (and torch keeps an unbiased running variance)
        np.testing.assert_allclose(state[key].float().numpy(), theirs.float().numpy(), err_msg=f"{case['id']}: {key}",
                                   **tol)
        assert (state[key] - before[key]).abs().max() > 10 * tol["atol"], f"{key} did not move"
    mx_final = mxnet.load_states(folder / ("final-0000.states" if module else "final.states"))
    index = {name: i for i, name in enumerate(trainer.param_names)}
    torch_names = [mapping["arg:" + n] if module else mxnet.names.torch_param_name(n) for n in order]
    counts = mx_final.index_update_counts
    if mx_final.has_optimizer:
        assert trainer.optimizer.num_update == mx_final.num_update == K + M
    for mx_index, mx_state in mx_final.states.items():
        i = index[torch_names[mx_index]]
        ours = trainer._updater.states[i]
        theirs = mxnet.states.convert_state(mx_state, trainer.optimizer, trainer._params[i],
                                            mx_final.version or "1.x", f"{case['id']}")
        for a, b in zip(_leaves(ours), _leaves(theirs), strict=True):
            np.testing.assert_allclose(a.float().numpy(), b.float().numpy(),
                                       err_msg=f"{case['id']}: state of {torch_names[mx_index]}", **tol)
        if counts:
            assert trainer.optimizer._index_update_count[i] == counts[mx_index]


@pytest.mark.oracle
@pytest.mark.parametrize("case", CASES_20, ids=[c["id"] for c in CASES_20])
def test_resume_mxnet20_checkpoint(case, mxnet20):
    out, inputs, results = mxnet20
    check(case, out / case["id"], results[case["id"]]["order"], inputs, "2.0")


@pytest.mark.oracle
@pytest.mark.parametrize("case", CASES_19, ids=[c["id"] for c in CASES_19])
def test_resume_mxnet19_checkpoint(case, mxnet19):
    out, inputs, results = mxnet19
    check(case, out / case["id"], results[case["id"]]["order"], inputs, "1.9")


def test_every_optimizer_is_covered():
    """Every optimizer with an MXNet counterpart (a table row with an oracle) has a resume case."""
    from optimizer_table import ROWS

    covered = {c["optimizer"] for c in CASES_20} | {c["optimizer"] for c in CASES_19} | set(SKIPPED)
    legacy_only = {"ccsgd", "lbsgd"}  # MXNet 1.x only; their state layouts are covered by the generic mapping
    with_mxnet = {row.name for row in ROWS if row.oracle is not None}
    assert with_mxnet >= {"sgd", "adam", "lamb", "ftrl"} and with_mxnet - legacy_only <= covered
    assert os.environ.get("OPTZOO_FULL") in (None, "", "0", "1")


@pytest.mark.oracle
@pytest.mark.parametrize("case_id", ["adam-bn-cosine-warmup", "sgd-mom-factor-warmup-mults"])
def test_cli_convert_then_resume_from_optzoo_files(case_id, mxnet20, tmp_path, capsys):
    """``optzoo convert`` writes safetensors + an optzoo Trainer checkpoint that continue the MXNet run."""
    from safetensors.torch import load_file

    from optzoo.cli import main

    out, inputs, _ = mxnet20
    case = next(c for c in CASES_20 if c["id"] == case_id)
    folder = out / case_id
    assert main(["convert", str(folder / "model.params"), str(folder / "trainer.states"), "--out",
                 str(tmp_path)]) == 0
    net = torch_net(case)
    missing, unexpected = net.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    for name, (lr_mult, wd_mult) in case.get("mults", {}).items():
        net.get_parameter(name).lr_mult, net.get_parameter(name).wd_mult = lr_mult, wd_mult
    trainer = Trainer(net, case["optimizer"], optzoo_kwargs(case))
    trainer.load_states(tmp_path / "trainer.states")  # optzoo's own format from here on
    train(case, net, trainer, inputs)
    final = mxnet.load_params(folder / "final.params")
    for name, theirs in final.items():
        key = mxnet.names.torch_param_name(name)
        if "running" not in key:
            np.testing.assert_allclose(net.state_dict()[key].numpy(), theirs.numpy(), err_msg=key, **F32_TOL)
    assert main(["inspect", str(folder / "trainer.states")]) == 0
    text = capsys.readouterr().out
    assert f"optimizer: {case['optimizer'].upper() if case['optimizer'] == 'sgd' else 'Adam'}" in text
    assert "num_update: 4" in text and case["scheduler"]["type"] in text


def _doc_blocks() -> dict[str, str]:
    import re

    text = (ROOT / "docs" / "migration.md").read_text()
    return dict(re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", text, flags=re.S))


MXNET_CONTINUES = r"""
net2 = nn.HybridSequential()
net2.add(nn.Conv2D(8, 3, in_channels=1), nn.BatchNorm(in_channels=8), nn.Activation("relu"),
         nn.MaxPool2D(2), nn.Flatten(), nn.Dense(10, in_units=72))
net2.initialize()
net2.load_parameters("cnn.params")
schedule2 = mx.lr_scheduler.FactorScheduler(step=10, factor=0.5, base_lr=0.05, warmup_steps=5)
trainer2 = gluon.Trainer(net2.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9, "wd": 1e-4,
                                                        "lr_scheduler": schedule2})
trainer2.load_states("cnn.states")
for step in range(20, 40):
    x, y = batch(step)
    with autograd.record():
        loss = loss_fn(net2(mx.np.array(x)), mx.np.array(y))
    loss.backward()
    trainer2.step(16)
net2.save_parameters("final.params")
"""


@pytest.mark.oracle
def test_migration_guide_worked_example(tmp_path, monkeypatch):
    """docs/migration.md's two blocks, verbatim: the torch run ends where MXNet's own continuation ends."""
    blocks = _doc_blocks()
    assert set(blocks) == {"mxnet", "torch"}
    code = f"import os\nos.chdir({str(tmp_path)!r})\n" + blocks["mxnet"] + MXNET_CONTINUES
    run_mxnet(code)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks["torch"], "migration.md", "exec"), namespace)
    net, trainer = namespace["net"], namespace["trainer"]
    assert trainer.optimizer.num_update == 40
    final = mxnet.load_params(tmp_path / "final.params")
    start = mxnet.load_params(tmp_path / "cnn.params")
    for name, theirs in final.items():
        key = mxnet.names.torch_param_name(name)
        if "running" in key:
            continue
        ours = net.state_dict()[key]
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), err_msg=key, **F32_TOL)
        if key != "0.bias":  # a bias right before BatchNorm gets no gradient
            assert (ours - start[name]).abs().max() > 100 * F32_TOL["atol"], key


@pytest.mark.oracle
def test_cli_convert_module_checkpoint_needs_and_uses_the_index_order(mxnet19, tmp_path, capsys):
    from optzoo.cli import main

    out, _, _ = mxnet19
    case = next(c for c in CASES_19 if c["id"] == "module-sgd")
    folder = out / case["id"]
    args = ["convert", str(folder / "model-0000.params"), str(folder / "model-0000.states"), "--out", str(tmp_path),
            "--optimizer", "sgd", "--optimizer-params", json.dumps(case["kwargs"])]
    assert main(args) == 2 and "list_arguments" in capsys.readouterr().err
    order = mxnet.module_param_names(folder / "model-symbol.json", folder / "model-0000.params",
                                     label_names=("label",))
    assert main([*args, "--param-names", json.dumps(order)]) == 0
    # the optzoo checkpoint holds MXNet index 2's momentum under the name fc2_weight
    params = {n: torch.nn.Parameter(torch.zeros(s)) for n, s in (("fc1_weight", (8, 6)), ("fc1_bias", (8,)),
                                                                ("fc2_weight", (3, 8)), ("fc2_bias", (3,)))}
    trainer = Trainer(params, "sgd", case["kwargs"])
    trainer.load_states(tmp_path / "trainer.states")
    momentum = trainer._updater.states[trainer.param_names.index("fc2_weight")]
    assert torch.equal(momentum, mxnet.load_states(folder / "model-0000.states").states[2])


@pytest.mark.oracle
def test_mxnet19_gluon_states_with_equal_shapes_need_the_order(mxnet19):
    out, _, results = mxnet19
    case = next(c for c in CASES_19 if c["id"] == "adam-bn-explicit-order")
    net = torch_net(case)
    trainer = Trainer(net, "adam", optzoo_kwargs(case))
    with pytest.raises(ValueError, match=r"sorted prefixed names .* state \d+ fits \['0.bias', '1.bias', '1.weight'\]"):
        trainer.load_states(out / case["id"] / "trainer.states")
    trainer.load_states(out / case["id"] / "trainer.states", param_names=results[case["id"]]["order"])
    assert trainer.optimizer.num_update == K
