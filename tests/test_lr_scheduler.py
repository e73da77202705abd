"""optzoo.lr_scheduler: parity with MXNet's schedulers, purity, validation, config round trip, torch adapter."""

from __future__ import annotations

import doctest
import io
import json
import math
import random

import numpy as np
import pytest
import torch
from oracle import run_mxnet

from optzoo import lr_scheduler
from optzoo.lr_scheduler import (
    CosineScheduler,
    FactorScheduler,
    LRScheduler,
    MultiFactorScheduler,
    PolyScheduler,
    TorchScheduler,
    create,
    register,
)

N = 300  # counts 0..N, increasing, are compared with MXNet

WARM = {"warmup_steps": 40, "warmup_begin_lr": 0.001}

# id -> (class name, kwargs); the class name is the same in optzoo and mxnet.lr_scheduler.
CASES: dict[str, tuple[str, dict]] = {
    "factor": ("FactorScheduler", {"step": 7, "factor": 0.9, "base_lr": 0.1}),
    "factor-defaults": ("FactorScheduler", {"step": 10}),
    "factor-clamped": ("FactorScheduler", {"step": 3, "factor": 0.5, "stop_factor_lr": 1e-4, "base_lr": 0.1}),
    "factor-base-below-stop": ("FactorScheduler", {"step": 5, "stop_factor_lr": 1e-3, "base_lr": 1e-4}),
    "factor-every-step": ("FactorScheduler", {"step": 1, "factor": 0.99, "base_lr": 1.0}),
    "factor-warmup-linear": ("FactorScheduler", {"step": 15, "factor": 0.8, "base_lr": 0.2, **WARM}),
    "factor-warmup-linear-from-0": ("FactorScheduler", {"step": 15, "factor": 0.8, "warmup_steps": 33}),
    "factor-warmup-constant": ("FactorScheduler", {"step": 15, "factor": 0.8, "base_lr": 0.2, **WARM,
                                                   "warmup_mode": "constant"}),
    "factor-warmup-1": ("FactorScheduler", {"step": 4, "factor": 0.7, "base_lr": 0.3, "warmup_steps": 1}),
    "multifactor": ("MultiFactorScheduler", {"step": [30, 100, 250], "factor": 0.3, "base_lr": 0.5}),
    "multifactor-single": ("MultiFactorScheduler", {"step": [1], "factor": 0.5}),
    "multifactor-warmup-linear": ("MultiFactorScheduler", {"step": [20, 60, 150], "factor": 0.1,
                                                           "base_lr": 0.4, **WARM}),
    "multifactor-warmup-constant": ("MultiFactorScheduler", {"step": [20, 60, 150], "factor": 0.1, "base_lr": 0.4,
                                                             **WARM, "warmup_mode": "constant"}),
    "poly": ("PolyScheduler", {"max_update": 250, "base_lr": 0.2}),
    "poly-sqrt-final": ("PolyScheduler", {"max_update": 200, "base_lr": 0.3, "pwr": 0.5, "final_lr": 0.01}),
    "poly-max-update-1": ("PolyScheduler", {"max_update": 1, "base_lr": 0.3, "pwr": 3}),
    "poly-warmup-linear": ("PolyScheduler", {"max_update": 250, "base_lr": 0.2, "pwr": 1.5, "final_lr": 0.002,
                                             **WARM}),
    "poly-warmup-constant": ("PolyScheduler", {"max_update": 250, "base_lr": 0.2, **WARM,
                                               "warmup_mode": "constant"}),
    "cosine": ("CosineScheduler", {"max_update": 250, "base_lr": 0.2}),
    "cosine-final": ("CosineScheduler", {"max_update": 120, "base_lr": 0.05, "final_lr": 0.02}),
    "cosine-warmup-linear": ("CosineScheduler", {"max_update": 250, "base_lr": 0.2, "final_lr": 0.001, **WARM}),
    "cosine-warmup-constant": ("CosineScheduler", {"max_update": 250, "base_lr": 0.2, **WARM,
                                                   "warmup_mode": "constant"}),
}

MXNET_SNIPPET = """
for case_id, (cls_name, kwargs) in params["cases"].items():
    sched = getattr(mx.lr_scheduler, cls_name)(**kwargs)
    results[case_id] = [sched(n) for n in range(params["n"] + 1)]
# Documented deviations (see test_documented_deviations_from_mxnet).
poly = mx.lr_scheduler.PolyScheduler(10, base_lr=0.5, final_lr=0.1)
results["poly-first-call-past-max"] = poly(15)
poly = mx.lr_scheduler.PolyScheduler(10, base_lr=0.5)
poly.base_lr = 1.0
results["poly-after-base-lr-reassigned"] = poly(5)
"""


def build(case_id: str) -> LRScheduler:
    cls_name, kwargs = CASES[case_id]
    return getattr(lr_scheduler, cls_name)(**kwargs)


@pytest.fixture(scope="module")
def mxnet_values() -> dict:
    _, results = run_mxnet(MXNET_SNIPPET, params={"cases": CASES, "n": N})
    return results


@pytest.mark.oracle
@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_mxnet_for_increasing_counts(case_id, mxnet_values):
    sched = build(case_id)
    ours = [sched(n) for n in range(N + 1)]
    np.testing.assert_allclose(ours, mxnet_values[case_id], rtol=1e-12, atol=0)


@pytest.mark.oracle
def test_documented_deviations_from_mxnet(mxnet_values):
    # MXNet returns its stale base_lr when max_update was never asked for; we return final_lr.
    assert mxnet_values["poly-first-call-past-max"] == 0.5
    assert PolyScheduler(10, base_lr=0.5, final_lr=0.1)(15) == 0.1
    # MXNet's Poly ignores a reassigned base_lr (kept base_lr_orig); ours follows it.
    assert mxnet_values["poly-after-base-lr-reassigned"] == pytest.approx(0.5 * 0.25, rel=1e-12)
    poly = PolyScheduler(10, base_lr=0.5)
    poly.base_lr = 1.0
    assert poly(5) == pytest.approx(0.25, rel=1e-12)


@pytest.mark.parametrize("case_id", list(CASES))
def test_pure_function_of_the_count(case_id):
    sched = build(case_id)
    before = dict(vars(sched))
    counts = [*range(N + 1), 1000, 5000, 10**6, 10**12]
    increasing = {n: sched(n) for n in counts}
    shuffled = counts[:]
    random.Random(case_id).shuffle(shuffled)
    assert {n: sched(n) for n in shuffled} == increasing
    assert (sched(5000), sched(10), sched(5000)) == (increasing[5000], increasing[10], increasing[5000])
    assert vars(sched) == before
    assert all(math.isfinite(v) and v >= 0 for v in increasing.values())


@pytest.mark.parametrize("case_id", list(CASES))
def test_reassigned_base_lr_moves_the_whole_schedule(case_id):
    cls_name, kwargs = CASES[case_id]
    sched = build(case_id)
    new_base = 2 * sched.base_lr
    sched.base_lr = new_base
    fresh = getattr(lr_scheduler, cls_name)(**{**kwargs, "base_lr": new_base})
    assert [sched(n) for n in range(N + 1)] == [fresh(n) for n in range(N + 1)]
    if sched.warmup_steps > 1 and sched.warmup_mode == "linear":
        assert sched(sched.warmup_steps - 1) > build(case_id)(sched.warmup_steps - 1)


@pytest.mark.parametrize(("sched", "expected"), [
    (FactorScheduler(step=2, factor=0.5, base_lr=1.0), [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]),
    (FactorScheduler(step=2, factor=0.5, base_lr=1.0, warmup_steps=3, warmup_begin_lr=0.4),
     [0.4, 0.6, 0.8, 0.5, 0.5, 0.25]),
    (FactorScheduler(step=1, factor=0.5, stop_factor_lr=0.2, base_lr=1.0), [1.0, 1.0, 0.5, 0.25, 0.2, 0.2]),
    (MultiFactorScheduler(step=[2, 4], factor=0.1, base_lr=1.0), [1.0, 1.0, 1.0, 0.1, 0.1, 0.1 * 0.1]),
    (MultiFactorScheduler(step=[2], base_lr=1.0, warmup_steps=2, warmup_mode="constant"),
     [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
    (PolyScheduler(max_update=4, base_lr=1.0, pwr=1), [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),
    (PolyScheduler(max_update=5, base_lr=1.0, pwr=1, final_lr=0.5, warmup_steps=1), [0.0, 1.0, 0.875, 0.75,
                                                                                     0.625, 0.5]),
    (CosineScheduler(max_update=2, base_lr=1.0, final_lr=0.5), [1.0, 0.75, 0.5, 0.5, 0.5, 0.5]),
], ids=repr)
def test_hand_computed_values(sched, expected):
    assert [sched(n) for n in range(6)] == pytest.approx(expected, rel=1e-15, abs=0)


INVALID = [
    # (class, kwargs, exception, message regex)
    (FactorScheduler, {"step": 1, "base_lr": float("nan")}, ValueError, r"base_lr must be >= 0.0 \(finite\), got nan"),
    (FactorScheduler, {"step": 1, "base_lr": -0.1}, ValueError, r"base_lr must be >= 0.0 .*got -0.1"),
    (FactorScheduler, {"step": 1, "base_lr": float("inf")}, ValueError, r"base_lr .*got inf"),
    (FactorScheduler, {"step": 1, "base_lr": "0.1"}, TypeError, r"base_lr must be a real number, got '0.1'"),
    (FactorScheduler, {"step": 1, "base_lr": True}, TypeError, r"base_lr must be a real number, got True"),
    (FactorScheduler, {"step": 1, "warmup_steps": -1}, ValueError, r"warmup_steps must be >= 0, got -1"),
    (FactorScheduler, {"step": 1, "warmup_steps": 2.0}, TypeError, r"warmup_steps must be an integer, got 2.0"),
    (FactorScheduler, {"step": 1, "warmup_steps": True}, TypeError, r"warmup_steps must be an integer, got True"),
    (FactorScheduler, {"step": 1, "warmup_begin_lr": 0.02}, ValueError,
     r"warmup_begin_lr must be in \[0.0, 0.01\] \(finite\), got 0.02"),
    (FactorScheduler, {"step": 1, "warmup_begin_lr": -1e-3}, ValueError, r"warmup_begin_lr .*got -0.001"),
    (FactorScheduler, {"step": 1, "warmup_begin_lr": float("nan")}, ValueError, r"warmup_begin_lr .*got nan"),
    (FactorScheduler, {"step": 1, "warmup_mode": "cosine"}, ValueError,
     r"warmup_mode must be one of 'linear', 'constant'; got 'cosine'"),
    (FactorScheduler, {"step": 1, "warmup_mode": None}, TypeError, r"warmup_mode must be a string, got None"),
    (FactorScheduler, {"step": 0}, ValueError, r"step must be >= 1, got 0"),
    (FactorScheduler, {"step": 2.5}, TypeError, r"step must be an integer, got 2.5"),
    (FactorScheduler, {"step": 1, "factor": 1.5}, ValueError, r"factor must be in \(0.0, 1.0\] \(finite\), got 1.5"),
    (FactorScheduler, {"step": 1, "factor": 0}, ValueError, r"factor must be in \(0.0, 1.0\] .*got 0.0"),
    (FactorScheduler, {"step": 1, "factor": -0.5}, ValueError, r"factor .*got -0.5"),
    (FactorScheduler, {"step": 1, "factor": float("nan")}, ValueError, r"factor .*got nan"),
    (FactorScheduler, {"step": 1, "factor": None}, TypeError, r"factor must be a real number, got None"),
    (FactorScheduler, {"step": 1, "stop_factor_lr": -1e-8}, ValueError, r"stop_factor_lr must be >= 0.0 .*got -1e-08"),
    (FactorScheduler, {"step": 1, "stop_factor_lr": float("nan")}, ValueError, r"stop_factor_lr .*got nan"),
    (MultiFactorScheduler, {"step": []}, ValueError, r"step must contain at least one boundary, got \[\]"),
    (MultiFactorScheduler, {"step": [3, 3]}, ValueError, r"step must be strictly increasing, got \[3, 3\]"),
    (MultiFactorScheduler, {"step": [5, 3]}, ValueError, r"step must be strictly increasing, got \[5, 3\]"),
    (MultiFactorScheduler, {"step": [0, 3]}, ValueError, r"step\[0\] must be >= 1, got 0"),
    (MultiFactorScheduler, {"step": [2, 1.5]}, TypeError, r"step\[1\] must be an integer, got 1.5"),
    (MultiFactorScheduler, {"step": 5}, TypeError, r"step must be a list of integers, got 5"),
    (MultiFactorScheduler, {"step": [5], "factor": 2}, ValueError, r"factor must be in \(0.0, 1.0\] .*got 2.0"),
    (MultiFactorScheduler, {"step": [5], "base_lr": float("nan")}, ValueError, r"base_lr .*got nan"),
    (PolyScheduler, {"max_update": 0}, ValueError, r"max_update must be >= 1, got 0"),
    (PolyScheduler, {"max_update": 10.0}, TypeError, r"max_update must be an integer, got 10.0"),
    (PolyScheduler, {"max_update": 10, "pwr": 0}, ValueError, r"pwr must be > 0.0 \(finite\), got 0.0"),
    (PolyScheduler, {"max_update": 10, "pwr": -1}, ValueError, r"pwr .*got -1.0"),
    (PolyScheduler, {"max_update": 10, "pwr": float("nan")}, ValueError, r"pwr .*got nan"),
    (PolyScheduler, {"max_update": 10, "final_lr": -0.1}, ValueError, r"final_lr must be >= 0.0 .*got -0.1"),
    (PolyScheduler, {"max_update": 10, "warmup_steps": 10}, ValueError,
     r"warmup_steps must be < max_update=10, got 10"),
    (PolyScheduler, {"max_update": 10, "warmup_steps": 11}, ValueError, r"warmup_steps must be < max_update=10"),
    (CosineScheduler, {"max_update": -5}, ValueError, r"max_update must be >= 1, got -5"),
    (CosineScheduler, {"max_update": True}, TypeError, r"max_update must be an integer, got True"),
    (CosineScheduler, {"max_update": 10, "final_lr": float("nan")}, ValueError, r"final_lr .*got nan"),
    (CosineScheduler, {"max_update": 10, "final_lr": "0"}, TypeError, r"final_lr must be a real number"),
    (CosineScheduler, {"max_update": 5, "warmup_steps": 5}, ValueError, r"warmup_steps must be < max_update=5, got 5"),
    (CosineScheduler, {"max_update": 5, "warmup_mode": "Linear"}, ValueError, r"warmup_mode .*got 'Linear'"),
]


@pytest.mark.parametrize(("cls", "kwargs", "exc", "match"), INVALID,
                         ids=[f"{c.__name__}-{k}" for c, k, _, _ in INVALID])
def test_invalid_arguments(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(("count", "exc", "match"), [
    (-1, ValueError, r"num_update must be >= 0, got -1"),
    (1.5, TypeError, r"num_update must be an integer, got 1.5"),
    (3.0, TypeError, r"num_update must be an integer, got 3.0"),
    (True, TypeError, r"num_update must be an integer, got True"),
    ("3", TypeError, r"num_update must be an integer, got '3'"),
    (None, TypeError, r"num_update must be an integer, got None"),
])
@pytest.mark.parametrize("case_id", ["factor", "multifactor", "poly", "cosine-warmup-linear"])
def test_invalid_count(case_id, count, exc, match):
    with pytest.raises(exc, match=match):
        build(case_id)(count)


def test_numpy_integer_counts_are_accepted():
    sched = build("cosine-warmup-linear")
    assert [sched(np.int64(n)) for n in (0, 39, 40, 100)] == [sched(n) for n in (0, 39, 40, 100)]


def test_warmup_lr_outside_warmup_and_abstract_base():
    sched = build("factor-warmup-linear")
    assert sched.get_warmup_lr(39) == sched(39)
    with pytest.raises(ValueError, match=r"num_update must be < warmup_steps=40 for the warmup, got 40"):
        sched.get_warmup_lr(40)
    with pytest.raises(NotImplementedError, match="_decayed_lr"):
        LRScheduler()(1)


@pytest.mark.parametrize("case_id", list(CASES))
def test_config_round_trip_through_json(case_id):
    sched = build(case_id)
    config = json.loads(json.dumps(sched.get_config()))
    cls_name, kwargs = CASES[case_id]
    assert config["type"] == cls_name.removesuffix("Scheduler").lower()
    assert all(config[k] == v for k, v in kwargs.items())
    arguments = {k: v for k, v in config.items() if k != "type"}
    for rebuilt in (LRScheduler.from_config(config), type(sched).from_config(config),
                    create(config["type"], **arguments)):
        assert type(rebuilt) is type(sched)
        assert repr(rebuilt) == repr(sched)
        assert [rebuilt(n) for n in range(N + 1)] == [sched(n) for n in range(N + 1)]


def test_repr_lists_every_argument_in_order():
    assert repr(FactorScheduler(3, 0.5, base_lr=1)) == (
        "FactorScheduler(step=3, factor=0.5, stop_factor_lr=1e-08, base_lr=1.0, warmup_steps=0, "
        "warmup_begin_lr=0.0, warmup_mode='linear')")
    assert repr(MultiFactorScheduler([2, 5])).startswith("MultiFactorScheduler(step=(2, 5), factor=1.0, base_lr=0.01")
    assert repr(PolyScheduler(9)).startswith("PolyScheduler(max_update=9, base_lr=0.01, pwr=2.0, final_lr=0.0, ")
    assert repr(CosineScheduler(9)).startswith("CosineScheduler(max_update=9, base_lr=0.01, final_lr=0.0, ")


def test_config_and_registry_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown lr scheduler 'exp'; registered: cosine, factor, multifactor, poly"):
        create("exp")
    with pytest.raises(TypeError, match=r"FactorScheduler\(\) got an unexpected keyword argument 'stepp'; "
                                        r"did you mean 'step'\?"):
        create("Factor", stepp=3)
    with pytest.raises(ValueError, match=r"config has no 'type' key"):
        LRScheduler.from_config({"step": 3})
    with pytest.raises(TypeError, match=r"config describes a CosineScheduler, not a PolyScheduler"):
        PolyScheduler.from_config(CosineScheduler(5).get_config())
    with pytest.raises(TypeError, match=r"config must be a mapping"):
        LRScheduler.from_config([("type", "factor")])
    assert FactorScheduler.from_config({"step": 4}).step == 4  # "type" is implied by a concrete class

    class Unregistered(FactorScheduler):
        pass

    with pytest.raises(TypeError, match=r"Unregistered is not registered"):
        Unregistered(3).get_config()

    monkeypatch.setattr(lr_scheduler, "_REGISTRY", dict(lr_scheduler._REGISTRY))
    with pytest.raises(ValueError, match=r"'factor' is already registered \(FactorScheduler\)"):
        register("factor")(Unregistered)
    with pytest.raises(ValueError, match=r"name must be a non-empty lower-case string, got 'Mine'"):
        register("Mine")
    with pytest.raises(TypeError, match=r"only LRScheduler subclasses can be registered"):
        register("mine")(dict)
    register("mine")(Unregistered)
    assert LRScheduler.from_config(Unregistered(3, 0.5).get_config())(7) == 0.01 * 0.25


def test_docstring_examples():
    result = doctest.testmod(lr_scheduler, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10
    assert result.failed == 0


# ---- torch adapter -------------------------------------------------------------------------------------

def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(32, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(4, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 4, generator=gen, dtype=torch.float64))
        model.bias.zero_()
    return model, x, y


def _train(model, x, y, opt, sched, steps: int) -> list[float]:
    used = []
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        used.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return used


@pytest.mark.parametrize("case_id", ["factor-warmup-linear", "multifactor-warmup-constant", "cosine-final"])
def test_torch_scheduler_drives_sgd_with_mxnet_counts(case_id):
    schedule = build(case_id)
    model, x, y = _problem()
    reference = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 7.0}], lr=3.0)
    sched = TorchScheduler(opt, schedule)
    assert sched.last_epoch == 0 and opt.param_groups[0]["lr"] == schedule(1)
    steps = 80
    used = _train(model, x, y, opt, sched, steps)
    # The k-th optimizer.step() ran with schedule(k) in every group; last_epoch counts completed updates.
    assert used == [[schedule(k)] * 2 for k in range(1, steps + 1)]
    assert sched.last_epoch == steps and sched.get_last_lr() == [schedule(steps + 1)] * 2
    # Same trajectory as plain gradient descent with MXNet's lr for update k.
    for k in range(1, steps + 1):
        for p in reference:
            p.requires_grad_(True)
        loss = torch.nn.functional.mse_loss(x @ reference[0].T + reference[1], y)
        grads = torch.autograd.grad(loss, reference)
        reference = [(p - schedule(k) * g).detach() for p, g in zip(reference, grads)]
    for p, r in zip(model.parameters(), reference):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=0)


def test_torch_scheduler_state_dict_resumes_exactly():
    schedule = build("poly-warmup-linear")
    schedule.base_lr = 0.15  # a reassigned base_lr must survive the checkpoint

    def fresh(sched_for_new_run):
        model, x, y = _problem(1)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        return model, x, y, opt, TorchScheduler(opt, sched_for_new_run)

    model, x, y, opt, sched = fresh(schedule)
    full = _train(model, x, y, opt, sched, 60)
    full_params = [p.detach().clone() for p in model.parameters()]

    model, x, y, opt, sched = fresh(schedule)
    first = _train(model, x, y, opt, sched, 25)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    assert checkpoint["sched"]["schedule_config"] == schedule.get_config()
    assert "schedule" not in checkpoint["sched"]

    # Resume with a different schedule object: the checkpoint's schedule wins, as with torch's own schedulers.
    model, x, y, opt, sched = fresh(PolyScheduler(max_update=5))
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    sched.load_state_dict(checkpoint["sched"])
    assert sched.last_epoch == 25 and opt.param_groups[0]["lr"] == schedule(26)
    second = _train(model, x, y, opt, sched, 35)
    assert first + second == full
    for p, q in zip(model.parameters(), full_params):
        assert torch.equal(p.detach(), q)


def test_torch_scheduler_load_sets_lr_without_optimizer_state_and_accepts_callables():
    model, _, _ = _problem()
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    sched = TorchScheduler(opt, build("cosine"))
    for _ in range(10):
        opt.step()
        sched.step()
    state = sched.state_dict()
    other_opt = torch.optim.Adam(model.parameters(), lr=1.0)
    other = TorchScheduler(other_opt, build("factor"))
    other.load_state_dict(state)
    assert type(other.schedule) is CosineScheduler
    assert other_opt.param_groups[0]["lr"] == build("cosine")(11) == other.get_last_lr()[0]

    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = TorchScheduler(opt, lambda n: 1.0 / (n + 1))
    assert opt.param_groups[0]["lr"] == 0.5
    assert sched.state_dict()["schedule_config"] is None
    with pytest.raises(TypeError, match=r"schedule must be callable"):
        TorchScheduler(opt, 0.1)
