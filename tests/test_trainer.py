"""optzoo.Trainer: Gluon 2.0 semantics on torch parameters (construction, step/update, gradient freshness,
grad_req write/add/null, per-parameter multipliers, the kvstore decision table). MXNet itself is compared in
tests/test_trainer_mxnet.py, checkpoints in tests/test_checkpoint.py."""

from __future__ import annotations

import gc
import math
import warnings

import pytest
import torch

from optzoo import lr_scheduler
from optzoo import optimizer as opt
from optzoo.trainer import LOCAL_KVSTORES, KVStoreDecision, StaleGradientError, Trainer, resolve_kvstore


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def batch(seed=1, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)


def backward(model, seed=1, n=5):
    x, y = batch(seed, n)
    ((model(x) - y) ** 2).sum().backward()


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------------------------------- parameters
def test_module_and_dict_are_ordered_by_name_as_gluon_orders_collect_params():
    model = make_model()
    expected = ("0.bias", "0.weight", "2.bias", "2.weight")
    assert Trainer(model, "sgd").param_names == expected
    assert Trainer(dict(model.named_parameters()), "sgd").param_names == expected
    trainer = Trainer(model, "sgd")
    assert trainer.optimizer.param_dict[1] is model[0].weight  # index i is the i-th name


def test_named_parameters_and_lists_keep_their_order():
    model = make_model()
    names = ("0.weight", "0.bias", "2.weight", "2.bias")
    assert Trainer(model.named_parameters(), "sgd").param_names == names
    assert Trainer(list(model.parameters()), "sgd").param_names == ("param0", "param1", "param2", "param3")
    assert Trainer(model.parameters(), "sgd").param_names == ("param0", "param1", "param2", "param3")


def test_shared_parameters_are_updated_once():
    a = torch.nn.Linear(3, 3, bias=False)
    tied = torch.nn.Sequential(a, a)  # the same module twice
    assert Trainer(tied, "sgd").param_names == ("0.weight",)
    w = a.weight
    trainer = Trainer({"b.shared": w, "a.shared": w, "c": torch.nn.Parameter(torch.ones(2))}, "sgd")
    assert trainer.param_names == ("a.shared", "c")  # sorted first, then de-duplicated
    assert Trainer([w, w], "sgd").param_names == ("param0",)

    before = w.detach().clone()
    tied(torch.ones(1, 3)).sum().backward()
    Trainer(tied, "sgd", {"learning_rate": 0.1}).step(1)
    assert torch.equal(w.detach(), before - 0.1 * w.grad)  # one update with the summed gradient


@pytest.mark.parametrize("params, error, match", [
    ([], ValueError, "params is empty"),
    ("weights", TypeError, "params must be"),
    (torch.ones(2, requires_grad=True), TypeError, "params must be"),
    (42, TypeError, "params must be"),
    ([torch.ones(2), 3.0], TypeError, "'param1' is a float"),
    ([{"params": []}], TypeError, "param groups"),
    ({1: torch.ones(2)}, TypeError, "names"),
    ([("a", torch.ones(2)), torch.ones(2)], TypeError, "not both"),
    ([("a", torch.ones(2)), ("a", torch.ones(2))], ValueError, "two different parameters are named 'a'"),
    ([torch.ones(2, dtype=torch.int64)], TypeError, "floating point"),
])
def test_bad_params_raise(params, error, match):
    with pytest.raises(error, match=match):
        Trainer(params, "sgd")


def test_non_leaf_parameter_raises():
    leaf = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="not a leaf"):
        Trainer([leaf * 2], "sgd")


# ---------------------------------------------------------------------------------------- optimizer argument
def test_named_optimizer_gets_params_and_param_dict():
    model = make_model()
    trainer = Trainer(model, "adam", {"learning_rate": 0.01, "wd": 0.1})
    assert isinstance(trainer.optimizer, opt.Adam)
    assert trainer.optimizer.lr == 0.01 and trainer.optimizer.wd == 0.1
    assert [trainer.optimizer.param_dict[i] for i in range(4)] == [model[0].bias, model[0].weight,
                                                                   model[2].bias, model[2].weight]


def test_optimizer_instance_is_used_and_bound():
    model = make_model()
    sgd = opt.SGD(learning_rate=0.3)
    trainer = Trainer(model, sgd, {})  # an empty dict is fine, as in Gluon
    assert trainer.optimizer is sgd and sgd.param_dict[0] is model[0].bias
    with pytest.raises(ValueError, match="optimizer_params must be empty"):
        Trainer(model, opt.SGD(), {"learning_rate": 0.1})


@pytest.mark.parametrize("optimizer, params, error, match", [
    ("adamm", None, ValueError, "unknown optimizer 'adamm'"),
    (3, None, TypeError, "optimizer must be"),
    ("sgd", [("learning_rate", 0.1)], TypeError, "optimizer_params must be a dict"),
    ("sgd", {"param_dict": {}}, ValueError, "param_dict"),
    ("sgd", {"learning_rte": 0.1}, TypeError, "did you mean 'learning_rate'"),
    ("sgd", {"learning_rate": -1.0}, ValueError, "learning_rate"),
])
def test_bad_optimizer_arguments_raise(optimizer, params, error, match):
    with pytest.raises(error, match=match):
        Trainer(make_model(), optimizer, params)


def test_torch_optimizer_is_refused():
    model = make_model()
    with pytest.raises(TypeError, match="torch.optim"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_learning_rate_and_set_learning_rate():
    trainer = Trainer(make_model(), "sgd", {"learning_rate": 0.1})
    assert trainer.learning_rate == 0.1
    trainer.set_learning_rate(0.05)
    assert trainer.learning_rate == trainer.optimizer.lr == 0.05
    with pytest.raises(ValueError, match="learning_rate"):
        trainer.set_learning_rate(-1)
    scheduled = Trainer(make_model(), "sgd", {"lr_scheduler": lr_scheduler.FactorScheduler(step=1, factor=0.5,
                                                                                          base_lr=1.0)})
    assert scheduled.learning_rate == 1.0
    with pytest.raises(ValueError, match="lr_scheduler"):
        scheduled.set_learning_rate(0.1)


# ---------------------------------------------------------------------------------------- step semantics
def test_step_is_the_updater_with_rescale_scale_over_batch_size():
    """step(batch) == get_updater(optimizer)(indices, grads, weights) with rescale_grad = scale / batch."""
    model, reference = make_model(), make_model()
    trainer = Trainer(model, "adam", {"learning_rate": 0.01, "wd": 0.1, "rescale_grad": 2.0})
    ref_opt = opt.create("adam", learning_rate=0.01, wd=0.1, rescale_grad=2.0 / 5)
    updater = opt.get_updater(ref_opt)
    names = trainer.param_names
    ref_params = dict(reference.named_parameters())
    for step in range(4):
        backward(model, seed=step)
        trainer.step(5)
        reference.zero_grad()
        backward(reference, seed=step)
        with torch.no_grad():
            updater(list(range(4)), [ref_params[n].grad for n in names], [ref_params[n] for n in names])
    assert trainer.optimizer.rescale_grad == 2.0 / 5  # scale captured once: not compounded step after step
    for name, p in model.named_parameters():
        assert torch.equal(p, ref_params[name]), name


def test_allreduce_grads_plus_update_equals_step():
    a, b = make_model(), make_model()
    ta, tb = Trainer(a, "nag", {"momentum": 0.9}), Trainer(b, "nag", {"momentum": 0.9})
    for step in range(3):
        backward(a, seed=step)
        backward(b, seed=step)
        ta.step(5)
        tb.allreduce_grads()
        tb.update(5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-2, ValueError), (math.nan, ValueError),
                                               (math.inf, ValueError), ("8", TypeError), (True, TypeError)])
def test_bad_batch_size_raises(batch_size, error):
    model = make_model()
    trainer = Trainer(model, "sgd")
    backward(model)
    with pytest.raises(error, match="batch_size"):
        trainer.step(batch_size)
    with pytest.raises(error, match="batch_size"):
        trainer.update(batch_size)


def test_ignore_stale_grad_must_be_bool():
    model = make_model()
    backward(model)
    with pytest.raises(TypeError, match="ignore_stale_grad"):
        Trainer(model, "sgd").step(1, ignore_stale_grad="yes")


def test_lr_mult_and_wd_mult_attributes_are_read_live():
    w = torch.nn.Parameter(torch.ones(3))
    trainer = Trainer([("w", w)], "sgd", {"learning_rate": 0.5, "wd": 0.1})

    def one_step():
        before = w.detach().clone()
        (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        trainer.step(2)
        return before, w.grad

    before, grad = one_step()
    assert torch.allclose(w.detach(), before - 0.5 * (grad / 2 + 0.1 * before))
    w.lr_mult, w.wd_mult = 0.2, 0.0  # set after construction: seen at the next update
    before, grad = one_step()
    assert torch.allclose(w.detach(), before - 0.5 * 0.2 * (grad / 2))
    w.lr_mult = float("nan")
    (w * 1.0).sum().backward()
    with pytest.raises(ValueError, match="lr_mult of parameter 'w'"):
        trainer.step(1)


def test_frozen_parameters_are_skipped_and_can_be_unfrozen_later():
    model = make_model()
    model[0].weight.requires_grad_(False)
    model[2].bias.grad_req = "null"  # Gluon's spelling works too
    trainer = Trainer(model, "sgd", {"learning_rate": 0.1})
    frozen = model[0].weight.detach().clone()
    null_bias = model[2].bias.detach().clone()
    backward(model)
    trainer.step(5)
    assert torch.equal(model[0].weight, frozen) and torch.equal(model[2].bias, null_bias)
    counts = trainer.optimizer._index_update_count
    assert 1 not in counts and 2 not in counts and counts[0] == counts[3] == 1

    model[0].weight.requires_grad_(True)  # unfreeze: watched from the next step on
    backward(model, seed=2)
    trainer.step(5)
    assert not torch.equal(model[0].weight, frozen)
    assert counts[1] == 1 and counts[0] == 2
    backward(model, seed=3)
    grad = model[0].weight.grad.clone()
    model[0].weight.grad = None
    backward(model, seed=3)  # write semantics now apply to it as well
    assert torch.equal(model[0].weight.grad, grad)


# ---------------------------------------------------------------------------------------- gradients
def test_write_backward_overwrites():
    """Gluon's default: every backward replaces the gradient (also the one left from the last step)."""
    model = make_model()
    trainer = Trainer(model, "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    backward(model, seed=10)
    first = [p.grad.clone() for p in model.parameters()]
    backward(model, seed=11)
    backward(model, seed=10)  # two backwards since the last step: the last one wins
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), first))
    trainer.step(5)
    backward(model, seed=10)  # after the step: replaced, not added to the old gradient
    model_copy = make_model()
    with torch.no_grad():
        for p, q in zip(model_copy.parameters(), model.parameters()):
            p.copy_(q)
    backward(model_copy, seed=10)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), model_copy.parameters()))


def test_write_matches_a_torch_loop_with_zero_grad():
    ours, ref = make_model(), make_model()
    trainer = Trainer(ours, "sgd", {"learning_rate": 0.1})
    ref_trainer = Trainer(ref, "sgd", {"learning_rate": 0.1}, grad_req="add")
    for step in range(4):
        backward(ours, seed=step)
        trainer.step(5)
        ref_trainer.zero_grad()
        backward(ref, seed=step)
        ref_trainer.step(5)
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_add_accumulates_until_zero_grad():
    model = make_model()
    trainer = Trainer(model, "sgd", {"learning_rate": 0.1}, grad_req="add")
    backward(model, seed=1)
    g1 = model[0].weight.grad.clone()
    backward(model, seed=2)
    g12 = model[0].weight.grad.clone()
    model.zero_grad()
    backward(model, seed=2)
    assert torch.allclose(g12, g1 + model[0].weight.grad)
    trainer.step(5)
    trainer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    backward(model, seed=3)
    trainer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    with pytest.raises(TypeError, match="set_to_none"):
        trainer.zero_grad(set_to_none=None)


def test_grad_req_attribute_overrides_the_trainer_argument():
    model = make_model()
    model[0].weight.grad_req = "add"
    trainer = Trainer(model, "sgd")
    backward(model, seed=1)
    once_w, once_b = model[0].weight.grad.clone(), model[0].bias.grad.clone()
    backward(model, seed=1)
    assert torch.allclose(model[0].weight.grad, 2 * once_w)  # 'add' on this parameter
    assert torch.equal(model[0].bias.grad, once_b)  # 'write' (the Trainer's default) elsewhere
    trainer.step(5)
    model[0].weight.grad_req = "write"  # read live
    backward(model, seed=1)
    fresh = model[0].weight.grad.clone()
    backward(model, seed=1)
    assert torch.equal(model[0].weight.grad, fresh)


def test_bad_grad_req_raises():
    with pytest.raises(ValueError, match="grad_req"):
        Trainer(make_model(), "sgd", grad_req="null")
    with pytest.raises(ValueError, match="grad_req"):
        Trainer(make_model(), "sgd", grad_req="overwrite")
    model = make_model()
    model[0].bias.grad_req = "sometimes"
    trainer = Trainer(model, "sgd")
    with pytest.raises(ValueError, match="parameter '0.bias': grad_req"):
        trainer.step(1)


def test_autograd_grad_does_not_disturb_gradients():
    """torch.autograd.grad (e.g. a gradient penalty) neither clears nor freshens .grad."""
    model = make_model()
    trainer = Trainer(model, "sgd")
    backward(model, seed=1)
    grad = model[0].weight.grad.clone()
    x, y = batch(5)
    torch.autograd.grad(((model(x) - y) ** 2).sum(), model[0].weight)
    assert torch.equal(model[0].weight.grad, grad)
    trainer.step(5)
    torch.autograd.grad(((model(x) - y) ** 2).sum(), list(model.parameters()))
    with pytest.raises(StaleGradientError):
        trainer.step(5)


# ---------------------------------------------------------------------------------------- stale gradients
def test_step_without_backward_raises_and_changes_nothing():
    model = make_model()
    trainer = Trainer(model, "adam")
    with pytest.raises(StaleGradientError, match="'0.bias' \\(no gradient\\)"):
        trainer.step(1)
    backward(model)
    trainer.step(5)
    before = snapshot(model)
    with pytest.raises(StaleGradientError, match="not been updated by backward since the last step") as info:
        trainer.step(5)
    assert info.value.names == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, UserWarning)  # what Gluon raises: ported except clauses keep working
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())
    assert trainer.optimizer.num_update == 1


def test_partially_used_model_names_only_the_unused_parameter():
    model = torch.nn.ModuleDict({"body": make_model(), "head": torch.nn.Linear(2, 2)})
    trainer = Trainer(model, "sgd")
    backward(model["body"])  # the head is not used
    with pytest.raises(StaleGradientError) as info:
        trainer.step(5)
    assert info.value.names == ["head.bias", "head.weight"]


def test_ignore_stale_grad_skips_exactly_the_stale_parameters():
    model = make_model()
    trainer = Trainer(model, "adam", {"learning_rate": 0.01})
    backward(model, seed=1)
    trainer.step(5)
    x, _ = batch(2)
    model[0](x).sum().backward()  # only the first layer gets a gradient
    before = snapshot(model)
    trainer.step(5, ignore_stale_grad=True)
    counts = trainer.optimizer._index_update_count
    assert [counts[i] for i in range(4)] == [2, 2, 1, 1]  # 0.bias, 0.weight advanced; 2.* did not
    assert torch.equal(model[2].weight, before["2.weight"]) and torch.equal(model[2].bias, before["2.bias"])
    assert not torch.equal(model[0].weight, before["0.weight"])
    trainer.step(5, ignore_stale_grad=True)  # everything stale now: nothing happens
    assert [counts[i] for i in range(4)] == [2, 2, 1, 1]


def test_zeroed_to_none_gradient_is_stale():
    model = make_model()
    trainer = Trainer(model, "sgd")
    backward(model)
    trainer.zero_grad()
    with pytest.raises(StaleGradientError, match="no gradient"):
        trainer.step(5)


def test_gradient_from_before_the_trainer_counts_as_fresh():
    model = make_model()
    backward(model)  # Gluon flags freshness at backward time, before any Trainer exists
    Trainer(model, "sgd").step(5)


# ---------------------------------------------------------------------------------------- hooks lifetime
def test_hooks_survive_garbage_collection_and_die_with_the_trainer():
    model = make_model()
    trainer = Trainer(model, "sgd")
    gc.collect()
    backward(model, seed=1)
    g = model[0].weight.grad.clone()
    backward(model, seed=1)
    assert torch.equal(model[0].weight.grad, g)  # still 'write'
    trainer.step(5)
    del trainer
    gc.collect()
    model.zero_grad()
    backward(model, seed=1)
    g = model[0].weight.grad.clone()
    backward(model, seed=1)
    assert torch.allclose(model[0].weight.grad, 2 * g)  # plain torch accumulation again


def test_two_trainers_track_freshness_separately():
    model = make_model()
    first = Trainer(list(model[0].parameters()), "sgd")
    second = Trainer(list(model[2].parameters()), "sgd")
    backward(model)
    first.step(5)
    second.step(5)
    with pytest.raises(StaleGradientError):
        first.step(5)


# ---------------------------------------------------------------------------------------- other tensor kinds
def test_sparse_embedding_gradients():
    torch.manual_seed(0)
    sparse, dense = torch.nn.Embedding(10, 3, sparse=True), torch.nn.Embedding(10, 3)
    dense.weight.data.copy_(sparse.weight.data)
    ts = Trainer(sparse, "sgd", {"learning_rate": 0.1, "wd": 0.01})
    td = Trainer(dense, "sgd", {"learning_rate": 0.1, "wd": 0.01})
    for step in range(3):
        idx = torch.tensor([step, 4, 4, 7])
        sparse(idx).pow(2).sum().backward()
        dense(idx).pow(2).sum().backward()
        assert sparse.weight.grad.is_sparse
        ts.step(4)
        td.step(4)
    assert torch.allclose(sparse.weight, dense.weight, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_multi_precision_low_precision_parameters(dtype):
    """The float32 master copies follow float32 Adam fed the same (low-precision) gradients, to float32 rounding
    (a master copy re-read from the rounded weight would be off by a float16/bfloat16 ulp, 1e-3..1e-2), and every
    low-precision weight is its master copy rounded once."""
    model = make_model().to(dtype)
    trainer = Trainer(model, "adam", {"learning_rate": 0.01, "multi_precision": True})
    params = list(trainer._params)  # in the Trainer's index order
    masters = [p.detach().float().clone() for p in params]  # float32 Adam on the same start and gradients
    reference = opt.get_updater(opt.create("adam", learning_rate=0.01, rescale_grad=1 / 5, impl="reference"))
    for step in range(5):
        x, y = batch(step)
        ((model(x.to(dtype)) - y.to(dtype)) ** 2).sum().backward()
        reference(list(range(len(params))), [p.grad.float() for p in params], masters)
        trainer.step(5)
    for i, (p, want) in enumerate(zip(params, masters)):
        master, (mean, var) = trainer._updater.states[i]
        assert master.dtype == mean.dtype == var.dtype == torch.float32
        torch.testing.assert_close(master, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mean, reference.states[i].mean, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(var, reference.states[i].var, rtol=1e-5, atol=1e-9)
        assert torch.equal(p, master.to(dtype))


# ---------------------------------------------------------------------------------------- kvstore decision
@pytest.mark.parametrize("kvstore", [None, *LOCAL_KVSTORES, "Device"])
def test_kvstore_row_single_device_creates_no_kvstore(kvstore):
    assert resolve_kvstore(kvstore, 1, None, 1) == KVStoreDecision(None, False, False)


def test_kvstore_row_user_update_on_kvstore_is_moot_without_a_kvstore():
    assert resolve_kvstore("local", 1, True, 1) == KVStoreDecision(None, False, False)
    assert resolve_kvstore(None, 1, False, 1) == KVStoreDecision(None, False, False)


def test_kvstore_row_aggregation_means_update_on_kvstore_false():
    assert resolve_kvstore("device", 1, None, 4).update_on_kvstore is False
    assert resolve_kvstore("device", 1, False, math.inf).update_on_kvstore is False
    with pytest.raises(ValueError, match="update_on_kvstore=True cannot be used with aggregated updates"):
        resolve_kvstore("device", 1, True, 4)
    with pytest.raises(ValueError, match="aggregate_num"):
        Trainer(make_model(), "sgd", {"aggregate_num": 4}, update_on_kvstore=True)
    Trainer(make_model(), "sgd", {"aggregate_num": 4}, update_on_kvstore=False)


@pytest.fixture
def one_process_group(monkeypatch):
    """A world of one gloo process (no network), torn down after the test."""
    import torch.distributed as dist

    from optzoo import kvstore as kvs

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield kvs
    dist.destroy_process_group()


@pytest.mark.parametrize("kvstore", ["dist_sync", "dist_async", "dist_device_sync", "DIST_SYNC"])
def test_kvstore_row_distributed_needs_a_process_group(kvstore, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="torch.distributed process group.*torchrun"):
        resolve_kvstore(kvstore, 1, None, 1)
    with pytest.raises(RuntimeError, match="torchrun"):
        Trainer(make_model(), "sgd", kvstore=kvstore)


@pytest.mark.parametrize("kvstore, update_on_kvstore, aggregate_num, expected", [
    ("dist_sync", None, 1, True),            # Gluon default: update on the kvstore
    ("dist_sync", False, 1, False),
    ("DIST_SYNC", True, 1, True),
    ("dist_device_sync", None, 1, True),
    ("dist_sync", None, 4, False),           # aggregated updates run in the Trainer
    ("dist_async", None, 1, True),
    ("dist_async", True, 1, True),
])
def test_kvstore_row_distributed(one_process_group, kvstore, update_on_kvstore, aggregate_num, expected):
    decision = resolve_kvstore(kvstore, 1, update_on_kvstore, aggregate_num)
    assert decision.distributed and decision.update_on_kvstore is expected
    assert decision.kvstore.type == kvstore.lower() and decision.kvstore.num_workers == 1


def test_kvstore_row_update_on_kvstore_env_default(one_process_group, monkeypatch):
    monkeypatch.setenv("MXNET_UPDATE_ON_KVSTORE", "0")
    assert resolve_kvstore("dist_sync", 1, None, 1).update_on_kvstore is False
    assert resolve_kvstore("dist_sync", 1, True, 1).update_on_kvstore is True
    assert resolve_kvstore("dist_async", 1, None, 1).update_on_kvstore is True  # async forces it


@pytest.mark.parametrize("update_on_kvstore, aggregate_num, match", [
    (False, 1, "dist_async' needs update_on_kvstore=True.*update_on_kvstore=False was given"),
    (None, 4, "dist_async' needs update_on_kvstore=True.*aggregate_num"),
])
def test_kvstore_row_async_needs_update_on_kvstore(one_process_group, update_on_kvstore, aggregate_num, match):
    with pytest.raises(ValueError, match=match):
        resolve_kvstore("dist_async", 1, update_on_kvstore, aggregate_num)


def test_kvstore_row_dist_sync_in_one_process_trains_like_no_kvstore(one_process_group):
    for update_on_kvstore in (True, False):
        plain, dist_model = make_model(), make_model()
        t1 = Trainer(plain, "adam", {"learning_rate": 0.01})
        t2 = Trainer(dist_model, "adam", {"learning_rate": 0.01}, kvstore="dist_sync",
                     update_on_kvstore=update_on_kvstore)
        assert (t2.kvstore.num_workers, t2.kvstore.rank, t2.kvstore.type) == (1, 0, "dist_sync")
        for step in range(3):
            backward(plain, step)
            backward(dist_model, step)
            t1.step(5)
            t2.step(5)
        for a, b in zip(plain.parameters(), dist_model.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        if update_on_kvstore:
            with pytest.raises(ValueError, match="update_on_kvstore=True"):
                t2.update(5)
            with pytest.raises(ValueError, match="update_on_kvstore=True"):
                t2.allreduce_grads()


def test_kvstore_row_distributed_update_on_kvstore_fixes_the_batch_size(one_process_group):
    model = make_model()
    trainer = Trainer(model, "sgd", kvstore="dist_sync")
    backward(model)
    trainer.step(5)
    backward(model)
    with pytest.raises(UserWarning, match="Possible change in the `batch_size`"):
        trainer.step(4)
    trainer = Trainer(model, "sgd", kvstore="dist_sync", update_on_kvstore=False)
    for n in (5, 4):  # updates in the Trainer: the batch size may change
        backward(model)
        trainer.step(n)


@pytest.mark.parametrize("kvstore", ["horovod", "byteps"])
def test_kvstore_row_plugins_are_not_available(kvstore):
    with pytest.raises(ValueError, match="Horovod/BytePS plugin.*dist_sync"):
        resolve_kvstore(kvstore, 1, None, 1)


def test_kvstore_row_several_devices_create_a_local_kvstore():
    decision = resolve_kvstore("device", 2, None, 1)
    assert decision.kvstore.type == "device" and decision.update_on_kvstore and not decision.distributed
    assert resolve_kvstore("local", 2, False, 1).update_on_kvstore is False


def test_kvstore_row_kvstore_object_is_used():
    from optzoo import kvstore as kvs

    store = kvs.create("local")
    assert resolve_kvstore(store, 1, None, 1) == KVStoreDecision(store, True, False)
    with pytest.raises(ValueError, match="not supported for this type of kvstore"):
        resolve_kvstore(store, 1, None, 1, {"type": "2bit"})

    class MyKVStore:
        type = "local"

    with pytest.raises(TypeError, match="kvstore must be a string, an optzoo.kvstore KVStore object"):
        resolve_kvstore(MyKVStore(), 1, None, 1)


@pytest.mark.parametrize("kvstore, update_on_kvstore, error, match", [
    ("bogus", None, ValueError, "kvstore must be one of"),
    (3, None, TypeError, "kvstore must be a string"),
    (True, None, TypeError, "kvstore must be a string"),
    ("device", "yes", TypeError, "update_on_kvstore"),
    ("device", 1, TypeError, "update_on_kvstore"),
])
def test_kvstore_row_invalid_arguments(kvstore, update_on_kvstore, error, match):
    with pytest.raises(error, match=match):
        resolve_kvstore(kvstore, 1, update_on_kvstore, 1)
    with pytest.raises(error, match=match):
        Trainer(make_model(), "sgd", kvstore=kvstore, update_on_kvstore=update_on_kvstore)


def test_kvstore_row_compression_is_unused_on_a_single_device():
    with pytest.warns(UserWarning, match="compression_params have no effect"):
        trainer = Trainer(make_model(), "sgd", compression_params={"type": "2bit", "threshold": 0.5})
    assert trainer._kvstore is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_kvstore(None, 1, None, 1, {"type": "1bit"})  # no kvstore asked for: nothing to warn about


@pytest.mark.parametrize("compression, error, match", [
    ("2bit", TypeError, "compression_params must be a dict"),
    ({}, ValueError, "needs a 'type'"),
    ({"type": "4bit"}, ValueError, "compression_params\\['type'\\] must be one of"),
    ({"type": "2bit", "threshold": 0}, ValueError, "threshold"),
    ({"type": "2bit", "threshold": math.nan}, ValueError, "threshold"),
    ({"type": "2bit", "threshold": "0.5"}, TypeError, "threshold"),
    ({"type": "2bit", "thresold": 0.5}, ValueError, "unknown key"),
])
def test_kvstore_row_bad_compression_params(compression, error, match):
    with pytest.raises(error, match=match):
        resolve_kvstore("device", 1, None, 1, compression)


def test_one_bit_compression_accepts_any_threshold():
    resolve_kvstore(None, 1, None, 1, {"type": "1bit", "threshold": -0.5})  # MXNet 2.0 has no check for 1bit


def test_repr_names_optimizer():
    assert "SGD(" in repr(Trainer(make_model(), "sgd"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_parameters_train_like_cpu():
    cpu, gpu = make_model(), make_model().cuda()
    tc, tg = Trainer(cpu, "adam", {"learning_rate": 0.01}), Trainer(gpu, "adam", {"learning_rate": 0.01})
    for step in range(5):
        x, y = batch(step)
        ((cpu(x) - y) ** 2).sum().backward()
        ((gpu(x.cuda()) - y.cuda()) ** 2).sum().backward()
        tc.step(5)
        tg.step(5)
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        assert torch.allclose(p, q.cpu(), rtol=1e-5, atol=1e-6)


def test_gluon_style_example_learns_digits(capsys):
    """examples/gluon_style.py (the README's main example) runs, its loss goes down, its accuracy is high."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parents[1] / "examples" / "gluon_style.py"
    spec = importlib.util.spec_from_file_location("gluon_style", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    threads = torch.get_num_threads()
    try:
        accuracy = example.main()
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    losses = [float(line.split()[3]) for line in lines if line.startswith("epoch")]
    assert len(losses) == 10 and losses[-1] < 0.1 * losses[0]
    assert accuracy > 0.95


def test_write_semantics_survive_a_dtype_change_after_construction():
    """Casting the model after building the Trainer gives its parameters new AccumulateGrad nodes."""
    model = make_model()
    trainer = Trainer(model, "sgd", {"learning_rate": 0.1})
    backward(model, seed=1)
    trainer.step(5)  # a gradient exists and is moved along by the cast
    model.double()
    x, y = batch(2)
    ((model(x.double()) - y.double()) ** 2).sum().backward()
    once = model[0].weight.grad.clone()
    model[0].weight.grad = None
    ((model(x.double()) - y.double()) ** 2).sum().backward()
    assert torch.equal(model[0].weight.grad, once)  # the first backward after the cast replaced the old grad
    ((model(x.double()) - y.double()) ** 2).sum().backward()
    assert torch.equal(model[0].weight.grad, once)  # and so does the next one
    trainer.step(5)


def test_backward_on_the_parameter_itself_supplies_a_gradient():
    """A gradient computed elsewhere goes in through backward (a hand-assigned p.grad is not fresh)."""
    w = torch.nn.Parameter(torch.zeros(3))
    trainer = Trainer([("w", w)], "sgd", {"learning_rate": 1.0})
    w.grad = torch.ones(3)
    with pytest.raises(StaleGradientError, match="'w'"):
        trainer.step(1)
    w.backward(torch.full((3,), 2.0))
    trainer.step(1)
    assert torch.equal(w.detach(), torch.full((3,), -2.0))  # replaced the hand-assigned ones ('write')


def test_kvstore_property_is_none_in_one_process():
    trainer = Trainer(torch.nn.Linear(2, 1), "sgd")
    assert trainer.kvstore is None
