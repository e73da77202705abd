"""Generic optimizer tests: every test iterates the table in optimizer_table.py."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from optimizer_table import BASE_ERRORS, ROWS, Row
from trajectory import SHAPES, flatten_state, make_case, run_case

from optzoo import native
from optzoo import optimizer as opt

ROW_IDS = [row.name for row in ROWS]
CONFIG_CASES = [(row, i, cfg) for row in ROWS for i, cfg in enumerate(row.configs)]
CONFIG_IDS = [f"{row.name}-{i}" for row, i, _ in CONFIG_CASES]


def _assert_close(a: dict, b: dict, rtol: float, atol: float, what: str = "") -> None:
    """As the MXNet parity test: ``atol`` is scaled by the tensor's largest magnitude once that passes 1 (an
    element near 0 of a tensor whose norms are in the hundreds carries their float32 rounding)."""
    assert sorted(a) == sorted(b)
    for key in a:
        scale = max(1.0, float(np.abs(a[key]).max())) if np.size(a[key]) else 1.0
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol * scale, err_msg=f"{what} {key}")


# ---------------------------------------------------------------------------------------- construction errors
ERROR_CASES = [(row, kwargs, exc, match) for row in ROWS for kwargs, exc, match in BASE_ERRORS + row.errors]


@pytest.mark.parametrize("row,kwargs,exc,match", ERROR_CASES,
                         ids=[f"{r.name}-{sorted(k)}-{i}" for i, (r, k, _, _) in enumerate(ERROR_CASES)])
def test_invalid_arguments_raise(row: Row, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        opt.create(row.name, **{**row.feature_kwargs, **kwargs})


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_create_is_case_insensitive_and_repr_roundtrips(row: Row):
    a = opt.create(row.name.upper(), **row.configs[-1])
    assert opt.Optimizer.opt_registry[row.name] is type(a)
    b = opt.create(row.name, **a.get_config())
    assert a.get_config() == b.get_config()
    assert type(a).__name__ in repr(a)


# ---------------------------------------------------------------------------------------- readable vs fast
def _skip_unless_impl(row: Row, impl: str) -> None:
    if impl == "native" and opt.create(row.name, **row.feature_kwargs).native_rule is None:
        pytest.skip(f"{row.name} has no native kernel")
    if impl == "native" and native.load() is None:
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")


@pytest.mark.parametrize("impl", ["foreach", "native"])
@pytest.mark.parametrize("row,i,cfg", CONFIG_CASES, ids=CONFIG_IDS)
def test_reference_and_fast_paths_agree(row: Row, i, cfg, impl):
    """Both implementations over 40 steps, with a learning-rate change mid-run, on mixed-sign gradients."""
    _skip_unless_impl(row, impl)
    arrays: dict = {}
    case = make_case(f"p{i}", row.name, cfg, steps=40, seed=i, arrays=arrays, set_lr=None if "lr_scheduler" in cfg
                     else {20: 0.5 * (cfg.get("learning_rate") or opt.create(row.name).learning_rate)},
                     record=(5, 20), shapes=SHAPES)
    ref = run_case(case, arrays, impl="reference")
    fast = run_case(case, arrays, impl=impl)
    _assert_close(ref, fast, row.impl_tol.rtol, row.impl_tol.atol, f"reference vs {impl}")


@pytest.mark.parametrize("impl", ["foreach", "native"])
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_large_learning_rate_paths_agree(row: Row, impl):
    _skip_unless_impl(row, impl)
    base = opt.create(row.name, **row.feature_kwargs).learning_rate
    arrays: dict = {}
    case = make_case("big", row.name, {**row.feature_kwargs, "learning_rate": 10 * base}, steps=20, seed=3,
                     arrays=arrays, shapes=SHAPES)
    ref = run_case(case, arrays, impl="reference")
    fast = run_case(case, arrays, impl=impl)
    _assert_close(ref, fast, row.impl_tol.rtol * 10, row.impl_tol.atol * 10, "large lr")


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_impl_is_observable(row: Row):
    fast = opt.create(row.name, **row.feature_kwargs)
    expected = "native" if fast.native_rule is not None and native.load() is not None else "foreach"
    assert fast.impl == expected
    assert fast.get_config()["impl"] == "auto"
    assert opt.create(row.name, use_fused_step=False).impl == "reference"
    assert opt.create(row.name, impl="reference").use_fused_step is False
    with pytest.raises(ValueError, match="contradicts"):
        opt.create(row.name, impl="reference", use_fused_step=True)


# ---------------------------------------------------------------------------------------- state round trip
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_state_round_trip_continues_identically(row: Row, dtype):
    if dtype == torch.float16 and not row.multi_precision:
        pytest.skip("no multi-precision for this optimizer")
    torch.manual_seed(0)
    shapes = [(4, 3), (5,)]
    kwargs = {**row.feature_kwargs, "wd": row.wd(0.01), "multi_precision": dtype == torch.float16}
    weights = [torch.randn(s).to(dtype) for s in shapes]
    grads = [[torch.randn(s).to(dtype) for s in shapes] for _ in range(12)]
    first = opt.get_updater(opt.create(row.name, **kwargs))
    for g in grads[:6]:
        first(list(range(len(shapes))), g, weights)
    blob = first.get_states(dump_optimizer=True)
    resumed = opt.get_updater(opt.create("sgd"))  # replaced by the optimizer stored in the blob
    resumed.set_states(blob, allow_optimizer_change=True)
    assert type(resumed.optimizer) is type(first.optimizer)
    assert resumed.optimizer.num_update == first.optimizer.num_update
    weights2 = [w.clone() for w in weights]
    for g in grads[6:]:
        first(list(range(len(shapes))), g, weights)
        resumed(list(range(len(shapes))), [x.clone() for x in g], weights2)
    for a, b in zip(weights, weights2):
        assert torch.equal(a, b)
    for i in range(len(shapes)):
        for a, b in zip(flatten_state(first.states[i]), flatten_state(resumed.states[i])):
            assert torch.equal(a, b) and a.dtype == b.dtype


def test_state_blob_is_not_pickle_and_rejects_garbage():
    updater = opt.get_updater(opt.create("adam"))
    w = torch.ones(3)
    updater(0, torch.ones(3), w)
    blob = updater.get_states(dump_optimizer=True)
    assert blob[8:9] == b"{" and b"optzoo.meta" in blob[:200] and b"\x80\x04\x95" not in blob[:64]  # safetensors
    with pytest.raises(ValueError, match="not an optzoo checkpoint"):
        updater.set_states(b"\x80\x04garbage")
    with pytest.raises(ValueError):
        updater.set_states(blob[:40])


# ---------------------------------------------------------------------------------------- the caller's tensors
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_gradient_is_never_modified(row: Row, impl):
    kwargs = {**row.feature_kwargs, "wd": row.wd(0.1), "rescale_grad": 0.5, "clip_gradient": 0.3, "impl": impl}
    optimizer = opt.create(row.name, **kwargs)
    w = torch.randn(6, 3)
    g = torch.randn(6, 3)
    saved = g.clone()
    state = optimizer.create_state(0, w)
    for _ in range(3):
        optimizer.update([0], [w], [g], [state])
    assert torch.equal(g, saved)
    if row.sparse != "none":
        sparse = torch.sparse_coo_tensor(torch.tensor([[0, 2, 2]]), torch.randn(3, 3), (6, 3))
        saved_sparse = sparse.clone()
        optimizer.update([0], [w], [sparse], [state])
        assert torch.equal(sparse.to_dense(), saved_sparse.to_dense())


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_mismatched_inputs_raise_before_writing(row: Row):
    optimizer = opt.create(row.name, **row.feature_kwargs)
    w = torch.randn(4, 3)
    state = optimizer.create_state(0, w)
    before = (w.clone(), [s.clone() for s in flatten_state(state)])
    bad = [
        (torch.randn(3, 4), ValueError, "shape"),
        (torch.randn(4, 3, dtype=torch.float64), ValueError, "dtype"),
        (torch.randn(4, 3, device="meta"), ValueError, "meta"),
        (np.ones((4, 3), np.float32), TypeError, "torch.Tensor"),
    ]
    for grad, exc, match in bad:
        with pytest.raises(exc, match=match):
            other = torch.randn((2,))
            optimizer.update([0, 1], [other, w], [torch.randn(other.shape), grad],
                             [optimizer.create_state(1, other), state])
        assert torch.equal(w, before[0])
        assert all(torch.equal(a, b) for a, b in zip(flatten_state(state), before[1]))
    with pytest.raises(ValueError, match="as many"):
        optimizer.update([0], [w, w], [w], [state])


# ---------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("row", [r for r in ROWS if r.multi_precision], ids=lambda r: r.name)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_multi_precision_follows_float32(row: Row, dtype):
    """A low-precision weight with a float32 master copy tracks a float32 run to the weight's precision."""
    arrays: dict = {}
    kwargs = {**row.feature_kwargs, "wd": row.wd(0.01)}
    case32 = make_case("f32", row.name, kwargs, steps=50, seed=5, arrays=arrays,
                       shapes=[(8, 5), (6,)])
    ref = run_case(case32, arrays)
    optimizer = opt.create(row.name, **kwargs, multi_precision=True)
    updater = opt.get_updater(optimizer)
    weights = [torch.from_numpy(arrays[f"f32/w0/{i}"]).to(dtype) for i in range(2)]
    masters = None
    for k in range(50):
        grads = [torch.from_numpy(arrays[f"f32/g/{k}/{i}"]).to(dtype) for i in range(2)]
        updater([0, 1], grads, weights)
        masters = [updater.states[i][0] for i in range(2)]
    eps = torch.finfo(dtype).eps
    for i in range(2):
        assert masters[i].dtype == torch.float32
        assert all(s.dtype == torch.float32 for s in flatten_state(updater.states[i]))
        assert torch.equal(weights[i], masters[i].to(dtype))
        # the master copy saw rounded gradients only: it stays within a few low-precision ulps of fp32
        np.testing.assert_allclose(masters[i].numpy(), ref[f"f32/w/{i}"], rtol=50 * eps, atol=50 * eps)


#: rules whose arithmetic torch cannot run in float16 on the CPU (SOAP's eigh): only the master-copy path
_NO_HALF_ARITHMETIC = {"soap"}


@pytest.mark.parametrize("row", [r for r in ROWS if r.multi_precision], ids=lambda r: r.name)
@pytest.mark.parametrize("impl", ["reference", "foreach", "auto"])
def test_update_steps_states_as_given_with_multi_precision(row: Row, impl):
    """``update`` (unlike ``update_multi_precision``) unwraps no master copy: with ``multi_precision=True`` a float16
    weight and the plain state ``create_state`` makes step exactly as without the flag, and the master-copy pair
    is refused with a ValueError naming its layout (not an AttributeError inside the rule)."""
    kwargs = {**row.feature_kwargs, "wd": row.wd(0.01), "impl": impl}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 accumulation's warning
        runs = []
        for multi_precision in (True, False) if row.name not in _NO_HALF_ARITHMETIC else ():
            optimizer = opt.create(row.name, **kwargs, multi_precision=multi_precision)
            gen = torch.Generator().manual_seed(3)
            weights = [torch.randn(shape, generator=gen).half() for shape in ((8, 5), (6,))]
            states = [optimizer.create_state(i, w) for i, w in enumerate(weights)]
            for _ in range(5):
                grads = [torch.randn(w.shape, generator=gen).half() for w in weights]
                optimizer.update([0, 1], weights, grads, states)
            runs.append(weights + [leaf for s in states for leaf in flatten_state(s)])
        for a, b in zip(*runs or [[], []]):  # bit for bit (float16 accumulation may overflow, Prodigy's: NaN where NaN)
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        optimizer = opt.create(row.name, **kwargs, multi_precision=True)
        w = torch.randn(8, 5).half()
        pair = optimizer.create_state_multi_precision(0, w)
        with pytest.raises(ValueError, match="state of parameter 0"):
            optimizer.update([0], [w], [torch.randn(8, 5).half()], [pair])


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_low_precision_without_master_copy_warns_once(row: Row):
    optimizer = opt.create(row.name, **row.feature_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.create_state_multi_precision(0, torch.zeros((3,), dtype=torch.float16))
        optimizer.create_state_multi_precision(1, torch.zeros((3,), dtype=torch.float16))
    assert sum("multi_precision" in str(w.message) for w in caught) == 1


# ---------------------------------------------------------------------------------------- sparse gradients
def _sparse_grad(rows, values, shape, coalesce=True):
    g = torch.sparse_coo_tensor(torch.tensor([rows]), values, shape)
    return g.coalesce() if coalesce else g


@pytest.mark.parametrize("row", [r for r in ROWS if r.sparse == "lazy"], ids=lambda r: r.name)
def test_lazy_update_touches_only_present_rows(row: Row):
    torch.manual_seed(1)
    optimizer = opt.create(row.name, **row.feature_kwargs, wd=row.wd(0.1), lazy_update=True)
    w = torch.randn(6, 3)
    state = optimizer.create_state(0, w)
    # warm the states so untouched rows have something that a dense update would change
    optimizer.update([0], [w], [torch.randn(6, 3)], [state])
    before_w, before_s = w.clone(), [s.clone() for s in flatten_state(state)]
    optimizer.update([0], [w], [_sparse_grad([1, 4], torch.randn(2, 3), (6, 3))], [state])
    untouched = [0, 2, 3, 5]
    assert torch.equal(w[untouched], before_w[untouched])
    assert not torch.equal(w[[1, 4]], before_w[[1, 4]])
    for s, b in zip(flatten_state(state), before_s):
        assert torch.equal(s[untouched], b[untouched])


@pytest.mark.parametrize("row", [r for r in ROWS if r.sparse != "none"], ids=lambda r: r.name)
@pytest.mark.parametrize("lazy", [True, False])
def test_duplicate_and_uncoalesced_indices_are_summed(row: Row, lazy):
    if lazy and row.sparse != "lazy":
        pytest.skip("no lazy update")
    kwargs = {**row.feature_kwargs, "wd": row.wd(0.05)}
    if row.sparse == "lazy":
        kwargs["lazy_update"] = lazy
    values = torch.randn(4, 3)
    dup = _sparse_grad([3, 1, 3, 0], values, (5, 3), coalesce=False)
    summed = torch.zeros(5, 3)
    summed.index_add_(0, torch.tensor([3, 1, 3, 0]), values)
    rows = [0, 1, 3]
    clean = _sparse_grad(rows, summed[rows], (5, 3))
    results = []
    for grad in (dup, clean):
        optimizer = opt.create(row.name, **kwargs)
        w = torch.linspace(-1, 1, 15).reshape(5, 3)
        state = optimizer.create_state(0, w)
        for _ in range(3):
            optimizer.update([0], [w], [grad], [state])
        results.append((w, flatten_state(state)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------- torch.optim face
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_torch_optimizer_matches_updater(row: Row):
    """The torch.optim adapter computes exactly what the MXNet-style Updater computes."""
    import optzoo

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    clone = copy.deepcopy(model)
    kwargs = {**row.feature_kwargs, "wd": row.wd(0.01)}
    torch_opt = optzoo.TorchOptimizer(model.parameters(), row.name, **kwargs)
    assert isinstance(torch_opt, torch.optim.Optimizer)
    updater = opt.get_updater(opt.create(row.name, **kwargs))
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(5):
        for net in (model, clone):
            net.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
        torch_opt.step()
        params = list(clone.parameters())
        updater(list(range(len(params))), [p.grad for p in params], [p.data for p in params])
    for a, b in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_torch_optimizer_state_dict_resumes_exactly(row: Row, tmp_path):
    import optzoo

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    kwargs = {**row.feature_kwargs}
    first = optzoo.TorchOptimizer(model.parameters(), row.name, **kwargs)
    x = torch.randn(8, 5)

    def train(net, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()

    train(model, first, 3)
    path = tmp_path / "opt.pt"
    torch.save({"model": model.state_dict(), "opt": first.state_dict()}, path)
    loaded = torch.load(path, weights_only=True)
    model2 = torch.nn.Linear(5, 3)
    model2.load_state_dict(loaded["model"])
    second = optzoo.TorchOptimizer(model2.parameters(), row.name, **kwargs)
    second.load_state_dict(loaded["opt"])
    train(model, first, 3)
    train(model2, second, 3)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------- it trains
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_trains_a_small_model_with_default_hyperparameters(row: Row):
    """Softmax regression on well-separated synthetic classes: 150 steps with the optimizer's defaults
    (through the Gluon-style Trainer) must cut the loss at least in half."""
    import optzoo

    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=generator) * 3
    labels = torch.arange(256) % 4
    x = centers[labels] + torch.randn(256, 8, generator=generator)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    trainer = optzoo.Trainer(model, row.name, dict(row.train_kwargs))
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    with torch.no_grad():
        first = loss_fn(model(x), labels).mean().item()
    for _ in range(150):
        loss = loss_fn(model(x), labels)
        loss.sum().backward()
        trainer.step(len(labels))
    with torch.no_grad():
        last = loss_fn(model(x), labels).mean().item()
    assert last < 0.5 * first, (first, last)
