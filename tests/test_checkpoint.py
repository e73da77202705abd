"""Trainer checkpoints: name-keyed, versioned, pickle-free, atomic, and bit-identical on resume (also across
processes)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from optzoo import lr_scheduler, serialization
from optzoo import optimizer as opt
from optzoo.checkpoint import TRAINER_STATE_VERSION
from optzoo.serialization import CheckpointError
from optzoo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def make_model(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    model[0].weight.lr_mult = 0.5
    model[2].bias.wd_mult = 0.0
    return model


def train(model, trainer, steps, start=0):
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
        ((model(x) - y) ** 2).sum().backward()
        trainer.step(8)


def adam_trainer(model, params=None):
    sched = lr_scheduler.CosineScheduler(max_update=30, base_lr=0.01, final_lr=0.001, warmup_steps=5)
    return Trainer(model if params is None else params, "adam",
                   {"learning_rate": 0.01, "wd": 0.01, "lr_scheduler": sched})


def clone_model(model):
    other = make_model()
    other.load_state_dict(model.state_dict())
    return other


def assert_same_weights(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


# ---------------------------------------------------------------------------------------- round trips
def test_state_dict_resume_is_bit_identical():
    model = make_model()
    trainer = adam_trainer(model)
    train(model, trainer, 7)
    state = trainer.state_dict()
    json.dumps(state["meta"])  # metadata is plain JSON
    resumed_model = clone_model(model)
    resumed = Trainer(resumed_model, "sgd")  # replaced by the saved optimizer, as Gluon's load_states does
    with pytest.raises(ValueError, match="'adam' optimizer, but this one uses 'sgd'"):
        resumed.load_state_dict(state)  # ... only when asked: a silent switch of the optimizer is an error
    assert isinstance(resumed.optimizer, opt.SGD)
    resumed.load_state_dict(state, allow_optimizer_change=True)
    train(model, trainer, 10, start=7)
    train(resumed_model, resumed, 10, start=7)
    assert_same_weights(model, resumed_model)
    assert resumed.optimizer.num_update == trainer.optimizer.num_update == 17


def test_save_and_load_states_file(tmp_path):
    model = make_model()
    trainer = adam_trainer(model)
    train(model, trainer, 5)
    trainer.save_states(tmp_path / "trainer.states")
    trainer.save_states(str(tmp_path / "again.states"))  # str paths too
    with safe_open(tmp_path / "trainer.states", framework="pt") as f:  # a safetensors file any tool reads
        assert json.loads(f.metadata()["optzoo.meta"])["format"] == "optzoo.trainer"
        assert set(f.keys()) == set(trainer.state_dict()["tensors"])
    resumed_model = clone_model(model)
    resumed = adam_trainer(resumed_model)
    resumed.load_states(tmp_path / "trainer.states")
    train(model, trainer, 5, start=5)
    train(resumed_model, resumed, 5, start=5)
    assert_same_weights(model, resumed_model)
    with pytest.raises(TypeError, match="fname"):
        trainer.save_states(3)
    with pytest.raises(TypeError, match="fname"):
        trainer.load_states(None)


def test_torch_save_with_weights_only_round_trips(tmp_path):
    model = make_model()
    trainer = adam_trainer(model)
    train(model, trainer, 3)
    torch.save({"model": model.state_dict(), "trainer": trainer.state_dict()}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed_model = make_model(seed=5)
    resumed_model.load_state_dict(loaded["model"])
    resumed = adam_trainer(resumed_model)
    resumed.load_state_dict(loaded["trainer"])
    train(model, trainer, 3, start=3)
    train(resumed_model, resumed, 3, start=3)
    assert_same_weights(model, resumed_model)


def test_parameter_order_may_change_between_save_and_load():
    model = make_model()
    trainer = adam_trainer(model)
    train(model, trainer, 4)
    # a stale-skipped parameter makes counts differ per parameter: they must follow the names
    x = torch.randn(3, 4)
    model[0](x).sum().backward()
    trainer.step(3, ignore_stale_grad=True)
    state = trainer.state_dict()
    resumed_model = clone_model(model)
    reordered = list(resumed_model.named_parameters())[::-1]
    resumed = adam_trainer(resumed_model, reordered)
    assert resumed.param_names != trainer.param_names
    resumed.load_state_dict(state)
    counts = {n: resumed.optimizer._index_update_count[i] for i, n in enumerate(resumed.param_names)}
    assert counts == {"0.bias": 5, "0.weight": 5, "2.bias": 4, "2.weight": 4}
    train(model, trainer, 4, start=10)
    train(resumed_model, resumed, 4, start=10)
    assert_same_weights(model, resumed_model)


def test_load_replaces_the_optimizer_and_reattaches_param_dict():
    model = make_model()
    trainer = Trainer(model, "sgd", {"learning_rate": 0.1, "wd": 0.5, "momentum": 0.9})
    train(model, trainer, 1)
    other_model = clone_model(model)
    other = Trainer(other_model, "adam", {"learning_rate": 0.7})
    other.load_state_dict(trainer.state_dict(), allow_optimizer_change=True)
    restored = other.optimizer
    assert isinstance(restored, opt.SGD) and restored is not trainer.optimizer
    assert (restored.lr, restored.wd, restored.momentum, restored.num_update) == (0.1, 0.5, 0.9, 1)
    assert other.learning_rate == 0.1
    assert restored.param_dict[1] is other_model[0].weight  # this Trainer's parameters, read live
    assert restored._get_lr(1) == pytest.approx(0.05)
    other_model[0].weight.lr_mult = 2.0
    assert restored._get_lr(1) == pytest.approx(0.2)


def test_scheduler_and_multi_precision_states_round_trip():
    model = make_model().to(torch.bfloat16)
    sched = lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.1, warmup_steps=2)
    trainer = Trainer(model, "nag", {"momentum": 0.9, "multi_precision": True, "lr_scheduler": sched})

    def train_bf16(m, t, steps, start=0):
        for step in range(start, start + steps):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step)).bfloat16()
            (m(x) ** 2).sum().backward()
            t.step(8)

    train_bf16(model, trainer, 3)
    state = trainer.state_dict()
    resumed_model = make_model().to(torch.bfloat16)
    resumed_model.load_state_dict(model.state_dict())
    resumed = Trainer(resumed_model, "sgd")
    resumed.load_state_dict(state, allow_optimizer_change=True)
    assert resumed.optimizer.lr_scheduler.get_config() == sched.get_config()
    master, _ = resumed._updater.states[1]
    assert master.dtype == torch.float32
    train_bf16(model, trainer, 4, start=3)
    train_bf16(resumed_model, resumed, 4, start=3)
    assert_same_weights(model, resumed_model)


def test_load_state_dict_copies_tensors():
    model = make_model()
    trainer = adam_trainer(model)
    train(model, trainer, 2)
    state = trainer.state_dict()
    other = adam_trainer(clone_model(model))
    other.load_state_dict(state)
    for tensor in state["tensors"].values():
        tensor.fill_(123.0)
    assert not any((t == 123.0).all() for s in other._updater.states.values() for t in s)


def test_counts_move_to_the_parameters_current_device():
    model = make_model()
    trainer = adam_trainer(model)
    train(model, trainer, 3)
    optimizer = trainer.optimizer
    optimizer._all_index_update_counts = {1: dict(optimizer._index_update_count)}  # as if trained on cuda:1
    state = trainer.state_dict()
    other = adam_trainer(clone_model(model))
    other.load_state_dict(state)
    assert other.optimizer._all_index_update_counts == {0: {0: 3, 1: 3, 2: 3, 3: 3}}


# ---------------------------------------------------------------------------------------- mismatches
def _state():
    model = make_model()
    trainer = adam_trainer(model)
    train(model, trainer, 2)
    return trainer.state_dict()


def test_missing_and_extra_parameters_are_named():
    state = _state()
    bigger = torch.nn.ModuleDict({"0": torch.nn.Linear(4, 6), "2": torch.nn.Linear(6, 2),
                                  "3": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match=r"parameters not in the checkpoint: \['3.bias', '3.weight'\]"):
        Trainer(bigger, "sgd").load_state_dict(state)
    smaller = torch.nn.ModuleDict({"0": torch.nn.Linear(4, 6)})
    with pytest.raises(ValueError, match=r"parameters this Trainer does not have: \['2.bias', '2.weight'\]"):
        Trainer(smaller, "sgd").load_state_dict(state)
    renamed = torch.nn.ModuleDict({"first": torch.nn.Linear(4, 6), "2": torch.nn.Linear(6, 2)})
    with pytest.raises(ValueError, match="first.bias"):
        Trainer(renamed, "sgd").load_state_dict(state)


def test_shape_and_dtype_mismatches_are_named():
    state = _state()
    wider = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    with pytest.raises(ValueError, match=r"'0.weight' was saved with shape \(6, 4\) and dtype float32, "
                                         r"but is \(7, 4\) float32"):
        Trainer(wider, "sgd").load_state_dict(state)
    double = make_model().double()
    with pytest.raises(ValueError, match="float64"):
        Trainer(double, "sgd").load_state_dict(state)


def test_failed_load_leaves_the_trainer_unchanged():
    state = _state()
    model = make_model()
    trainer = Trainer(model, "nag", {"learning_rate": 0.3})
    state["meta"]["counts"]["0.bias"] = -1
    before = trainer.optimizer
    with pytest.raises(CheckpointError, match="bad update count"):
        trainer.load_state_dict(state)
    assert trainer.optimizer is before and trainer._updater.states == {}


@pytest.mark.parametrize("edit, error, match", [
    (lambda s: s["meta"].update(version=TRAINER_STATE_VERSION + 1), CheckpointError, "newer than this"),
    (lambda s: s["meta"].update(version="1"), CheckpointError, "invalid version"),
    (lambda s: s["meta"].update(format="optzoo.updater"), CheckpointError, "Updater blob"),
    (lambda s: s["meta"].update(format="something"), CheckpointError, "not an optzoo Trainer checkpoint"),
    (lambda s: s["meta"].pop("states"), CheckpointError, "missing 'states'"),
    (lambda s: s["tensors"].update(x=[1.0]), CheckpointError, "not a tensor"),
    (lambda s: s["tensors"].clear(), CheckpointError, "missing from checkpoint"),
    (lambda s: s["meta"]["params"].append({"bad": 1}), CheckpointError, "corrupt parameter list"),
    (lambda s: s["meta"]["optimizer"].update(name="nosuch"), ValueError, "unknown optimizer"),
    (lambda s: s.pop("meta"), TypeError, "'meta' and 'tensors'"),
])
def test_corrupt_states_raise_clear_errors(edit, error, match):
    state = _state()
    edit(state)
    with pytest.raises(error, match=match):
        adam_trainer(make_model()).load_state_dict(state)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.states").write_bytes(pickle.dumps(_Boom()))
    (tmp_path / "empty.states").write_bytes(b"")
    trainer = adam_trainer(make_model())
    with pytest.raises(CheckpointError, match="bad magic"):
        trainer.load_states(tmp_path / "evil.states")
    with pytest.raises(CheckpointError):
        trainer.load_states(tmp_path / "empty.states")
    assert not (tmp_path / "pwned").exists()
    good = tmp_path / "good.states"
    model = make_model()
    t = adam_trainer(model)
    train(model, t, 1)
    t.save_states(good)
    (tmp_path / "cut.states").write_bytes(good.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        trainer.load_states(tmp_path / "cut.states")


# ---------------------------------------------------------------------------------------- crash safety
def _saved_trainer(tmp_path, steps):
    model = make_model()
    trainer = adam_trainer(model)
    train(model, trainer, steps)
    path = tmp_path / "trainer.states"
    trainer.save_states(path)
    return model, trainer, path


def _num_update_in(path):
    probe = adam_trainer(make_model())
    probe.load_states(path)
    return probe.optimizer.num_update


def test_failure_before_the_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    model, trainer, path = _saved_trainer(tmp_path, 2)
    train(model, trainer, 3, start=2)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(serialization.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_states(path)
    assert _num_update_in(path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer.states"]  # the temporary file is gone


def test_interrupt_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    model, trainer, path = _saved_trainer(tmp_path, 2)
    train(model, trainer, 3, start=2)
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise KeyboardInterrupt  # Ctrl-C halfway through the write

    monkeypatch.setattr(serialization.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        trainer.save_states(path)
    monkeypatch.undo()
    assert _num_update_in(path) == 2
    trainer.save_states(path)
    assert _num_update_in(path) == 5


KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, sys.argv[1])
    from optzoo import serialization
    from optzoo.trainer import Trainer
    path = sys.argv[2]
    w = torch.nn.Parameter(torch.zeros(1_000_000))
    trainer = Trainer([("w", w)], "adam")
    w.sum().backward()
    trainer.step(1)
    trainer.save_states(path)  # the good file: num_update 1
    real_fdopen = os.fdopen

    class SlowWriter:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()
        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            print("half-written", flush=True)
            time.sleep(60)  # killed here
            self.f.write(data[len(data) // 2:])

    serialization.os.fdopen = lambda fd, mode: SlowWriter(real_fdopen(fd, mode))
    w.sum().backward()
    trainer.step(1)
    trainer.save_states(path)
""")


def test_process_killed_mid_save_leaves_the_previous_file_loadable(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    path = tmp_path / "trainer.states"
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT), str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "half-written"
        temporaries = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert temporaries and temporaries[0].stat().st_size > 0  # the new file was really half written
    finally:
        proc.kill()
        proc.wait(timeout=30)
    w = torch.nn.Parameter(torch.zeros(1_000_000))
    trainer = Trainer([("w", w)], "adam")
    trainer.load_states(path)
    assert trainer.optimizer.num_update == 1 and type(trainer.optimizer).__name__ == "Adam"


# ---------------------------------------------------------------------------------------- across processes
RESUME_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, sys.argv[1])
    from optzoo import lr_scheduler, serialization
    from optzoo.trainer import Trainer
    start, stop, root = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)

    def options(case):
        return {
            "adam": ("adam", {"wd": 1e-3, "lr_scheduler": lr_scheduler.CosineScheduler(
                max_update=40, base_lr=0.02, final_lr=0.001, warmup_steps=8)}),
            "sgd-mp": ("sgd", {"momentum": 0.9, "multi_precision": True, "clip_gradient": 1.0,
                               "lr_scheduler": lr_scheduler.FactorScheduler(step=5, factor=0.8, base_lr=0.05,
                                                                            warmup_steps=4)}),
            "nag": ("nag", {"learning_rate": 0.03, "momentum": 0.8, "wd": 1e-4}),
        }[case]

    for case in ("adam", "sgd-mp", "nag"):
        workdir = os.path.join(root, case)
        os.makedirs(workdir, exist_ok=True)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        aux = torch.nn.Linear(16, 3)
        model.add_module("aux", aux)  # not in forward order: used by hand every third step
        model[0].weight.lr_mult = 0.3
        model[2].bias.wd_mult = 0.0
        dtype = torch.bfloat16 if case == "sgd-mp" else torch.float32
        model.to(dtype)
        params = list(model.named_parameters())
        if start > 0:
            params = params[::-1]  # the resumed process lists its parameters in another order
            weights, _ = serialization.load(f"{workdir}/model.states")
            model.load_state_dict(weights)
            trainer = Trainer(params, "sgd")  # the checkpoint brings its own optimizer
            trainer.load_states(f"{workdir}/trainer.states", allow_optimizer_change=True)
        else:
            name, kwargs = options(case)
            trainer = Trainer(params, name, kwargs)
        for step in range(start, stop):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(12, 6, generator=g).to(dtype), torch.randint(0, 3, (12,), generator=g)
            h = model[1](model[0](x))
            loss = torch.nn.functional.cross_entropy(model[2](h).float(), y, reduction="sum")
            if step % 3 == 0:
                loss = loss + torch.nn.functional.cross_entropy(aux(h).float(), y, reduction="sum")
            loss.backward()
            trainer.step(12, ignore_stale_grad=True)
        serialization.save(f"{workdir}/model.states", dict(model.state_dict()), None)
        trainer.save_states(f"{workdir}/trainer.states")
""")
RESUME_CASES = ["adam", "sgd-mp", "nag"]


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """Each case trained 25 steps in one process, and 11 steps + a new process that loads and does 14 more."""
    tmp = tmp_path_factory.mktemp("resume")
    script = tmp / "resume.py"
    script.write_text(RESUME_SCRIPT)

    def run(start, stop, workdir):
        subprocess.run([sys.executable, str(script), str(ROOT), str(start), str(stop), str(workdir)],
                       check=True, timeout=600)

    run(0, 25, tmp / "full")  # uninterrupted
    run(0, 11, tmp / "split")  # interrupted after 11 steps ...
    run(11, 25, tmp / "split")  # ... and continued by a new process
    return tmp


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_in_a_new_process_is_bit_identical(case, resumed_runs):
    full, split = resumed_runs / "full" / case, resumed_runs / "split" / case
    full_weights, _ = serialization.load(full / "model.states")
    split_weights, _ = serialization.load(split / "model.states")
    assert full_weights.keys() == split_weights.keys()
    for name in full_weights:
        assert torch.equal(full_weights[name], split_weights[name]), name
    full_states, full_meta = serialization.load(full / "trainer.states")
    split_states, split_meta = serialization.load(split / "trainer.states")
    assert full_meta["counts"] == split_meta["counts"]
    assert full_meta["counts"]["aux.weight"] < full_meta["counts"]["0.weight"] == 25
    assert full_meta["optimizer"]["num_update"] == split_meta["optimizer"]["num_update"] == 25
    assert full_meta["states"] == split_meta["states"]  # sorted by name whatever the parameter order
    for key in full_states:
        assert torch.equal(full_states[key], split_states[key]), key
