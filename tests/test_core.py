"""Base-class semantics that no single optimizer owns: registry, custom optimizers written as the guide
describes, update counting, lr/wd multipliers, schedulers, and the torch.optim face."""

from __future__ import annotations

import math

import pytest
import torch
from optimizer_table import ROWS

import optzoo
from optzoo import lr_scheduler
from optzoo import optimizer as opt


# ---------------------------------------------------------------------------------------- registry
def test_every_registered_optimizer_has_a_table_row():
    assert sorted(opt.Optimizer.opt_registry) == sorted(row.name for row in ROWS)


def test_unknown_name_lists_registered_optimizers():
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'.*adam.*sgd"):
        opt.create("adamm")
    with pytest.raises(TypeError, match="string"):
        opt.create(3)


def test_register_refuses_a_different_class_under_a_taken_name():
    class SGD(opt.Optimizer):
        pass

    with pytest.raises(ValueError, match="already registered"):
        opt.register(SGD)
    with pytest.raises(TypeError, match="subclass"):
        opt.register(int)


def test_create_passes_instances_through_and_rejects_extra_kwargs():
    instance = opt.SGD()
    assert opt.create(instance) is instance
    with pytest.raises(ValueError, match="instance"):
        opt.create(instance, learning_rate=1.0)


# ---------------------------------------------------------------------------------------- custom optimizers
def _custom_classes():
    """The guide's recipe: subclass, __init__, create_state, update (1.x style) or step (2.0 style), @register."""

    @opt.register
    class MyMomentum(opt.Optimizer):
        def __init__(self, learning_rate=0.1, momentum=0.5, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.momentum = momentum

        def create_state(self, index, weight):
            return torch.zeros_like(weight)

        def update(self, index, weight, grad, state):
            self._update_count(index)
            lr = self._get_lr(index)
            wd = self._get_wd(index)
            state.mul_(self.momentum).add_(grad * self.rescale_grad + wd * weight)
            weight.sub_(lr * state)

    @opt.register
    class MyMomentumStep(opt.Optimizer):
        def __init__(self, learning_rate=0.1, momentum=0.5, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.momentum = momentum

        def create_state(self, index, weight):
            return torch.zeros_like(weight)

        def step(self, indices, weights, grads, states):
            for index, weight, grad, state in zip(indices, weights, grads, states):
                self._update_count(index)
                lr, wd = self._get_lr(index), self._get_wd(index)
                state.mul_(self.momentum).add_(grad * self.rescale_grad + wd * weight)
                weight.sub_(lr * state)

    return MyMomentum, MyMomentumStep


def test_custom_optimizers_from_the_guide_work():
    classes = _custom_classes()
    try:
        results = []
        for klass in classes:
            optimizer = opt.create(klass.__name__, wd=0.1, learning_rate=0.2)
            assert optimizer.impl == "reference"
            updater = opt.get_updater(optimizer)
            w = [torch.ones(3), torch.full((2,), 2.0)]
            for k in range(4):
                updater([0, 1], [torch.full((3,), float(k)), torch.ones(2)], w)
            results.append([x.clone() for x in w])
            assert optimizer.num_update == 4
        # hand-computed momentum SGD for the first tensor
        w, m = torch.ones(3), torch.zeros(3)
        for k in range(4):
            m = 0.5 * m + (k + 0.1 * w)
            w = w - 0.2 * m
        for res in results:
            torch.testing.assert_close(res[0], w)
        torch.testing.assert_close(results[0][1], results[1][1])
    finally:
        for klass in classes:
            opt.Optimizer.opt_registry.pop(klass.__name__.lower(), None)


# ---------------------------------------------------------------------------------------- bookkeeping
def test_update_counts_are_per_index_and_num_update_is_their_max():
    optimizer = opt.SGD(learning_rate=0.1, begin_num_update=3)
    updater = opt.get_updater(optimizer)
    a, b = torch.zeros(2), torch.zeros(2)
    updater([0, 1], [torch.ones(2)] * 2, [a, b])
    updater(0, torch.ones(2), a)
    assert optimizer._index_update_count == {0: 5, 1: 4}
    assert optimizer.num_update == 5


def test_multiplier_precedence_param_dict_then_index_then_name():
    class P:
        lr_mult = 0.25
        wd_mult = 4.0

    optimizer = opt.SGD(learning_rate=1.0, wd=0.1, param_idx2name={0: "fc_bias", 1: "fc_weight", 2: "x"},
                        param_dict={2: P()})
    optimizer.set_lr_mult({"fc_bias": 0.5, 1: 3.0, "fc_weight": 7.0, "x": 9.0})
    optimizer.set_wd_mult({"fc_bias": 0.0})
    assert optimizer._get_lrs([0, 1, 2, 3]) == [0.5, 3.0, 0.25, 1.0]
    assert optimizer._get_wds([0, 1, 2, 3]) == [0.0, 0.1, pytest.approx(0.4), 0.1]
    P.lr_mult = 2.0  # read live, as Gluon's Parameter attributes
    assert optimizer._get_lr(2) == 2.0
    with pytest.raises(ValueError, match="set_lr_mult"):
        optimizer.set_lr_mult({0: -1.0})
    with pytest.raises(TypeError, match="dict"):
        optimizer.set_wd_mult([1.0])


def test_scheduler_sees_num_update_after_counting():
    seen = []

    def schedule(n):
        seen.append(n)
        return 0.1

    optimizer = opt.SGD(lr_scheduler=schedule)
    updater = opt.get_updater(optimizer)
    w = torch.zeros(2)
    for _ in range(3):
        updater(0, torch.ones(2), w)
    assert seen == [1, 2, 3]
    with pytest.raises(ValueError, match="lr_scheduler"):
        optimizer.set_learning_rate(0.5)


def test_explicit_learning_rate_rescales_the_whole_schedule():
    sched = lr_scheduler.CosineScheduler(max_update=10, base_lr=1.0, warmup_steps=2)
    optimizer = opt.Adam(learning_rate=0.5, lr_scheduler=sched)
    assert sched.base_lr == 0.5
    assert optimizer.learning_rate == pytest.approx(0.0)  # num_update 0: start of warmup
    no_lr = opt.Adam(lr_scheduler=lr_scheduler.FactorScheduler(step=1, base_lr=0.3))
    assert no_lr.lr_scheduler.base_lr == 0.3  # unlike MXNet 2.0, the optimizer default does not override it


def test_one_x_style_update_with_bare_index_and_tensors():
    optimizer = opt.SGD(learning_rate=0.5, momentum=0.0)
    w = torch.ones(3)
    optimizer.update(0, w, torch.ones(3), None)
    torch.testing.assert_close(w, torch.full((3,), 0.5))


def test_clip_is_applied_to_the_rescaled_gradient():
    optimizer = opt.SGD(learning_rate=1.0, rescale_grad=0.1, clip_gradient=0.5, wd=0.1)
    w = torch.ones(2)
    optimizer.update(0, w, torch.tensor([10.0, -10.0]), None)
    # MXNet V1/V34: clip(0.1 * 10) = 0.5; weight decay is not clipped
    torch.testing.assert_close(w, torch.tensor([1 - 0.1 - 0.5, 1 - 0.1 + 0.5]))


# ---------------------------------------------------------------------------------------- torch.optim face
def _loop(model, optimizer, steps, scaler=None, scheduler=None):
    torch.manual_seed(1)
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def test_torch_lr_scheduler_drives_group_lr():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    optimizer = optzoo.TorchOptimizer(model.parameters(), "sgd", learning_rate=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.1)
    losses = _loop(model, optimizer, 12, scheduler=scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1**2)
    assert losses[-1] < losses[0]


def test_group_lr_equals_optimizer_learning_rate_semantics():
    """Changing group['lr'] mid-run equals set_learning_rate on the MXNet-style optimizer."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    torch_opt = optzoo.TorchOptimizer(a.parameters(), "nag", learning_rate=0.1)
    native = opt.NAG(learning_rate=0.1)
    updater = opt.get_updater(native)
    x = torch.randn(4, 3)
    for k in range(6):
        if k == 3:
            torch_opt.param_groups[0]["lr"] = 0.02
            native.set_learning_rate(0.02)
        for net in (a, b):
            net.zero_grad()
            net(x).square().sum().backward()
        torch_opt.step()
        params = list(b.parameters())
        updater(list(range(len(params))), [p.grad for p in params], [p.data for p in params])
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_param_groups_and_multipliers():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    model.bias.lr_mult = 0.0
    optimizer = optzoo.TorchOptimizer([{"params": [model.weight], "wd": 0.5}, {"params": [model.bias]}],
                                      "sgd", learning_rate=0.1)
    bias = model.bias.detach().clone()
    _loop(model, optimizer, 3)
    assert torch.equal(model.bias, bias)
    assert optimizer.param_groups[0]["wd"] == 0.5 and optimizer.param_groups[1]["wd"] == 0.0
    with pytest.raises(ValueError, match="lr"):
        optzoo.TorchOptimizer([{"params": [model.weight], "lr": -1.0}], "sgd")
    with pytest.raises(ValueError, match="instance"):
        optzoo.TorchOptimizer(model.parameters(), opt.SGD(), learning_rate=0.1)


def test_grad_scaler_skips_steps_with_infinite_gradients():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    optimizer = optzoo.TorchOptimizer(model.parameters(), "adam", learning_rate=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)  # the scaled gradients overflow float32
    before = [p.detach().clone() for p in model.parameters()]
    _loop(model, optimizer, 1, scaler=scaler)
    after_overflow = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after_overflow))
    assert optimizer.optimizer.num_update == 0
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    losses = _loop(model, optimizer, 20, scaler=scaler)
    assert optimizer.optimizer.num_update == 20
    assert losses[-1] < losses[0]


def test_multi_precision_through_the_torch_face_keeps_float32_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).to(torch.bfloat16)
    optimizer = optzoo.TorchOptimizer(model.parameters(), "adam", learning_rate=0.01, multi_precision=True)
    x = torch.randn(8, 4, dtype=torch.bfloat16)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).float().square().mean().backward()
        optimizer.step()
    state = optimizer.state[model.weight]["state"]
    assert state[0].dtype == torch.float32 and state[1].mean.dtype == torch.float32
    assert torch.equal(model.weight, state[0].to(torch.bfloat16))
    restored = optzoo.TorchOptimizer(model.parameters(), "adam", learning_rate=0.01, multi_precision=True)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.state[model.weight]["state"][0].dtype == torch.float32
    assert restored.optimizer.num_update == 3 and math.isclose(restored.param_groups[0]["lr"], 0.01)


def test_sparse_embedding_trains_lazily_through_the_torch_face():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    optimizer = optzoo.TorchOptimizer(embedding.parameters(), "adam", learning_rate=0.1, lazy_update=True, wd=0.1)
    before = embedding.weight.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        embedding(torch.tensor([1, 3, 3])).square().sum().backward()
        assert embedding.weight.grad.is_sparse
        optimizer.step()
    changed = (embedding.weight != before).any(dim=1)
    assert changed.tolist() == [i in (1, 3) for i in range(10)]


def test_symbolic_api_argument_is_rejected():
    with pytest.raises(TypeError, match="sym"):
        opt.SGD(sym=object())


def test_an_optimizer_without_sparse_support_rejects_sparse_gradients_clearly():
    class DenseOnly(opt.SGD):  # every built-in handles sparse gradients; a custom rule may not
        sparse_support = "none"

    optimizer = DenseOnly()
    w = torch.randn(4, 3)
    sparse = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.ones(1, 3), (4, 3))
    with pytest.raises(ValueError, match="cannot take a sparse gradient"):
        optimizer.update([0], [w], [sparse], [None])
