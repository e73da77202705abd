"""The trust-ratio family's native kernels (optzoo/native/src/rules_trust_ratio.cpp) against the readable reference
path: LARS, LAMB and LANS in float32 and multi-precision float16/bfloat16, LARS's per-name ratio rule and its lazy
sparse update (which stays on the Python path), zero norms, bounds, and results that do not depend on the thread
count.

Tolerances. The element-wise arithmetic mirrors the reference's torch kernels, but a trust ratio comes from norms:
- the squares are summed per 8192-element unit in float32 blocks joined in double (deterministic, thread-count
  independent, more accurate than torch's float32 running sum), so the norms differ from the reference's in the
  last bits (~1e-7 relative) and so does every step;
- LAMB and LANS also take a square root per element: torch's float32 sqrt is not correctly rounded on every CPU
  (1 ulp off for ~15% of inputs here), the kernel's is, so their ratios differ in the last bits for any size.
Such differences are relative to the tensor's scale, not to each element (an element near 0 of a tensor whose
entries reach 200 moves by ~1e-7 * 200 per step), so the comparisons take rtol 1e-5 with an absolute tolerance of
SCALE_RTOL times the tensor's largest magnitude (every case here also passes with 2e-6; elsewhere up to 9e-6 was
seen, with float16 gradients and LARS eta 0.5). LAMB's moments, and the tensors LARS leaves at the plain learning
rate, are compared bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_support import require_native

from optzoo import native
from optzoo import optimizer as opt
from optzoo.optimizer.base import _leaves
from optzoo.optimizer.trust_ratio import bias_corrections

RTOL, ATOL = 1e-5, 1e-6
SCALE_RTOL = 1e-5
# (5, 3): tiny; (7,): not a multiple of 8 or 16; (33, 1001): 33033 elements, two core chunks (32768) and five
# kernel units; 8192: exactly one unit; 8193: one element more (the first size summed per unit)
SHAPES = [(5, 3), (7,), (33, 1001), (8192,), (8193,)]
STEPS = 50

CONFIGS = {
    "lars": [{"momentum": 0.9, "eta": 0.05}, {"eta": 0.01},
             {"momentum": 0.9, "wd": 0.01, "clip_gradient": 0.5, "rescale_grad": 0.5, "eta": 0.01},
             {"momentum": 0.5, "eta": 0.5, "epsilon": 1e-3, "learning_rate": 0.5},
             {"momentum": 0.9, "eta": 0.2, "rescale_grad": -0.5, "wd": 0.02}],
    "lamb": [{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03},
             {"epsilon": 1e-3, "clip_gradient": 0.4, "bias_correction": False},
             {"lower_bound": 1e-3, "upper_bound": 2.0, "wd": 0.01, "rescale_grad": 0.3},
             {"learning_rate": 0.1, "lower_bound": 40.0},
             {"upper_bound": 0.5, "bias_correction": False, "wd": 0.1, "learning_rate": 0.5}],
    "lans": [{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"epsilon": 1e-3, "clip_gradient": 0.1},
             {"lower_bound": 1e-3, "upper_bound": 2.0, "wd": 0.01, "rescale_grad": 0.3},
             {"learning_rate": 0.1, "lower_bound": 40.0},
             {"upper_bound": 0.5, "clip_gradient": 0.02, "learning_rate": 0.5}],
}
CASES = [(name, i, cfg) for name, cfgs in CONFIGS.items() for i, cfg in enumerate(cfgs)]
IDS = [f"{name}-{i}" for name, i, _ in CASES]


def _weights(shapes=SHAPES, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


def _run(name, impl, weights, steps=STEPS, seed=0, mults=False, zero_at=None, **kwargs):
    """`steps` updates of all weights through update_multi_precision; returns (optimizer, weights, states)."""
    o = opt.create(name, impl=impl, **kwargs)
    if mults:  # per-tensor learning rates and weight decays, one tensor without decay
        o.set_lr_mult({1: 0.5, 2: 2.0})
        o.set_wd_mult({0: 0.0, 2: 2.0})
    ws = [w.clone() for w in weights]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(ws)]
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        grads = [(torch.randn(w.shape, generator=gen) * 0.5).to(w.dtype) for w in ws]
        if zero_at is not None and step in zero_at:
            grads[0].zero_()
        o.update_multi_precision(list(range(len(ws))), ws, grads, states)
    return o, ws, states


def _assert_close(a, b, what=""):
    """rtol 1e-5 with an absolute tolerance of SCALE_RTOL times the tensor's largest magnitude (module doc)."""
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        atol = max(ATOL, SCALE_RTOL * y.abs().max().item()) if y.numel() else ATOL
        torch.testing.assert_close(x, y, rtol=RTOL, atol=atol, msg=lambda m, k=k: f"{what} tensor {k}: {m}")


# ------------------------------------------------------------------------------------------ float32
@pytest.mark.parametrize("name,i,cfg", CASES, ids=IDS)
def test_native_matches_reference(name, i, cfg, no_foreach):
    require_native()
    weights = _weights()
    o, ws, states = _run(name, "native", weights, seed=i, zero_at={3}, **cfg)
    assert o.impl == "native"
    r, rws, rstates = _run(name, "reference", weights, seed=i, zero_at={3}, **cfg)
    _assert_close(ws, rws, "weight")
    _assert_close([t for s in states for t in _leaves(s)], [t for s in rstates for t in _leaves(s)], "state")
    if name == "lamb":  # LAMB's moments do not depend on the weights or norms: exactly the reference's rounding
        for a, b in zip(states, rstates):
            assert all(torch.equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))
    assert o.num_update == r.num_update == STEPS and o._index_update_count == r._index_update_count
    # the steps were not negligible: the weights moved well beyond the tolerance
    assert all((w - w0).abs().max() > 1e-3 for w, w0 in zip(ws, weights))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_per_tensor_rates_and_decays(name, no_foreach):
    """lr_mult/wd_mult give each tensor its own scalars; one tensor has no decay at all (the reference's `if wd`)."""
    require_native()
    weights = _weights()
    kwargs = {"momentum": 0.9, "eta": 0.1} if name == "lars" else {}
    _, ws, states = _run(name, "native", weights, mults=True, wd=0.02, **kwargs)
    _, rws, rstates = _run(name, "reference", weights, mults=True, wd=0.02, **kwargs)
    _assert_close(ws + [t for s in states for t in _leaves(s)], rws + [t for s in rstates for t in _leaves(s)])


def test_many_tensors_and_a_large_one(no_foreach):
    """Many small tensors spread over the threads next to one larger than many units, zero-size tensors included:
    every pass covers every unit of every tensor once, whatever the threads take."""
    require_native()
    rng = np.random.default_rng(7)
    shapes = [(int(n),) for n in rng.integers(1, 30000, size=25)] + [(0,), (300_001,), (3, 0), (64, 70)]
    weights = _weights(shapes, seed=2)
    for name, kwargs in [("lars", {"momentum": 0.9, "eta": 0.1, "wd": 0.01}), ("lamb", {"wd": 0.01}),
                         ("lans", {"wd": 0.01, "lower_bound": 0.5})]:
        _, ws, states = _run(name, "native", weights, steps=12, **kwargs)
        _, rws, rstates = _run(name, "reference", weights, steps=12, **kwargs)
        _assert_close(ws + [t for s in states for t in _leaves(s)], rws + [t for s in rstates for t in _leaves(s)],
                      name)


# ------------------------------------------------------------------------------------------ multi-precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_multi_precision(name, dtype, no_foreach):
    require_native()
    weights = _weights(dtype=dtype)
    cfg = {"multi_precision": True, "wd": 0.01, "clip_gradient": 1.0}
    if name == "lars":
        cfg.update(momentum=0.9, eta=0.05)
    o, ws, states = _run(name, "native", weights, **cfg)
    assert o.impl == "native"
    _, rws, rstates = _run(name, "reference", weights, **cfg)
    for w, (master, _) in zip(ws, states):
        assert w.dtype == dtype and torch.equal(w, master.to(dtype))
    _assert_close([s[0] for s in states], [s[0] for s in rstates], "master")
    _assert_close([t for s in states for t in _leaves(s[1])], [t for s in rstates for t in _leaves(s[1])], "state")
    for w, rw in zip(ws, rws):  # the rounded weights differ by at most one low-precision step
        torch.testing.assert_close(w.float(), rw.float(), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------------------------------ LARS's names
def test_lars_names_choose_the_ratio(no_foreach):
    """Parameters whose names end in gamma/beta/bias keep the plain learning rate: exactly the reference's SGD step;
    the others get the ratio (and differ from a run where every parameter keeps the plain rate)."""
    require_native()
    weights = _weights()
    names = {0: "conv0_weight", 1: "fc_bias", 2: "bn_gamma", 3: "dense_weight", 4: "ln_beta"}
    cfg = {"momentum": 0.9, "eta": 0.2, "wd": 0.01, "param_idx2name": names}
    _, ws, states = _run("lars", "native", weights, **cfg)
    _, rws, rstates = _run("lars", "reference", weights, **cfg)
    _assert_close(ws + states, rws + rstates)
    for k in (1, 2, 4):
        assert torch.equal(ws[k], rws[k]) and torch.equal(states[k], rstates[k])
    plain = {i: f"p{i}_bias" for i in range(len(weights))}
    _, pws, _ = _run("lars", "native", weights, **{**cfg, "param_idx2name": plain})
    assert torch.equal(pws[1], ws[1]) and not torch.equal(pws[0], ws[0]) and not torch.equal(pws[3], ws[3])


def test_lars_aux_flags():
    o = opt.create("lars")
    assert o._native_aux([0, 1, 2], 0.1, [1, 1, 1]) == ([1.0, 1.0, 1.0], None)
    o = opt.create("lars", param_idx2name={0: "a_weight", 1: "a_bias"})
    assert o._native_aux([0, 1, 5], 0.1, [1, 1, 1]) == ([1.0, 0.0, 1.0], None)
    assert opt.create("lars")._native_aux(["x_gamma", "y"], 0.1, [1, 1]) == ([0.0, 1.0], None)


def _sparse_rows(rows, values, shape):
    idx = torch.tensor([rows], dtype=torch.int64)
    return torch.sparse_coo_tensor(idx, values, shape, check_invariants=True)


def test_lars_lazy_sparse_stays_on_the_python_path():
    """The kernel has no lazy row update (lazy_rows=false): a row-sparse gradient with lazy_update runs LARS's own
    _lazy_update (the whole weight's norm, the rows present only) while the dense tensors of the same call run
    natively; untouched rows stay untouched and everything matches the reference."""
    require_native()
    gen = torch.Generator().manual_seed(3)
    shape = (40, 300)
    w0 = [torch.randn(shape, generator=gen), torch.randn(500, generator=gen)]
    touched = set()
    schedule = []
    for _ in range(20):
        rows = sorted(torch.randperm(30, generator=gen)[:5].tolist())  # rows 30..39 are never touched
        touched.update(rows)
        schedule.append((rows, torch.randn(len(rows), shape[1], generator=gen), torch.randn(500, generator=gen)))
    out = {}
    for impl in ("native", "reference"):
        o = opt.create("lars", impl=impl, lazy_update=True, momentum=0.9, eta=0.1, wd=0.01)
        ws = [w.clone() for w in w0]
        states = [o.create_state(i, w) for i, w in enumerate(ws)]
        for rows, values, dense in schedule:
            o.update([0, 1], ws, [_sparse_rows(rows, values, shape), dense], states)
        out[impl] = ws + states
    untouched = sorted(set(range(shape[0])) - touched)
    assert untouched and torch.equal(out["native"][0][untouched], w0[0][untouched])
    assert torch.equal(out["native"][2][untouched], torch.zeros(len(untouched), shape[1]))
    _assert_close(out["native"], out["reference"])


# ------------------------------------------------------------------------------------------ special values
@pytest.mark.parametrize("name", list(CONFIGS))
def test_zero_weights_and_gradients(name, no_foreach):
    """A zero weight norm or a zero gradient norm gives the ratio 1 (LARS, LAMB) and LANS's all-zero gradient stays
    zero instead of 0/0: the same as the reference, with no NaN anywhere."""
    require_native()
    weights = [torch.zeros(6, 5), torch.zeros(20000), torch.randn(9), torch.randn(12000)]
    out = {}
    for impl in ("native", "reference"):
        o = opt.create(name, impl=impl, **({"momentum": 0.9, "eta": 0.1} if name == "lars" else {}))
        ws = [w.clone() for w in weights]
        states = [o.create_state(i, w) for i, w in enumerate(ws)]
        for _ in range(3):
            grads = [torch.full(w.shape, 0.25) for w in ws]
            grads[2].zero_()
            grads[3].zero_()
            o.update(list(range(len(ws))), ws, grads, states)
        out[impl] = ws + [t for s in states for t in _leaves(s)]
    assert not any(torch.isnan(t).any() for t in out["native"])
    _assert_close(out["native"], out["reference"])


def test_lamb_bias_corrections_come_from_python():
    """numpy's float32 power (the reference's bias corrections) is not the C library's powf: the corrections travel
    as aux values, so late update counts round exactly as the reference's."""
    o = opt.create("lamb", beta1=0.9, beta2=0.999)
    aux, commit = o._native_aux([0, 1, 2], 0.001, [1, 7, 12345])
    assert commit is None
    assert aux == [*bias_corrections(0.9, 0.999, 1), *bias_corrections(0.9, 0.999, 7),
                   *bias_corrections(0.9, 0.999, 12345)]
    assert opt.create("lamb", bias_correction=False)._native_aux([0, 1], 0.001, [3, 3]) == ([1.0] * 4, None)
    assert opt.create("lans")._native_aux([4], 0.001, [2])[0] == list(bias_corrections(0.9, 0.999, 2))


def test_late_update_counts(no_foreach):
    require_native()
    weights = _weights()
    out = {}
    for impl in ("native", "reference"):
        o = opt.create("lamb", impl=impl, begin_num_update=5000, beta2=0.99)
        ws = [w.clone() for w in weights]
        states = [o.create_state(i, w) for i, w in enumerate(ws)]
        gen = torch.Generator().manual_seed(8)
        for _ in range(5):
            o.update(list(range(len(ws))), ws, [torch.randn(w.shape, generator=gen) for w in ws], states)
        out[impl] = ws + [t for s in states for t in s]
    _assert_close(out["native"], out["reference"])


def test_hyperparameters_reach_the_kernel():
    assert opt.create("lars", momentum=0.9, eta=0.01, epsilon=1e-7, rescale_grad=0.5)._native_hyper() == \
        [0.9, 0.01, 1e-7, 0.5, -1.0]
    assert opt.create("lamb", lower_bound=0.1, clip_gradient=0.3, bias_correction=False)._native_hyper() == \
        [0.9, 0.999, 1e-6, 1.0, 0.3, 0.1, -1.0, 0.0]
    assert opt.create("lans", upper_bound=3.0)._native_hyper() == [0.9, 0.999, 1e-6, 1.0, -1.0, -1.0, 3.0]


# ------------------------------------------------------------------------------------------ threads, fallbacks
@pytest.mark.parametrize("name", list(CONFIGS))
def test_results_do_not_depend_on_the_thread_count(name):
    require_native()
    weights = _weights([(300_001,), (5, 3), (70_000,), (33, 1001)], seed=4)
    kwargs = {"momentum": 0.9, "eta": 0.1, "wd": 0.01} if name == "lars" else {"wd": 0.01}
    previous = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            _, ws, states = _run(name, "native", weights, steps=4, **kwargs)
            runs.append(ws + [t for s in states for t in _leaves(s)])
    finally:
        torch.set_num_threads(previous)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run))


# ------------------------------------------------------------------------------------------ split passes
SPLIT_KWARGS = {"lars": {"momentum": 0.9, "eta": 0.1, "wd": 0.01}, "lamb": {"wd": 0.01, "lower_bound": 0.1},
                "lans": {"wd": 0.01, "clip_gradient": 0.2}}


def _norm_stages(o, weights, grads, states, t=1):
    """Every native norm stage of one step (as _native_call runs them): (aux, [sums of each stage])."""
    n = len(weights)
    aux, _ = o._native_aux(list(range(n)), [o.lr] * n, [t] * n)
    stages, prior = [], None
    for _ in range(o._native_norm_stages):
        prior = o._native_norm_sums(weights, grads, states, o.lr, o.wd, t, False, aux, prior)
        stages.append(prior)
    return aux, stages


@pytest.mark.parametrize("name", list(CONFIGS))
def test_norm_sums_are_the_sums_of_squares(name):
    """The norm entry returns float64 [n_tensors, k] per-tensor sums of squares: LARS's |w|^2 and |grad|^2, LANS's
    first stage |rescale_grad * grad|^2, and for LAMB/LANS the weight's |w|^2 (compared with float64 sums)."""
    require_native()
    shapes = [(33, 1001), (5, 3), (70_000,), (0,)]
    o = opt.create(name, impl="native", rescale_grad=0.5, **SPLIT_KWARGS[name])
    weights = _weights(shapes, seed=5)
    grads = [w * 0.5 + 0.1 for w in _weights(shapes, seed=6)]
    states = [o.create_state(i, w) for i, w in enumerate(weights)]
    _, stages = _norm_stages(o, weights, grads, states)
    w2 = torch.tensor([w.double().square().sum().item() for w in weights], dtype=torch.float64)
    g2 = torch.tensor([g.double().square().sum().item() for g in grads], dtype=torch.float64)
    assert [s.dtype for s in stages] == [torch.float64] * len(stages)
    main = stages[-1]
    assert main.shape == (len(shapes), 3 if name == "lans" else 2)
    torch.testing.assert_close(main[:, 0], w2, rtol=1e-6, atol=0)
    if name == "lars":
        torch.testing.assert_close(main[:, 1], g2, rtol=1e-6, atol=0)
    if name == "lans":
        torch.testing.assert_close(stages[0][:, 0], g2 * 0.25, rtol=1e-6, atol=0)
    if name != "lars":  # the norm stage advanced the moments in place (m = (1 - beta1) * g at the first step)
        assert states[1].mean.abs().sum() > 0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_split_step_equals_the_whole_step(name):
    """norm stage(s), then the update with their sums (aux = (aux, *sums)): bit for bit the one-call step, where
    tensors of at most 8 units of 8,192 elements take all their passes at once (65,536 elements: fused; 65,537:
    stage by stage)."""
    require_native()
    shapes = [(300_001,), (5, 3), (33, 1001), (65_536,), (65_537,), (8193,), (0,)]
    weights = _weights(shapes, seed=8)
    grads = _weights(shapes, seed=9)
    o = opt.create(name, impl="native", **SPLIT_KWARGS[name])
    kernel, hyper = o._native_kernel(), o._native_hyper()
    whole_w = [w.clone() for w in weights]
    whole_s = [o.create_state(i, w) for i, w in enumerate(whole_w)]
    n = len(shapes)
    aux, _ = o._native_aux(list(range(n)), [o.lr] * n, [1] * n)
    assert native.load().step(kernel, whole_w, grads, whole_s, o.lr, o.wd, 1, hyper, False, aux)
    split_w = [w.clone() for w in weights]
    split_s = [o.create_state(i, w) for i, w in enumerate(split_w)]
    aux, stages = _norm_stages(o, split_w, grads, split_s)
    assert native.load().step(kernel, split_w, grads, split_s, o.lr, o.wd, 1, hyper, False, (aux, *stages))
    for a, b in zip(whole_w + [t for s in whole_s for t in _leaves(s)],
                    split_w + [t for s in split_s for t in _leaves(s)]):
        assert torch.equal(a, b)
    # sums of the wrong width or dtype: the kernel declines (nothing written), as for any input it cannot take
    before = [w.clone() for w in split_w]
    for bad in (stages[-1][:, :1].contiguous(), stages[-1].float(), stages[-1][:2].contiguous()):
        assert not native.load().step(kernel, split_w, grads, split_s, o.lr, o.wd, 2, hyper, False,
                                      (aux, *stages[:-1], bad))
    assert all(torch.equal(a, b) for a, b in zip(before, split_w))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sums_of_shards_give_the_unsharded_step(name, no_foreach):
    """What sharded training does: each 'rank' holds half of every (flat) tensor, computes its norm sums, the sums
    are added (the all-reduce) before the next stage, and each rank updates its half with the total. The result is
    the unsharded step up to the order of the float64 additions."""
    require_native()
    sizes = [40_000, 6, 20_001]
    weights, grads = _weights([(n,) for n in sizes], seed=10), _weights([(n,) for n in sizes], seed=11)
    whole = opt.create(name, impl="native", **SPLIT_KWARGS[name])
    whole_w = [w.clone() for w in weights]
    whole_s = [whole.create_state(i, w) for i, w in enumerate(whole_w)]
    whole.update(list(range(3)), whole_w, grads, whole_s)

    o = opt.create(name, impl="native", **SPLIT_KWARGS[name])
    kernel, hyper = o._native_kernel(), o._native_hyper()
    full_w = [w.clone() for w in weights]
    full_s = [o.create_state(i, w) for i, w in enumerate(full_w)]
    halves = [(0, n // 2) for n in sizes], [(n // 2, n) for n in sizes]

    def shard(lst, part):
        return [x[a:b] for x, (a, b) in zip(lst, part)]

    def shard_states(part):
        return [s if s is None else (s[a:b] if isinstance(s, torch.Tensor) else type(s)(*(x[a:b] for x in s)))
                for s, (a, b) in zip(full_s, part)]

    ranks = [(shard(full_w, p), shard(grads, p), shard_states(p)) for p in halves]
    aux, _ = o._native_aux([0, 1, 2], [o.lr] * 3, [1] * 3)
    totals = []
    for _ in range(o._native_norm_stages):
        prior = totals[0] if totals else None
        totals.append(sum(o._native_norm_sums(w, g, s, o.lr, o.wd, 1, False, aux, prior) for w, g, s in ranks))
    for w, g, s in ranks:
        assert native.load().step(kernel, w, g, s, o.lr, o.wd, 1, hyper, False, (aux, *totals))
    _assert_close(full_w + [t for s in full_s for t in _leaves(s)],
                  whole_w + [t for s in whole_s for t in _leaves(s)], name)
    assert all((w - w0).abs().max() > 1e-4 for w, w0 in zip(full_w, weights))


def test_float64_falls_back_to_the_torch_path():
    require_native()
    weights = [torch.randn(6, 4, dtype=torch.float64), torch.randn(9, dtype=torch.float64)]
    _, ws, _ = _run("lamb", "native", weights, steps=3)
    _, fws, _ = _run("lamb", "foreach", weights, steps=3)
    assert all(torch.equal(a, b) for a, b in zip(ws, fws))
