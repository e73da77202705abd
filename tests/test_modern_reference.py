"""Lion, ADOPT, AdEMAMix, MARS, Schedule-Free AdamW/SGD and Prodigy against the packages users would otherwise
install (lion-pytorch, pytorch-optimizer 4.1, schedulefree, prodigyopt): 120 steps on random shapes (non-square,
1-D, 3-D, one element), weights and every state compared, through optzoo.TorchOptimizer and every impl; plus
seeded random cases (random shapes up to 4-D and every knob drawn at random: one per optimizer in CI, six with
OPTZOO_FULL=1).

Tolerance (float32): rtol 2e-5, atol 2e-6 on weights and states after 120 steps (Prodigy's cancelling sum s:
atol 2e-5 of its largest element). The packages' torch ops round
like the readable path; the fused paths differ by float32 rounding (vectorized multiply-adds), which the
trajectories carry but do not amplify. Lion's and MARS-lion's sign() would turn an ulp into a full step, so their
gradients keep the momentum interpolation away from zero (checked: no element within 1e-4 of zero)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import optzoo
from optzoo import native

lion_pytorch = pytest.importorskip("lion_pytorch")
schedulefree = pytest.importorskip("schedulefree")
prodigyopt = pytest.importorskip("prodigyopt")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

FULL = os.environ.get("OPTZOO_FULL") == "1"
SHAPES = [(7, 5), (13,), (3, 4, 6), (1,), (2, 33)]
STEPS = 120
RTOL, ATOL = 2e-5, 2e-6
IMPLS = ["reference", "foreach", "native"]


def _impls(name):
    kernel = optzoo.optimizer.create(name).native_rule
    out = ["reference", "foreach"]
    if kernel is not None:
        out.append("native")
    return out


# name, optzoo kwargs, reference constructor, {our state field: reference state key}
CASES = [
    ("lion", {"learning_rate": 1e-3}, lambda p: lion_pytorch.Lion(p, lr=1e-3), {"exp_avg": "exp_avg"}),
    ("lion", {"lr": 3e-3, "betas": (0.8, 0.95), "weight_decay": 0.5},
     lambda p: lion_pytorch.Lion(p, lr=3e-3, betas=(0.8, 0.95), weight_decay=0.5), {"exp_avg": "exp_avg"}),
    ("lion", {"learning_rate": 2e-3, "wd": 1e-3, "decoupled_weight_decay": True},
     lambda p: lion_pytorch.Lion(p, lr=2e-3, weight_decay=1e-3, decoupled_weight_decay=True),
     {"exp_avg": "exp_avg"}),
    ("adopt", {}, lambda p: pytorch_optimizer.ADOPT(p), {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    ("adopt", {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": 0.1},
     lambda p: pytorch_optimizer.ADOPT(p, lr=3e-3, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    ("adopt", {"learning_rate": 1e-2, "wd": 0.1, "weight_decouple": True, "clip_exponent": None},
     lambda p: pytorch_optimizer.ADOPT(p, lr=1e-2, weight_decay=0.1, weight_decouple=True, clip_lambda=None),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    ("adopt", {"wd": 0.1, "weight_decouple": True, "fixed_decay": True},
     lambda p: pytorch_optimizer.ADOPT(p, weight_decay=0.1, weight_decouple=True, fixed_decay=True),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    ("ademamix", {}, lambda p: pytorch_optimizer.AdEMAMix(p),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "exp_avg_slow": "exp_avg_slow"}),
    ("ademamix", {"lr": 2e-3, "betas": (0.8, 0.99, 0.999), "alpha": 8.0, "t_alpha_beta3": 50, "weight_decay": 0.1},
     lambda p: pytorch_optimizer.AdEMAMix(p, lr=2e-3, betas=(0.8, 0.99, 0.999), alpha=8.0, t_alpha_beta3=50,
                                          weight_decay=0.1),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "exp_avg_slow": "exp_avg_slow"}),
    ("ademamix", {"wd": 0.1, "weight_decouple": True, "eps": 1e-3},
     lambda p: pytorch_optimizer.AdEMAMix(p, weight_decay=0.1, weight_decouple=True, eps=1e-3),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "exp_avg_slow": "exp_avg_slow"}),
    ("mars", {}, lambda p: pytorch_optimizer.MARS(p),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "last_grad": "last_grad"}),
    ("mars", {"lr": 1e-2, "betas": (0.9, 0.95), "gamma": 0.05, "weight_decay": 0.05, "lr_1d": 5e-3,
              "betas_1d": (0.8, 0.9), "weight_decay_1d": 0.02},
     lambda p: pytorch_optimizer.MARS(p, lr=1e-2, betas=(0.9, 0.95), gamma=0.05, weight_decay=0.05, lr_1d=5e-3,
                                      betas_1d=(0.8, 0.9), weight_decay_1d=0.02),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "last_grad": "last_grad"}),
    ("mars", {"optimize_1d": True, "wd": 0.01, "eps": 1e-4},
     lambda p: pytorch_optimizer.MARS(p, optimize_1d=True, weight_decay=0.01, eps=1e-4),
     {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "last_grad": "last_grad"}),
    ("mars", {"mars_type": "lion", "learning_rate": 1e-3},
     lambda p: pytorch_optimizer.MARS(p, mars_type="lion", lr=1e-3),
     {"exp_avg": "exp_avg", "last_grad": "last_grad"}),
    ("schedulefree_adamw", {}, lambda p: schedulefree.AdamWScheduleFree(p),
     {"z": "z", "exp_avg_sq": "exp_avg_sq"}),
    ("schedulefree_adamw", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05,
                            "warmup_steps": 30, "r": 0.5, "weight_lr_power": 1.0},
     lambda p: schedulefree.AdamWScheduleFree(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05,
                                              warmup_steps=30, r=0.5, weight_lr_power=1.0),
     {"z": "z", "exp_avg_sq": "exp_avg_sq"}),
    ("schedulefree_sgd", {"learning_rate": 0.05}, lambda p: schedulefree.SGDScheduleFree(p, lr=0.05), {"z": "z"}),
    ("schedulefree_sgd", {"lr": 0.1, "momentum": 0.7, "weight_decay": 0.01, "warmup_steps": 20, "r": 1.0},
     lambda p: schedulefree.SGDScheduleFree(p, lr=0.1, momentum=0.7, weight_decay=0.01, warmup_steps=20, r=1.0),
     {"z": "z"}),
    ("prodigy", {}, lambda p: prodigyopt.Prodigy(p),
     {"p0": "p0", "s": "s", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    ("prodigy", {"lr": 0.5, "betas": (0.8, 0.99), "beta3": 0.9, "weight_decay": 0.1, "use_bias_correction": True,
                 "d_coef": 2.0, "growth_rate": 1.05},
     lambda p: prodigyopt.Prodigy(p, lr=0.5, betas=(0.8, 0.99), beta3=0.9, weight_decay=0.1,
                                  use_bias_correction=True, d_coef=2.0, growth_rate=1.05),
     {"p0": "p0", "s": "s", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    ("prodigy", {"wd": 0.1, "decouple": False, "safeguard_warmup": True, "d0": 1e-4},
     lambda p: prodigyopt.Prodigy(p, weight_decay=0.1, decouple=False, safeguard_warmup=True, d0=1e-4),
     {"p0": "p0", "s": "s", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
]
CASE_IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def _grads(seed: int, steps: int, shapes=SHAPES):
    """Gradients with a persistent mean (so sign-based rules never sit on zero) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    means = [torch.randn(s, generator=gen) for s in shapes]
    return [[m + 0.5 * torch.randn(s, generator=gen) for m, s in zip(means, shapes)] for _ in range(steps)]


def _run_pair(name, kwargs, make_reference, impl, seed=0, steps=STEPS, shapes=SHAPES):
    gen = torch.Generator().manual_seed(100 + seed)
    init = [torch.randn(s, generator=gen) for s in shapes]
    ours = [torch.nn.Parameter(w.clone()) for w in init]
    theirs = [torch.nn.Parameter(w.clone()) for w in init]
    opt = optzoo.TorchOptimizer(ours, name, impl=impl, **kwargs)
    ref = make_reference(theirs)
    if hasattr(ref, "train"):
        ref.train()
    # Prodigy's estimate needs a loss with a minimum: 0.5*|w - target|^2 plus noise, each side at its own weights
    quadratic = name == "prodigy"
    for grads in _grads(seed, steps, shapes):
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = (p.detach() + 0.5 * g, q.detach() + 0.5 * g) if quadratic else (g.clone(), g.clone())
        opt.step()
        ref.step()
    return opt, ref, ours, theirs


def _compare(opt, ref, ours, theirs, fields, what=""):
    for i, (p, q) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{what} weight {i} {tuple(p.shape)}")
        state = opt.state[p]["state"]
        for field, key in fields.items():
            mine = getattr(state, field)
            theirs_state = ref.state[q][key].reshape(mine.shape)
            # Prodigy's s sums terms that grow with d and cancel: an element near zero carries the rounding of
            # the tensor's large elements, so its absolute tolerance scales with the largest one
            atol = RTOL * float(theirs_state.abs().max()) if field == "s" else ATOL
            np.testing.assert_allclose(mine.numpy(), theirs_state.numpy(), rtol=RTOL, atol=max(atol, ATOL),
                                       err_msg=f"{what} state {field} of {i} {tuple(p.shape)}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference_package(case, impl):
    name, kwargs, make_reference, fields = case
    if impl not in _impls(name):
        pytest.skip(f"{name} has no {impl} path")
    if impl == "native" and native.load() is None:
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")
    opt, ref, ours, theirs = _run_pair(name, kwargs, make_reference, impl)
    assert opt.optimizer.impl == impl
    _compare(opt, ref, ours, theirs, fields, f"{name} {impl}")
    if name == "prodigy":
        group = ref.param_groups[0]
        assert opt.optimizer.d == pytest.approx(group["d"], rel=1e-5)
        assert opt.optimizer.d_max == pytest.approx(group["d_max"], rel=1e-5)
        assert opt.optimizer.d_numerator == pytest.approx(group["d_numerator"], rel=1e-4)
        assert opt.optimizer.d > 10 * opt.optimizer.d0  # the estimate moved: the test exercises it
    if name.startswith("schedulefree"):
        opt.eval()
        ref.eval()
        for p, q in zip(ours, theirs):  # the averaged point x, where the model is evaluated
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(not FULL, reason="more seeds with OPTZOO_FULL=1")
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference_package_more_seeds(case, seed):
    name, kwargs, make_reference, fields = case
    for impl in _impls(name):
        opt, ref, ours, theirs = _run_pair(name, kwargs, make_reference, impl, seed=seed)
        _compare(opt, ref, ours, theirs, fields, f"{name} {impl} seed {seed}")


# ---------------------------------------------------------------------------------------- seeded random cases
def _random_shapes(rng) -> list[tuple]:
    """A non-square matrix, a vector, a 3-D and a 4-D (conv-like) tensor and a one-element one, random sizes."""
    size = lambda low, high: int(rng.integers(low, high))  # noqa: E731
    return [(size(2, 40), size(2, 40)), (size(1, 200),), (size(2, 5), size(2, 9), size(2, 9)),
            (size(2, 6), size(1, 5), 3, 3), (1,)]


def _random_hyper(name, rng):
    """(kwargs in the reference package's names, given to both sides) with every knob drawn at random."""
    uniform = lambda low, high: float(rng.uniform(low, high))  # noqa: E731
    log = lambda low, high: float(10 ** rng.uniform(low, high))  # noqa: E731
    wd = float(rng.choice([0.0, log(-3, -1)]))
    betas = (uniform(0.8, 0.95), uniform(0.95, 0.999))
    if name == "lion":
        return {"lr": log(-4, -2.5), "betas": betas, "weight_decay": wd}
    if name == "adopt":
        return {"lr": log(-4, -2), "betas": betas, "eps": log(-8, -4), "weight_decay": wd}
    if name == "ademamix":
        return {"lr": log(-4, -2), "betas": (*betas, uniform(0.99, 0.9999)), "alpha": uniform(2.0, 8.0),
                "t_alpha_beta3": int(rng.integers(10, 200)), "weight_decay": wd}
    if name == "mars":
        return {"lr": log(-4, -2), "betas": betas, "gamma": uniform(0.005, 0.05), "weight_decay": wd,
                "lr_1d": log(-4, -2), "betas_1d": (uniform(0.8, 0.95), uniform(0.95, 0.999)),
                "weight_decay_1d": log(-3, -1)}
    if name == "schedulefree_adamw":
        return {"lr": log(-3, -1.5), "betas": betas, "eps": log(-8, -5), "weight_decay": wd,
                "warmup_steps": int(rng.integers(0, 40)), "r": uniform(0.0, 1.0), "weight_lr_power": uniform(1, 2)}
    if name == "schedulefree_sgd":
        return {"lr": log(-2, -0.5), "momentum": uniform(0.5, 0.95), "weight_decay": wd,
                "warmup_steps": int(rng.integers(0, 40)), "r": uniform(0.0, 1.0)}
    return {"lr": uniform(0.3, 1.0), "betas": betas, "beta3": uniform(0.9, 0.99), "weight_decay": wd,  # prodigy
            "use_bias_correction": bool(rng.integers(2)), "d_coef": uniform(0.5, 2.0), "growth_rate": uniform(1.02, 2)}


RANDOM_REFERENCES = {
    "lion": lambda: lion_pytorch.Lion, "adopt": lambda: pytorch_optimizer.ADOPT,
    "ademamix": lambda: pytorch_optimizer.AdEMAMix, "mars": lambda: pytorch_optimizer.MARS,
    "schedulefree_adamw": lambda: schedulefree.AdamWScheduleFree,
    "schedulefree_sgd": lambda: schedulefree.SGDScheduleFree, "prodigy": lambda: prodigyopt.Prodigy}
RANDOM_DRAWS = 6 if FULL else 1


@pytest.mark.parametrize("draw", range(RANDOM_DRAWS))
@pytest.mark.parametrize("name", sorted(RANDOM_REFERENCES))
def test_random_cases_match_reference_package(name, draw):
    """Seeded random shapes and hyperparameters (every knob of the reference, in its names), 120 steps, every
    impl (native included), weights and states at RTOL/ATOL. CI draws one case per optimizer, OPTZOO_FULL=1 six."""
    rng = np.random.default_rng([draw, sorted(RANDOM_REFERENCES).index(name)])
    shapes = _random_shapes(rng)
    kwargs = _random_hyper(name, rng)
    fields = next(case[3] for case in CASES if case[0] == name)
    for impl in _impls(name):
        if impl == "native" and native.load() is None:
            continue
        opt, ref, ours, theirs = _run_pair(name, kwargs, lambda p: RANDOM_REFERENCES[name]()(p, **kwargs), impl,
                                           seed=draw, shapes=shapes)
        assert opt.optimizer.impl == impl
        _compare(opt, ref, ours, theirs, fields, f"{name} {impl} {kwargs} {shapes}")


def test_lion_interpolation_stays_away_from_sign_changes():
    """The premise of comparing sign-based rules at float32 tolerance: no interpolated momentum is near zero."""
    opt, _, ours, _ = _run_pair("lion", {"learning_rate": 1e-3}, CASES[0][2], "reference", steps=40)
    closest = min(float((0.9 * opt.state[p]["state"].exp_avg + 0.1 * g).abs().min())
                  for p, g in zip(ours, _grads(0, 41)[40]))
    assert closest > 1e-4, closest


# ---------------------------------------------------------------------------------------- Schedule-Free modes
def test_schedulefree_step_in_eval_mode_raises_and_train_restores():
    model = torch.nn.Linear(4, 3)
    opt = optzoo.TorchOptimizer(model.parameters(), "schedulefree_adamw", learning_rate=0.01)
    x = torch.randn(8, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    y = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    opt.eval()  # idempotent
    assert not all(torch.equal(a, p) for a, p in zip(y, model.parameters()))
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    opt.train()
    for a, p in zip(y, model.parameters()):
        torch.testing.assert_close(p.detach(), a, rtol=1e-6, atol=1e-6)
    opt.step()


def test_schedulefree_trainer_eval_uses_the_averaged_weights_and_checkpoints_the_mode(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 2)
    trainer = optzoo.Trainer(net, "schedulefree_sgd", {"learning_rate": 0.1})
    x = torch.randn(16, 5)
    for _ in range(5):
        net(x).pow(2).sum().backward()
        trainer.step(16)
    states = trainer._updater.states
    params = [dict(net.named_parameters())[name] for name in trainer.param_names]
    y = [p.detach().clone() for p in params]
    trainer.eval()
    for i, (p, y_i) in enumerate(zip(params, y)):  # x = (y - (1-beta) z) / beta
        expected = (y_i - 0.1 * states[i].z) / 0.9
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    trainer.save_states(tmp_path / "sf.states")
    with pytest.raises(RuntimeError, match="eval mode"):
        net(x).pow(2).sum().backward()
        trainer.step(16)
    trainer.load_states(tmp_path / "sf.states")
    assert trainer.optimizer.train_mode is False
    trainer.train()
    for p, y_i in zip(params, y):
        torch.testing.assert_close(p.detach(), y_i, rtol=1e-6, atol=1e-6)


def test_schedulefree_multi_precision_swap_moves_the_master_copy():
    w = torch.randn(6, 3).to(torch.bfloat16)
    opt = optzoo.optimizer.create("schedulefree_adamw", multi_precision=True, learning_rate=0.05)
    updater = optzoo.optimizer.get_updater(opt)
    for _ in range(4):
        updater(0, torch.randn(6, 3).to(torch.bfloat16), w)
    master, inner = updater.states[0]
    y32 = master.clone()
    opt.eval([w], [updater.states[0]])
    expected = torch.lerp(y32, inner.z, 1 - 1 / 0.9)
    torch.testing.assert_close(master, expected)
    assert torch.equal(w, master.to(torch.bfloat16))


# ---------------------------------------------------------------------------------------- Prodigy resume
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_prodigy_resume_is_bit_identical(impl):
    shapes = [(5, 4), (7,)]
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(20)]
    first = optzoo.optimizer.get_updater(optzoo.optimizer.create("prodigy", impl=impl, wd=0.01))
    for g in grads[:10]:
        first([0, 1], g, weights)
    blob = first.get_states(dump_optimizer=True)
    second = optzoo.optimizer.get_updater(optzoo.optimizer.create("sgd"))
    second.set_states(blob, allow_optimizer_change=True)  # the saved Prodigy replaces the SGD
    assert second.optimizer.d == first.optimizer.d and second.optimizer.k == first.optimizer.k
    weights2 = [w.clone() for w in weights]
    for g in grads[10:]:
        first([0, 1], g, weights)
        second([0, 1], [x.clone() for x in g], weights2)
    assert first.optimizer.d == second.optimizer.d
    for a, b in zip(weights, weights2):
        assert torch.equal(a, b)


def test_prodigy_zero_gradients_move_nothing():
    w = torch.randn(4, 3)
    opt = optzoo.optimizer.create("prodigy")
    updater = optzoo.optimizer.get_updater(opt)
    before = w.clone()
    updater(0, torch.zeros(4, 3), w)
    assert torch.equal(w, before) and opt.d == opt.d0 and opt.k == 0


# ---------------------------------------------------------------------------------------- names
def test_reference_names_are_mapped_and_conflicts_rejected():
    opt = optzoo.optimizer.create("ademamix", lr=0.01, betas=(0.8, 0.9, 0.99), eps=1e-6, weight_decay=0.1)
    assert (opt.lr, opt.beta1, opt.beta2, opt.beta3, opt.epsilon, opt.wd) == (0.01, 0.8, 0.9, 0.99, 1e-6, 0.1)
    with pytest.raises(ValueError, match="not both"):
        optzoo.optimizer.create("lion", lr=0.1, learning_rate=0.2)
    with pytest.raises(ValueError, match="not both"):
        optzoo.optimizer.create("adopt", weight_decay=0.1, wd=0.2)
    with pytest.raises(ValueError, match="betas"):
        optzoo.optimizer.create("lion", betas=(0.9,))
    with pytest.raises(ValueError, match="not both"):  # an explicit default counts as given
        optzoo.optimizer.create("mars", betas_1d=(0.8, 0.9), beta1_1d=0.9)
    with pytest.raises(ValueError, match="not both"):
        optzoo.optimizer.create("mars", weight_decay_1d=0.2, wd_1d=0.1)
    with pytest.raises(ValueError, match="slice_p"):
        optzoo.optimizer.create("prodigy", slice_p=2)
    with pytest.raises(ValueError, match="mars_type"):
        optzoo.optimizer.create("mars", mars_type="shampoo")
    assert math.isinf(optzoo.optimizer.create("prodigy").growth_rate)


# ---------------------------------------------------------------------------------------- the command line
def test_compare_preset_modern_plans_the_registered_modern_optimizers():
    from optzoo.cli import build_parser, compare

    args = build_parser().parse_args(["compare", "--preset", "modern"])
    specs, _ = compare._plan(args)
    names = [spec.name for spec in specs]
    assert names[0] == "adamw"
    assert {"lion", "adopt", "ademamix", "mars", "schedulefree_adamw", "schedulefree_sgd", "prodigy"} <= set(names)
    assert set(names) <= set(optzoo.optimizer.Optimizer.opt_registry)
    assert compare._plan(build_parser().parse_args(["compare"]))[0][0].name != "adamw"


def test_compare_evaluates_schedulefree_at_the_averaged_weights():
    from optzoo.cli import training

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    optimizer = optzoo.optimizer.create("schedulefree_sgd", learning_rate=0.1)
    updater = optzoo.optimizer.get_updater(optimizer)
    for _ in range(3):
        updater([0], [torch.randn(4, 3)], [params[0].data])
    y = params[0].detach().clone()
    training._set_mode(optimizer, updater, params, "eval")
    torch.testing.assert_close(params[0].detach(), (y - 0.1 * updater.states[0].z) / 0.9)
    training._set_mode(optimizer, updater, params, "train")
    torch.testing.assert_close(params[0].detach(), y)
