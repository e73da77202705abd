"""The torch.optim.Optimizer contract, checked for every row of the optimizer table (so for every registered
optimizer, including ones added later): copies and checkpoints, hooks, state dicts, live param-group
hyperparameters, dtypes on every path, tensor learning rates, complex parameters, torch.compile and AMP.
Written in the spirit of PyTorch's OptimizerInfo tests; docs/torch_optim.md lists the points and their status."""

from __future__ import annotations

import copy
import io
import math
import os
import pickle

import pytest
import torch
from optimizer_table import ROWS, Row
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import optzoo
from optzoo.optimizer.base import Optimizer
from optzoo.torch_optimizer import hyperparameter_names

FULL = os.environ.get("OPTZOO_FULL") == "1"
IDS = [row.name for row in ROWS]
#: rules that move a weight whose gradient is zero (with wd=0): MXNet's rules, not accidents
ZERO_GRAD_MOVES = {
    "sgld": "Langevin noise is added whatever the gradient",
    "ftrl": "the weight is recomputed from the accumulated z and n (proximal step), not updated by the gradient",
    "ftml": "the weight is recomputed from the accumulated z and d (follow the moving leader)",
}


def kwargs_of(row: Row, **extra) -> dict:
    kwargs = {**row.configs[1 if len(row.configs) > 1 else 0], **row.feature_kwargs, **extra}
    if not row.supports_wd:
        kwargs.pop("wd", None)
    return kwargs


def make_params(row: Row, dtype=torch.float32, seed=0, complex_=False) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (6,)]
    if complex_:
        return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.complex64)) for s in shapes]
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]


def set_grads(params, step: int, scale=1.0) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        shape = torch.view_as_real(p).shape if p.is_complex() else p.shape
        g = (torch.randn(shape, generator=gen) * scale).to(p.real.dtype if p.is_complex() else p.dtype)
        g = g.to(p.device)
        p.grad = torch.view_as_complex(g) if p.is_complex() else g


def drive(opt, params, steps: range) -> None:
    for step in steps:
        set_grads(params, step)
        opt.step()


def snapshot(opt) -> list[torch.Tensor]:
    """Every parameter and state tensor of ``opt``, in a fixed order."""
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            out.append(p.detach().clone())
            out.extend(leaf.clone() for leaf in _leaves(opt.state[p].get("state")))
    return out


def _leaves(state):
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [leaf for item in state for leaf in _leaves(item)]


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y), (x, y)


def assert_tree_equal(a, b) -> None:
    """Exact equality of nested state-dict containers (tensors compared by value and dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), (a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (a, b)
        for key in a:
            assert_tree_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_tree_equal(x, y)
    else:
        assert a == b, (a, b)


def plain_only(obj) -> bool:
    """True if ``obj`` holds only what ``torch.load(weights_only=True)`` and hooks expect: tensors, numbers,
    strings, None and dict/list/tuple containers."""
    if isinstance(obj, (torch.Tensor, int, float, str, bool)) or obj is None:
        return True
    if isinstance(obj, dict):
        return all(plain_only(k) and plain_only(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return all(plain_only(v) for v in obj)
    return False


# ---------------------------------------------------------------------------------------------- copies
def _copy_by(how: str, opt):
    if how == "deepcopy":
        return copy.deepcopy(opt)
    if how == "pickle":
        return pickle.loads(pickle.dumps(opt))
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch_save"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_copies_continue_bit_identically(row, how):
    params = make_params(row)
    opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row))
    drive(opt, params, range(3))
    twin = _copy_by(how, opt)
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    assert twin.optimizer is not opt.optimizer and twin_params[0] is not params[0]
    assert {k for k in vars(opt) if not k.startswith("_")} == {k for k in vars(twin) if not k.startswith("_")}
    drive(opt, params, range(3, 6))
    drive(twin, twin_params, range(3, 6))
    assert_same(snapshot(opt), snapshot(twin))


# ---------------------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_state_dict_and_load_hooks(row):
    params = make_params(row)
    opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row))
    drive(opt, params, range(2))
    seen = []
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("note", 1))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(plain_only(sd["state"])))
    state_dict = opt.state_dict()
    assert state_dict["state"]["note"] == 1 and seen == [True]
    assert plain_only(state_dict["state"]) and plain_only(state_dict["param_groups"])

    other = optzoo.TorchOptimizer(make_params(row), row.name, **kwargs_of(row))
    calls = []

    def pre(o, sd):
        calls.append("pre")
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.00123
        return sd

    other.register_load_state_dict_pre_hook(pre)
    other.register_load_state_dict_post_hook(lambda o: calls.append(("post", o.param_groups[0]["lr"])))
    other.load_state_dict(state_dict)
    assert calls == ["pre", ("post", 0.00123)]
    assert other.state["note"] == 1  # a non-parameter key survives the round trip
    assert opt.param_groups[0]["lr"] != 0.00123


def test_step_hooks_local_and_global():
    row = ROWS[0]
    params = make_params(row)
    opt = optzoo.TorchOptimizer(params, row.name)
    calls = []
    handles = [opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
               opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
               register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
    try:
        drive(opt, params, range(1))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["global pre", "pre", "post", "global post"]


# ---------------------------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("named", [False, True])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_state_dict_deterministic_and_weights_only(row, named):
    params, params_c = make_params(row), make_params(row)
    opt = optzoo.TorchOptimizer(list(zip(["w", "b"], params)) if named else params, row.name, **kwargs_of(row))
    drive(opt, params, range(3))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    with torch.no_grad():
        for p, q in zip(params_c, params):
            p.copy_(q)
    twin = optzoo.TorchOptimizer(params_c, row.name, **kwargs_of(row))
    twin.load_state_dict(loaded)
    if named:
        assert twin.state_dict()["param_groups"][0]["param_names"] == ["w", "b"]
    drive(opt, params, range(3, 6))
    drive(twin, params_c, range(3, 6))
    assert_same(snapshot(opt), snapshot(twin))
    first, second = opt.state_dict(), twin.state_dict()
    for sd in (first, second):
        for group in sd["param_groups"]:
            group.pop("param_names", None)
    assert_tree_equal(first, second)
    twin.param_groups.extend(twin.param_groups)  # a repeated group is saved as the original is (torch's #36831)
    repeated = twin.state_dict()["param_groups"][-1]
    repeated.pop("param_names", None)
    assert_tree_equal(first["param_groups"][-1], repeated)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_older_state_dicts_load(row):
    """A state dict with only lr/wd in its groups and no 'optzoo' entry (an older optzoo) loads and continues as
    the saved run, apart from optimizer-wide extra state the old format lacked."""
    params, params_c = make_params(row), make_params(row)
    opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row))
    drive(opt, params, range(3))
    old = copy.deepcopy(opt.state_dict())
    hyper = hyperparameter_names(opt.optimizer)
    for group in old["param_groups"]:
        for key in (*hyper, "betas"):
            group.pop(key, None)
    for entry in old["state"].values():
        entry["step"] = torch.tensor(float(entry["step"]))  # torch's tensor steps
    twin = optzoo.TorchOptimizer(params_c, row.name, **kwargs_of(row))
    twin.load_state_dict(old)
    assert twin.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert all(twin.param_groups[0][k] == opt.param_groups[0][k] for k in hyper)
    assert [twin.state[p]["step"] for p in params_c] == [3, 3]
    with torch.no_grad():
        for p, q in zip(params_c, params):
            p.copy_(q)
    drive(opt, params, range(3, 5))
    drive(twin, params_c, range(3, 5))
    assert_same(snapshot(opt), snapshot(twin))


def test_a_bad_state_dict_changes_nothing():
    params = make_params(ROWS[0])
    opt = optzoo.TorchOptimizer(params, "adam")
    drive(opt, params, range(2))
    before, state_dict = snapshot(opt), copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(state_dict)
    bad["param_groups"][0]["beta1"] = 1.5
    with pytest.raises(ValueError, match="param group 0: beta1"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(state_dict)
    bad["state"][1]["state"] = {"kind": "Exploit", "items": []}
    with pytest.raises(optzoo.serialization.CheckpointError, match="unknown state type"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="different number of param groups"):
        opt.load_state_dict({**state_dict, "param_groups": []})
    assert_same(before, snapshot(opt))
    assert [opt.state[p]["step"] for p in params] == [2, 2] and opt.param_groups[0]["beta1"] == 0.9
    assert opt.optimizer._index_update_count == {0: 2, 1: 2}


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_parameters_absent_from_the_loaded_state_start_fresh(row):
    params = make_params(row)
    opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row))
    drive(opt, params, range(4))
    state_dict = copy.deepcopy(opt.state_dict())
    del state_dict["state"][1]
    opt.load_state_dict(state_dict)
    assert params[1] not in opt.state
    fresh_param = torch.nn.Parameter(params[1].detach().clone())
    fresh = optzoo.TorchOptimizer([params[0].detach().clone().requires_grad_(), fresh_param], row.name,
                                  **kwargs_of(row))
    fresh.load_state_dict({**fresh.state_dict(), "optzoo": state_dict["optzoo"]})  # same optimizer-wide state
    set_grads(params, 4)
    fresh_param.grad = params[1].grad.clone()
    opt.step()
    fresh.step()
    assert opt.state[params[1]]["step"] == 1
    if row.name != "sgld":  # SGLD: the noise stream is optimizer-wide and has advanced differently
        assert torch.equal(params[1], fresh_param)


# ---------------------------------------------------------------------------------------------- hyperparameters
def _other_value(klass, name, value):
    """A valid value of hyperparameter ``name`` that differs from ``value`` (None if there is none)."""
    if isinstance(value, bool):
        candidates = [not value]
    elif isinstance(value, int):
        candidates = [value + 1, max(value - 1, 0)]
    elif isinstance(value, float):
        candidates = [value * 0.5, value * 1.5, 0.5, 0.3, 2.0] if value else [0.5, 0.1]
    elif value is None:
        candidates = [0.7]
    else:
        return None
    for candidate in candidates:
        if candidate == value:
            continue
        try:
            klass(**{name: candidate})
        except (TypeError, ValueError):
            continue
        return candidate
    return None


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_every_group_hyperparameter_is_live(row):
    """Setting a group's hyperparameter before a step is the same as constructing with it."""
    base = kwargs_of(row)
    probe = optzoo.TorchOptimizer(make_params(row), row.name, **base)
    names = hyperparameter_names(probe.optimizer)
    assert names and all(name in probe.param_groups[0] for name in names)
    klass = type(probe.optimizer)
    changed_any = False
    for name in names:
        new = _other_value(klass, name, probe.param_groups[0][name])
        if new is None:
            continue
        params, params_c, params_u = make_params(row), make_params(row), make_params(row)
        edited = optzoo.TorchOptimizer(params, row.name, **base)
        edited.param_groups[0][name] = new
        built = optzoo.TorchOptimizer(params_c, row.name, **{**base, name: new})
        unchanged = optzoo.TorchOptimizer(params_u, row.name, **base)
        for opt, ps in ((edited, params), (built, params_c), (unchanged, params_u)):
            drive(opt, ps, range(3))
        assert_same(snapshot(edited), snapshot(built))
        changed_any |= not all(torch.equal(a, b) for a, b in zip(params, params_u))
        assert getattr(edited.optimizer, name) == probe.param_groups[0][name]  # restored after the step
    assert changed_any


@pytest.mark.parametrize("only_lr", [False, True], ids=["all", "lr"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_add_param_group_with_other_hyperparameters(row, only_lr):
    """A group added with other hyperparameters (or only another lr, which some rules read as the initial rate:
    Lion's decoupled decay, MARS's 1-D rate) steps as a separate optimizer built with them would."""
    if row.name == "sgld":
        pytest.skip("SGLD's noise stream is optimizer-wide: two optimizers draw different noise")
    params = make_params(row)
    extra = {"schedule_scope": "parameter"} if row.name == "nadam" else {}  # one momentum product per tensor
    opt = optzoo.TorchOptimizer(params[:1], row.name, **kwargs_of(row, **extra))
    hyper = {name: value for name in hyperparameter_names(opt.optimizer)
             if (value := _other_value(type(opt.optimizer), name, opt.param_groups[0][name])) is not None}
    hyper.pop("lazy_update", None)
    if only_lr:
        hyper = {}
    if row.joint_step:
        _joint_step_groups(row, opt, params, hyper, kwargs_of(row, **extra))
        return
    opt.add_param_group({"params": [params[1]], "lr": 0.02, **hyper})
    alone = [make_params(row)[0], make_params(row)[1]]
    first = optzoo.TorchOptimizer(alone[:1], row.name, **kwargs_of(row, **extra))
    second = optzoo.TorchOptimizer(alone[1:], row.name, **{**kwargs_of(row, **extra), **hyper, "learning_rate": 0.02})
    for step in range(3):
        set_grads(params, step)
        set_grads(alone, step)
        for o in (opt, first, second):
            o.step()
    assert torch.equal(params[0], alone[0]) and torch.equal(params[1], alone[1])


def _joint_step_groups(row, opt, params, hyper, kwargs):
    """A rule whose step couples every parameter (``row.joint_step``) is not the sum of separate optimizers: a
    group with another lr joins the one step as a per-parameter ``lr_mult`` does, other hyperparameters are a
    ``ValueError`` naming the group, before anything moves."""
    lr = opt.param_groups[0]["lr"]
    if hyper:
        opt.add_param_group({"params": [params[1]], **hyper})
        set_grads(params, 0)
        before = snapshot(opt)
        with pytest.raises(ValueError, match="param group 1: .* must be the same in every param group"):
            opt.step()
        assert_same(before, snapshot(opt))
        return
    opt.add_param_group({"params": [params[1]], "lr": lr * 0.5})
    alone = make_params(row)
    alone[1].lr_mult = 0.5
    together = optzoo.TorchOptimizer(alone, row.name, **kwargs)
    drive(opt, params, range(3))
    drive(together, alone, range(3))
    assert_same(snapshot(opt), snapshot(together))


def test_group_hyperparameter_errors_name_the_argument():
    params = make_params(ROWS[0])
    opt = optzoo.TorchOptimizer(params[:1], "sgd", momentum=0.9)
    with pytest.raises(ValueError, match="param group 1: momentum"):
        opt.add_param_group({"params": [params[1]], "momentum": 1.5})
    opt.param_groups[0]["momentum"] = -0.5
    set_grads(params[:1], 0)
    with pytest.raises(ValueError, match="param group 0: momentum"):
        opt.step()
    opt.param_groups[0]["momentum"] = 0.5
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="param group 0 lr"):
        opt.step()
    with pytest.raises(ValueError, match="param group 0: GroupAdaGrad does not support weight decay"):
        optzoo.TorchOptimizer([{"params": [params[0]], "weight_decay": 0.1}], "groupadagrad")
    with pytest.raises(ValueError, match="has no beta1/beta2"):
        optzoo.TorchOptimizer(params[1:], "sgd").add_param_group({"params": [params[0]], "betas": (0.9, 0.99)})
    with pytest.raises(ValueError, match="'learning_rate' or torch's 'lr'"):
        optzoo.TorchOptimizer(params, "adam", lr=0.1, learning_rate=0.1)
    with pytest.raises(ValueError, match="0-d"):
        optzoo.TorchOptimizer(params, "adam", lr=torch.tensor([0.1]))
    with pytest.raises(ValueError, match="lr"):
        optzoo.TorchOptimizer([{"params": params, "lr": torch.tensor(-1.0)}], "adam")
    with pytest.raises(TypeError, match="foreach"):
        optzoo.TorchOptimizer(params, "adam", foreach="yes")


@pytest.mark.parametrize("row", [r for r in ROWS if {"momentum", "beta1"} & set(
    hyperparameter_names(optzoo.optimizer.create(r.name)))], ids=lambda r: r.name)
def test_one_cycle_lr_cycles_momentum_or_betas(row):
    params = make_params(row)
    opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10, cycle_momentum=True)
    key = "beta1" if "betas" in opt.param_groups[0] else "momentum"
    seen = []
    for step in range(5):
        set_grads(params, step)
        opt.step()  # uses, and syncs to beta1, the betas the scheduler wrote
        seen.append(opt.param_groups[0][key])
        if key == "beta1":
            assert opt.param_groups[0]["betas"][0] == opt.param_groups[0]["beta1"]
        sched.step()
    assert len(set(seen)) == 5 and all(0.85 <= m <= 0.95 for m in seen)


def test_a_hyperparameter_set_on_the_wrapped_optimizer_still_applies():
    """Before param groups carried them, ``opt.optimizer.momentum = ...`` was the way to change one."""
    runs = []
    for edit_wrapped in (True, False):
        params = make_params(ROWS[0])
        opt = optzoo.TorchOptimizer(params, "adam", beta1=0.9)
        drive(opt, params, range(2))
        if edit_wrapped:
            opt.optimizer.beta1 = 0.5
        else:
            opt.param_groups[0]["betas"] = (0.5, opt.param_groups[0]["beta2"])
        drive(opt, params, range(2, 4))
        assert opt.param_groups[0]["beta1"] == 0.5 and opt.param_groups[0]["betas"][0] == 0.5
        runs.append(snapshot(opt))
    assert_same(*runs)


def test_betas_and_beta1_stay_in_sync():
    params = make_params(ROWS[0])
    opt = optzoo.TorchOptimizer(params, "adam", betas=(0.8, 0.95))
    group = opt.param_groups[0]
    assert (group["beta1"], group["beta2"], group["betas"]) == (0.8, 0.95, (0.8, 0.95))
    group["betas"] = (0.5, 0.9)
    drive(opt, params, range(1))
    assert (group["beta1"], group["beta2"]) == (0.5, 0.9)
    group["beta2"] = 0.7
    drive(opt, params, range(1, 2))
    assert group["betas"] == (0.5, 0.7)


# ---------------------------------------------------------------------------------------------- dtypes, grads
LOW_TOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_every_dtype_on_every_path(row, dtype):
    results = {}
    for impl in ("reference", "foreach", "auto"):
        params = make_params(row, dtype)
        kwargs = kwargs_of(row, impl=impl, multi_precision=dtype in LOW_TOL)
        opt = optzoo.TorchOptimizer(params, row.name, **kwargs)
        drive(opt, params, range(4))
        assert all(p.dtype == dtype and torch.isfinite(p).all() for p in params)
        results[impl] = params
    start = make_params(row, dtype)
    assert any(not torch.equal(p, q) for p, q in zip(results["reference"], start))
    tol = LOW_TOL.get(dtype, row.impl_tol.rtol)
    for impl in ("foreach", "auto"):
        for p, q in zip(results[impl], results["reference"]):
            torch.testing.assert_close(p, q, rtol=tol, atol=max(tol, row.impl_tol.atol))


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_grads_untouched_closure_and_none_or_zero_grads(row):
    params = make_params(row)
    opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row, wd=0.0, **row.no_decay_kwargs))
    before = [p.detach().clone() for p in params]
    params[0].grad = None
    params[1].grad = torch.zeros_like(params[1])
    opt.step()  # a first step with a None and a zero gradient
    assert torch.equal(params[0], before[0]) and params[0] not in opt.state
    if row.name not in ZERO_GRAD_MOVES:
        assert torch.equal(params[1], before[1])
    set_grads(params, 0)
    grads = [p.grad.clone() for p in params]
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        return torch.tensor(3.0)

    assert opt.step(closure).item() == 3.0 and calls == [True]
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    if row.first_step_still:  # the closure step was params[0]'s first update: declared to move nothing
        assert torch.equal(params[0], before[0]), row.first_step_still
        set_grads(params, 1)
        opt.step()
    assert not any(torch.equal(p, b) for p, b in zip(params, before))


# ---------------------------------------------------------------------------------------------- tensor lr, complex
@pytest.mark.parametrize("impl", ["reference", "foreach", "auto"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_tensor_lr_equals_float_lr(row, impl):
    runs = []
    for lr in (2.0**-6, torch.tensor(2.0**-6)):  # exact in float32, as are its halvings
        params = make_params(row)
        opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row, impl=impl, lr=lr))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for step in range(4):
            drive(opt, params, range(step, step + 1))
            sched.step()
        runs.append(snapshot(opt))
    assert_same(*runs)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_complex_parameters_are_their_real_views(row):
    complex_params = make_params(row, complex_=True)
    real_params = [torch.nn.Parameter(torch.view_as_real(p.detach()).clone()) for p in complex_params]
    complex_opt = optzoo.TorchOptimizer(complex_params, row.name, **kwargs_of(row))
    real_opt = optzoo.TorchOptimizer(real_params, row.name, **kwargs_of(row))
    for step in range(3):
        set_grads(complex_params, step)
        for p, q in zip(real_params, complex_params):
            p.grad = torch.view_as_real(q.grad).clone()
        complex_opt.step()
        real_opt.step()
    for p, q in zip(real_params, complex_params):
        assert torch.equal(p, torch.view_as_real(q))


# ---------------------------------------------------------------------------------------------- torch.compile
#: sampled in CI (about 1-2 s a row once Dynamo is warm); OPTZOO_FULL=1 compiles every row
COMPILE_SAMPLE = ("adam", "sgd", "lamb", "ftrl", "muon", "prodigy", "schedulefree_adamw")


@pytest.mark.parametrize("row", [r for r in ROWS if FULL or r.name in COMPILE_SAMPLE], ids=lambda r: r.name)
def test_compiled_step_is_one_graph_equal_to_eager_without_recompiling(row):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    runs = []
    for compiled in (False, True):
        params = make_params(row)
        opt = optzoo.TorchOptimizer(params, row.name, **kwargs_of(row, lr=torch.tensor(0.01)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch))

        # compiled as torch's own tests compile Adam: the step function without its wrappers, fullgraph
        raw_step = opt.step.__wrapped__.__wrapped__
        opt._opt_called = True  # as torch's compile_opt: the scheduler's check does not see the unwrapped step

        def step(opt=opt, raw_step=raw_step):
            raw_step(opt)

        run = torch.compile(step, fullgraph=True) if compiled else opt.step
        counters.clear()
        for i in range(5):
            set_grads(params, i)
            run()
            sched.step()
        runs.append(snapshot(opt))
    assert counters["stats"]["unique_graphs"] == 1  # the changing tensor lr recompiles nothing
    assert_same(*runs)
    explained = torch._dynamo.explain(opt.step)()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["adam", "lamb", "sgd"])
def test_cuda_compiled_step_with_a_cuda_tensor_lr(name):
    """On CUDA the operator runs the foreach path; a 0-d CUDA tensor lr equals the float lr, compiled or not."""
    import torch._dynamo

    torch._dynamo.reset()
    runs = []
    for lr, compiled in ((2.0**-6, False), (torch.tensor(2.0**-6, device="cuda"), False),
                         (torch.tensor(2.0**-6, device="cuda"), True)):
        params = [p.detach().cuda().requires_grad_() for p in make_params(ROWS[0])]
        opt = optzoo.TorchOptimizer(params, name, lr=lr)
        run = torch.compile(opt.step) if compiled else opt.step
        for step in range(3):
            set_grads(params, step)
            run()
        runs.append([p.detach().cpu() for p in params])
    assert_same(runs[0], runs[1])
    assert_same(runs[1], runs[2])


# ---------------------------------------------------------------------------------------------- AMP
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_grad_scaler_steps_unscaled_and_skips_inf(row, autocast_dtype):
    """``scaler.step(opt)`` under CPU autocast equals plain steps on the unscaled gradients (powers of two scale
    exactly), and a step with an inf gradient is skipped: weights, states and update counts untouched."""
    # the scaler's scale at each step (halved after the inf step). The plain run backpropagates the same scaled
    # loss and divides by hand: a float16 backward without a scale rounds gradients that fall below float16's
    # normal range differently (what GradScaler exists for), which would be compared instead of the optimizer
    scales = [2.0**10, 2.0**10, 2.0**9, 2.0**9]
    runs = []
    for scaled in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = optzoo.TorchOptimizer(model.parameters(), row.name, **kwargs_of(row))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
        for step in range(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=autocast_dtype):
                loss = model(x).float().pow(2).mean()
            if not scaled:
                (loss * scales[step]).backward()
                for p in model.parameters():
                    p.grad.div_(scales[step])
                if step != 1:
                    opt.step()
                continue
            assert scaler.get_scale() == scales[step]
            scaler.scale(loss).backward()
            if step == 1:
                model[0].weight.grad[0, 0] = math.inf
                before, scale = snapshot(opt), scaler.get_scale()
            if step == 2:
                scaler.unscale_(opt)  # explicit, as before gradient clipping
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)
            scaler.step(opt)
            scaler.update()
            if step == 1:
                assert_same(before, snapshot(opt))
                assert scaler.get_scale() == scale * 0.5
        assert {opt.state[p]["step"] for p in model.parameters()} == {3}
        runs.append([p.detach() for p in model.parameters()])
    for p, q in zip(*runs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_every_optzoo_optimizer_has_a_row():
    """Every optimizer optzoo registers gets every check above (tests may register their own classes)."""
    ours = {name for name, klass in Optimizer.opt_registry.items() if klass.__module__.startswith("optzoo.")}
    assert ours <= {row.name for row in ROWS}
