"""MXNet 1.x legacy optimizers (ccSGD, LBSGD): what the generic table cannot express.

* ccSGD with float16 weights and ``multi_precision`` against MXNet 1.9.1, whose SGD keeps the state as
  ``(mom, weight32)`` (optzoo's generic layout is ``(weight32, mom)``);
* LBSGD's gradient accumulation and warmup ramps (``batch_scale > 1``) against MXNet 1.9.1, including the
  pending gradient sum and micro-batch counter after a trajectory that stops mid macro-batch;
* LBSGD's learning rate read before counting (MXNet 1.9.1, spec 11.13);
* MXNet 1.9.1's defaults and ``param_idx2name`` weight-decay rule;
* checkpoints taken in the middle of a macro-batch.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from optimizer_table import F16_MP, F32
from oracle import DRIVER, run_mxnet, run_optimizer_cases
from trajectory import flatten_state, make_case, run_case

import optzoo
from optzoo import optimizer as opt
from optzoo.optimizer.legacy import LargeBatchSchedule

SCHED = {
    "type": "FactorScheduler",
    "kwargs": {"step": 15, "factor": 0.7, "base_lr": 0.02, "warmup_steps": 10, "warmup_begin_lr": 0.001},
}


def _assert_close(actual, expected, tol, what):
    np.testing.assert_allclose(
        actual, expected.astype(np.float32), rtol=tol.rtol, atol=tol.atol, err_msg=f"{what} ({tol.reason})"
    )


# ------------------------------------------------------------------------------------------ ccSGD float16
CCSGD_MP = [
    {"momentum": 0.9},
    {},
    {"momentum": 0.9, "wd": 0.05, "clip_gradient": 0.4},
    {"wd": 0.03, "rescale_grad": 0.14},
    {"momentum": 0.9, "rescale_grad": 0.8, "wd": 0.07},
]


@pytest.mark.oracle
def test_ccsgd_multi_precision_matches_mxnet_19():
    arrays: dict = {}
    cases = [
        make_case(
            f"ccsgd-mp{n}",
            "ccsgd",
            {**kw, "multi_precision": True},
            dtype="float16",
            seed=70 + n,
            arrays=arrays,
        )
        for n, kw in enumerate(CCSGD_MP)
    ]
    expected, _ = run_optimizer_cases(cases, arrays, version="1.9")
    for case, kwargs in zip(cases, CCSGD_MP):
        cid = case["id"]
        actual = run_case(case, arrays)
        for key in (k for k in expected if k.startswith(cid) and "/w" in k):
            _assert_close(actual[key], expected[key], F16_MP, key)
        for i in range(case["ntensors"]):
            mx_leaves = [expected[k] for k in sorted(expected) if k.startswith(f"{cid}/s/{i}/")]
            ours = [actual[k] for k in sorted(actual) if k.startswith(f"{cid}/s/{i}/")]
            # MXNet 1.9.1: (mom, weight32) or (None, weight32); optzoo: (weight32, mom) or (weight32, None)
            assert len(ours) == len(mx_leaves) == (2 if kwargs.get("momentum") else 1)
            for ours_leaf, mx_leaf in zip(ours, mx_leaves[::-1]):
                _assert_close(ours_leaf, mx_leaf, F32, f"{cid} state {i}")


# ------------------------------------------------------------------------------------------ LBSGD accumulation
LBSGD_CASES = {
    "lin2": {"batch_scale": 2, "warmup_epochs": 3, "updates_per_epoch": 10, "momentum": 0.9},
    "lin4-wd": {"batch_scale": 4, "warmup_epochs": 1, "updates_per_epoch": 30, "wd": 0.03},
    "pow3": {
        "batch_scale": 3,
        "warmup_strategy": "power2",
        "warmup_epochs": 2,
        "updates_per_epoch": 20,
        "momentum": 0.5,
        "clip_gradient": 0.4,
    },
    "sqrt2-begin": {
        "batch_scale": 2,
        "warmup_strategy": "sqrt",
        "warmup_epochs": 3,
        "updates_per_epoch": 16,
        "begin_epoch": 1,
        "rescale_grad": 0.8,
        "wd": 0.05,
    },
    "sqrt5-nowarm": {"batch_scale": 5, "warmup_strategy": "sqrt", "warmup_epochs": 0, "momentum": 0.9},
    "lars2": {
        "batch_scale": 2,
        "warmup_strategy": "lars",
        "momentum": 0.9,
        "wd": 0.01,
        "learning_rate": 0.02,
    },
    "lars3-clip": {
        "batch_scale": 3,
        "warmup_strategy": "lars",
        "clip_gradient": 0.5,
        "wd": 0.07,
        "learning_rate": 0.02,
    },
    "default-warmup": {"batch_scale": 4},  # 160 micro-batches of warmup: linear ramp throughout
    "nwup1": {"batch_scale": 2, "warmup_epochs": 1, "updates_per_epoch": 1, "momentum": 0.9},
}
# (suffix, kwargs, make_case options)
LBSGD_FEATURES = [
    (
        "sched",
        {
            "batch_scale": 2,
            "warmup_epochs": 2,
            "updates_per_epoch": 20,
            "momentum": 0.9,
            "learning_rate": 0.02,
        },
        {"scheduler": SCHED},
    ),
    ("begin7", {"batch_scale": 3, "updates_per_epoch": 10, "begin_num_update": 7, "momentum": 0.9}, {}),
    (
        "mults",
        {"batch_scale": 2, "updates_per_epoch": 10, "wd": 0.05, "learning_rate": 0.05},
        {"lr_mult": {0: 0.5, 2: 2.0}, "wd_mult": {1: 0.0, 2: 3.0}},
    ),
    (
        "setlr",
        {"batch_scale": 4, "updates_per_epoch": 10, "momentum": 0.9},
        {"set_lr": {30: 0.003, 61: 0.03}},
    ),
    (
        "fp16mp-mom",
        {"batch_scale": 2, "updates_per_epoch": 10, "momentum": 0.9, "multi_precision": True},
        {"dtype": "float16"},
    ),
    (
        "fp16mp-lars",
        {"batch_scale": 3, "warmup_strategy": "lars", "wd": 0.01, "multi_precision": True},
        {"dtype": "float16"},
    ),
    # MXNet sums row-sparse gradients and updates the union of their rows lazily; without weight decay or
    # momentum that equals optzoo's densified accumulation (lazy_update=False)
    (
        "sparse-sum",
        {"batch_scale": 2, "updates_per_epoch": 10, "warmup_strategy": "lars", "lazy_update": False},
        {"sparse": (1,)},
    ),
]
LBSGD_IDS = sorted(LBSGD_CASES) + [f for f, _, _ in LBSGD_FEATURES]
STEPS = 101  # ends part-way through a macro-batch for every case (checked below)

# Runs the shared driver one case at a time and also reports MXNet's per-index accumulator
# (optimizer.cumgrads: {index: {"cum_grad": NDArray or 0, "num_cums": int}}).
_CUMGRADS_SNIPPET = f"""
all_cases = params
for one in all_cases:
    params = [one]
    exec(open({str(DRIVER)!r}).read())
    for i in range(one["ntensors"]):
        entry = opt.cumgrads[i]
        cum = entry["cum_grad"]
        if hasattr(cum, "asnumpy"):
            outputs[one["id"] + "/cum/" + str(i)] = cum.astype("float32").asnumpy()
        results[one["id"] + "/num_cums/" + str(i)] = entry["num_cums"]
"""


@pytest.fixture(scope="module")
def lbsgd_runs():
    arrays: dict = {}
    cases = {}
    for n, cid in enumerate(sorted(LBSGD_CASES)):
        cases[cid] = make_case(
            f"lb-{cid}",
            "lbsgd",
            LBSGD_CASES[cid],
            steps=STEPS,
            seed=100 + n,
            arrays=arrays,
            record=(1, 2, 3, 5, 8, 10, 25, 50, 75),
        )
    for n, (suffix, kwargs, options) in enumerate(LBSGD_FEATURES):
        cases[suffix] = make_case(
            f"lb-{suffix}",
            "lbsgd",
            kwargs,
            steps=STEPS,
            seed=200 + n,
            arrays=arrays,
            record=(1, 2, 3, 10, 31, 50, 62, 75),
            **options,
        )
    mx_cases = [
        dict(c, kwargs={k: v for k, v in c["kwargs"].items() if k != "lazy_update"}) for c in cases.values()
    ]
    expected, results = run_mxnet(_CUMGRADS_SNIPPET, arrays, params=mx_cases, version="1.9")
    return cases, arrays, expected, results


@pytest.mark.oracle
@pytest.mark.parametrize("cid", LBSGD_IDS)
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_lbsgd_accumulation_and_warmup_match_mxnet_19(lbsgd_runs, cid, impl):
    cases, arrays, expected, results = lbsgd_runs
    case = cases[cid]
    prefix = case["id"]
    actual = run_case(case, arrays, impl=impl)
    tol = F16_MP if case["dtype"] == "float16" else F32
    weight_keys = [k for k in expected if k.startswith(prefix + "/w")]
    assert len(weight_keys) == 3 * (len(case["record"]) + 1)
    for key in weight_keys:
        _assert_close(actual[key], expected[key], tol, f"{key} {case['kwargs']}")
    assert int(actual[f"{prefix}/num_update"]) == results[prefix]["num_update"]
    kwargs = case["kwargs"]
    for i in range(case["ntensors"]):
        mx_leaves = [expected[k] for k in sorted(expected) if k.startswith(f"{prefix}/s/{i}/")]
        ours = [actual[k] for k in sorted(actual) if k.startswith(f"{prefix}/s/{i}/")]
        # MXNet's state is (weight32,)? + (mom,)?; optzoo's adds the pending gradient sum (batch_scale > 1)
        assert len(ours) == len(mx_leaves) + 1
        for ours_leaf, mx_leaf in zip(ours, mx_leaves):
            _assert_close(ours_leaf, mx_leaf, F32, f"{prefix} state {i}")
        pending = expected.get(f"{prefix}/cum/{i}")  # MXNet resets the sum to the integer 0 after an update
        _assert_close(
            ours[-1],
            pending if pending is not None else np.zeros_like(ours[-1]),
            F32,
            f"{prefix} pending gradient sum {i}",
        )
        # MXNet's per-index micro-batch counter equals optzoo's, derived from the update count t
        optimizer = opt.create("lbsgd", **dict(kwargs))
        t = kwargs.get("begin_num_update", 0) + case["steps"]
        assert optimizer._num_cums(t) == results[f"{prefix}/num_cums/{i}"]


def test_lbsgd_cases_end_mid_macro_batch():
    """The comparison above sees a non-zero pending gradient sum (else it would test nothing)."""
    for kwargs in list(LBSGD_CASES.values()) + [kw for _, kw, _ in LBSGD_FEATURES]:
        optimizer = opt.create("lbsgd", **kwargs)
        assert optimizer._num_cums(kwargs.get("begin_num_update", 0) + STEPS) % kwargs["batch_scale"] != 0


# ------------------------------------------------------------------------------------------ LBSGD rules
def test_lbsgd_warmup_multipliers():
    sched = LargeBatchSchedule("linear", 2, 10, 5)  # N = 20 micro-batches, B = 5
    assert sched.warmup(0) == 1.0
    assert sched.warmup(5) == pytest.approx(2.0)
    assert sched.warmup(19) == pytest.approx(1 + 4 * 19 / 20)
    assert sched.warmup(20) == sched.warmup(1000) == 5.0
    assert LargeBatchSchedule("power2", 2, 10, 5).warmup(10) == pytest.approx(1 + 4 * 0.25)
    assert LargeBatchSchedule("sqrt", 2, 10, 5).warmup(5) == pytest.approx(1 + 4 * 0.5)
    assert LargeBatchSchedule("sqrt", 0, 10, 5).warmup(1) == 5.0  # no warmup: full multiplier at once
    assert LargeBatchSchedule("linear", 1, 1, 5).warmup(0) == 1.0  # N == 1
    assert LargeBatchSchedule.lars(4.0, 1.0, 0.0) == pytest.approx(2.0)
    assert LargeBatchSchedule.lars(0.0, 1.0, 0.1) == 0.01  # clamped below
    assert LargeBatchSchedule.lars(1.0, 0.0, 0.0) == 100.0  # clamped above


def test_lbsgd_weight_moves_only_when_a_macro_batch_completes():
    optimizer = opt.create("lbsgd", batch_scale=3, warmup_epochs=0, learning_rate=0.1, momentum=0.9)
    w = torch.ones(4)
    state = optimizer.create_state(0, w)
    history = []
    for k, g in enumerate([1.0, 2.0, 6.0, 3.0]):
        optimizer.update([0], [w], [torch.full((4,), g)], [state])
        history.append(w.clone())
        if k < 2:
            assert torch.equal(w, torch.ones(4)) and torch.equal(state.momentum, torch.zeros(4))
    # third micro-batch: mean gradient 3, lr 0.1 * batch_scale 3 (no warmup) -> mom = -0.9
    torch.testing.assert_close(history[2], torch.full((4,), 1 - 0.9))
    torch.testing.assert_close(state.cum_grad, torch.full((4,), 3.0))  # the fourth gradient is pending


def test_lbsgd_reads_learning_rate_before_counting():
    """MXNet 1.9.1 quirk (spec 11.13): the first parameter of a step sees the previous num_update."""
    seen = []

    def scheduler(num_update):
        seen.append(num_update)
        return 0.1

    optimizer = opt.create("lbsgd", lr_scheduler=scheduler)
    updater = opt.get_updater(optimizer)
    weights = [torch.ones(2), torch.ones(3)]
    for _ in range(2):
        updater([0, 1], [torch.ones(2), torch.ones(3)], weights)
    assert seen == [0, 1, 1, 2]
    seen.clear()
    reference = opt.get_updater(opt.create("ccsgd", lr_scheduler=scheduler))
    reference([0, 1], [torch.ones(2), torch.ones(3)], [torch.ones(2), torch.ones(3)])
    assert seen and set(seen) == {1}  # every other optimizer counts first


def test_lbsgd_accumulates_a_copy_of_the_gradient():
    """MXNet 1.9.1 stores the first gradient of a run by reference, so a gradient buffer reused in place
    (Gluon's) replaces it; optzoo sums the values it was given."""
    reused = opt.create("lbsgd", batch_scale=2, warmup_epochs=0, learning_rate=0.1)
    fresh = copy.deepcopy(reused)
    w1, w2 = torch.zeros(2), torch.zeros(2)
    s1, s2 = reused.create_state(0, w1), fresh.create_state(0, w2)
    g = torch.ones(2)
    reused.update([0], [w1], [g], [s1])
    g.fill_(3.0)
    reused.update([0], [w1], [g], [s1])
    for value in (1.0, 3.0):
        fresh.update([0], [w2], [torch.full((2,), value)], [s2])
    torch.testing.assert_close(w1, w2)
    torch.testing.assert_close(w1, torch.full((2,), -0.1 * 2 * 2.0))  # lr * batch_scale * mean(1, 3)


def test_lbsgd_sparse_gradient_needs_dense_accumulation():
    optimizer = opt.create("lbsgd", batch_scale=2, momentum=0.9)
    w = torch.ones(4, 3)
    state = optimizer.create_state(0, w)
    sparse = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2, 3), (4, 3))
    with pytest.raises(ValueError, match="lazy_update=False"):
        optimizer.update([0], [w], [sparse], [state])
    assert torch.equal(w, torch.ones(4, 3)) and not state.cum_grad.any()
    dense_opt = opt.create("lbsgd", batch_scale=2, momentum=0.9, wd=0.1, lazy_update=False)
    sparse_opt = copy.deepcopy(dense_opt)
    w_dense, w_sparse = torch.ones(4, 3), torch.ones(4, 3)
    s_dense, s_sparse = dense_opt.create_state(0, w_dense), sparse_opt.create_state(0, w_sparse)
    for _ in range(4):
        dense_opt.update([0], [w_dense], [sparse.to_dense()], [s_dense])
        sparse_opt.update([0], [w_sparse], [sparse], [s_sparse])
    assert torch.equal(w_dense, w_sparse)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_lbsgd_checkpoint_in_the_middle_of_a_macro_batch(impl):
    torch.manual_seed(0)
    kwargs = {
        "batch_scale": 3,
        "momentum": 0.9,
        "warmup_strategy": "sqrt",
        "updates_per_epoch": 4,
        "wd": 0.01,
        "impl": impl,
    }
    weights = [torch.randn(4, 3), torch.randn(5)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(11)]
    first = opt.get_updater(opt.create("lbsgd", **kwargs))
    for g in grads[:4]:  # one macro-batch done, one micro-batch pending
        first([0, 1], g, weights)
    assert first.states[0].cum_grad.any()
    resumed = opt.get_updater(opt.create("sgd"))
    resumed.set_states(first.get_states(dump_optimizer=True), allow_optimizer_change=True)
    weights2 = [w.clone() for w in weights]
    for g in grads[4:]:
        first([0, 1], g, weights)
        resumed([0, 1], [x.clone() for x in g], weights2)
    for a, b in zip(weights, weights2):
        assert torch.equal(a, b)
    for i in range(2):
        for a, b in zip(flatten_state(first.states[i]), flatten_state(resumed.states[i])):
            assert torch.equal(a, b)


def test_lbsgd_torch_optimizer_resumes_in_the_middle_of_a_macro_batch(tmp_path):
    torch.manual_seed(0)
    kwargs = {"batch_scale": 2, "momentum": 0.9, "updates_per_epoch": 3, "learning_rate": 0.05}
    model = torch.nn.Linear(5, 3)
    first = optzoo.TorchOptimizer(model.parameters(), "lbsgd", **kwargs)
    x = torch.randn(8, 5)

    def train(net, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()

    train(model, first, 3)
    torch.save({"model": model.state_dict(), "opt": first.state_dict()}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model2 = torch.nn.Linear(5, 3)
    model2.load_state_dict(loaded["model"])
    second = optzoo.TorchOptimizer(model2.parameters(), "lbsgd", **kwargs)
    second.load_state_dict(loaded["opt"])
    train(model, first, 5)
    train(model2, second, 5)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ 1.9.1 base rules
_DEFAULTS_SNIPPET = """
for name in ("ccsgd", "lbsgd"):
    o = mx.optimizer.create(name)
    results[name] = {k: getattr(o, k) for k in params[name]}
names = {0: "fc_weight", 1: "fc_bias", 2: "bn_gamma", 3: "bn_beta", 4: "embed", 5: "conv_weight"}
o = mx.optimizer.create("ccsgd", param_idx2name=names)
results["rule"] = o.wd_mult
o.set_wd_mult({"fc_bias": 2.0, "conv_weight": 0.5})
results["rule_override"] = o.wd_mult
"""


@pytest.mark.oracle
def test_defaults_and_wd_name_rule_match_mxnet_19():
    attrs = {
        "ccsgd": ["lr", "momentum", "lazy_update", "wd", "rescale_grad", "clip_gradient", "multi_precision"],
        "lbsgd": [
            "lr",
            "momentum",
            "warmup_strategy",
            "warmup_epochs",
            "batch_scale",
            "updates_per_epoch",
            "num_epochs",
            "wd",
            "rescale_grad",
            "clip_gradient",
            "multi_precision",
        ],
    }
    _, results = run_mxnet(_DEFAULTS_SNIPPET, params=attrs, version="1.9")
    for name, names in attrs.items():
        optimizer = opt.create(name)
        assert {k: getattr(optimizer, k) for k in names} == results[name]
    lb = opt.create("lbsgd")
    assert lb.begin_epoch * lb.updates_per_epoch == 0 and lb.lazy_update is True
    names = {0: "fc_weight", 1: "fc_bias", 2: "bn_gamma", 3: "bn_beta", 4: "embed", 5: "conv_weight"}
    for name in ("ccsgd", "lbsgd"):
        optimizer = opt.create(name, param_idx2name=names)
        assert optimizer.wd_mult == results["rule"]
        optimizer.set_wd_mult({"fc_bias": 2.0, "conv_weight": 0.5})
        assert optimizer.wd_mult == results["rule_override"]


def test_wd_name_rule_applies_to_updates():
    optimizer = opt.create("ccsgd", wd=0.5, learning_rate=0.1, param_idx2name={0: "fc_weight", 1: "fc_bias"})
    updater = opt.get_updater(optimizer)
    weights = [torch.ones(2), torch.ones(2)]
    updater([0, 1], [torch.zeros(2), torch.zeros(2)], weights)
    torch.testing.assert_close(weights[0], torch.full((2,), 1 - 0.1 * 0.5))
    assert torch.equal(weights[1], torch.ones(2))  # the bias is not decayed (MXNet 1.9.1's rule)
    assert opt.create("sgd", wd=0.5, param_idx2name={1: "fc_bias"}).wd_mult == {}  # 2.0 has no such rule


@pytest.mark.parametrize("name", ["ccsgd", "lbsgd"])
def test_docstrings_say_legacy_and_name_the_modern_optimizer(name):
    klass = type(opt.create(name))
    doc = inspect.getdoc(klass)
    assert "LEGACY" in doc and "MXNet 1.x" in doc and "removed in MXNet 2.0" in doc
    assert "optzoo.optimizer.SGD" in doc and "Migrating" in doc


def test_ccsgd_is_sgd_with_191_defaults():
    """ccSGD with lr 0.01 matches optzoo's SGD (MXNet 2.0) to rounding: the two kernels differ only in
    where weight decay is folded in."""
    arrays: dict = {}
    case = make_case(
        "cc", "ccsgd", {"momentum": 0.9, "wd": 0.03, "clip_gradient": 0.5}, steps=50, seed=9, arrays=arrays
    )
    ours = run_case(case, arrays)
    modern = run_case(dict(case, name="sgd", kwargs=dict(case["kwargs"], learning_rate=0.01)), arrays)
    for key in ours:
        np.testing.assert_allclose(ours[key], modern[key], rtol=1e-5, atol=1e-6)
    assert opt.create("ccsgd").learning_rate == 0.01 and opt.create("ccsgd").lazy_update is True
