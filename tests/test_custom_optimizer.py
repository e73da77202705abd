"""Custom optimizers as MXNet's optimizer guide describes them ("Custom Optimizer": ``__init__``, ``create_state``,
``update``, ``@register``; "see the source code for the NAG optimizer"), written both ways:

* MXNet 1.x: ``update(self, index, weight, grad, state)``, called once per parameter;
* MXNet 2.0: ``update(self, indices, weights, grads, states)`` with lists, or ``step``/``fused_step`` with lists
  (``fused_step`` runs with ``use_fused_step=True``, ``step`` otherwise, as in MXNet 2.0).

Each port of MXNet 2.0's NAG must follow optzoo's built-in NAG through a Trainer and an Updater, weights and
momentum, over 20 steps.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from optzoo import Trainer
from optzoo import optimizer as opt
from optzoo.optimizer import Optimizer, register

STEPS = 20
TOL = dict(rtol=1e-6, atol=1e-7)  # the ports add momentum*mom - lr*g in one operation, the built-in NAG in two


def nag_update(optimizer, index, weight, grad, mom):
    """MXNet 2.0's NAG step for one parameter (mxnet/optimizer/nag.py), on torch tensors."""
    optimizer._update_count(index)
    lr, wd = optimizer._get_lr(index), optimizer._get_wd(index)
    grad = grad * optimizer.rescale_grad
    if optimizer.clip_gradient is not None:
        grad = grad.clamp(-optimizer.clip_gradient, optimizer.clip_gradient)
    grad = grad + wd * weight
    with torch.no_grad():
        mom.mul_(optimizer.momentum).sub_(lr * grad)
        weight.add_(optimizer.momentum * mom - lr * grad)


class _GuideBase(Optimizer):
    def __init__(self, momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def create_state(self, index, weight):
        return torch.zeros_like(weight)


class GuideNag1x(_GuideBase):
    calls: ClassVar[list] = []

    def update(self, index, weight, grad, state):
        self.calls.append(type(index))
        nag_update(self, index, weight, grad, state)


class GuideNag20(_GuideBase):
    calls: ClassVar[list] = []

    def update(self, indices, weights, grads, states):
        self.calls.append(type(indices))
        for index, weight, grad, state in zip(indices, weights, grads, states):
            nag_update(self, index, weight, grad, state)


class GuideNagStep(_GuideBase):
    def step(self, indices, weights, grads, states):
        for index, weight, grad, state in zip(indices, weights, grads, states):
            nag_update(self, index, weight, grad, state)


class GuideNagFused(_GuideBase):
    fused_calls = 0

    def step(self, indices, weights, grads, states):
        raise AssertionError("step ran although use_fused_step=True")

    def fused_step(self, indices, weights, grads, states):
        type(self).fused_calls += 1
        for index, weight, grad, state in zip(indices, weights, grads, states):
            nag_update(self, index, weight, grad, state)


CUSTOM = [GuideNag1x, GuideNag20, GuideNagStep, GuideNagFused]


@pytest.fixture(autouse=True)
def registered():
    """@register the ports for one test (the registry is global: other tests list every optimizer)."""
    for klass in CUSTOM:
        register(klass)
    yield
    for klass in CUSTOM:
        Optimizer.opt_registry.pop(klass.__name__.lower(), None)


def _kwargs(klass):
    kwargs = {"learning_rate": 0.05, "momentum": 0.8, "wd": 0.01, "clip_gradient": 0.7}
    return {**kwargs, "use_fused_step": True} if klass is GuideNagFused else kwargs


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _train(name, kwargs):
    model = _model()
    trainer = Trainer(model, name, kwargs)
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(6, 5, generator=g), torch.randn(6, 2, generator=g)
        ((model(x) - y) ** 2).sum().backward()
        trainer.step(6)
    return model, trainer


@pytest.mark.parametrize("klass", CUSTOM, ids=lambda k: k.__name__)
def test_custom_optimizer_trains_like_the_builtin_nag(klass):
    klass.calls = []
    model, trainer = _train(klass.__name__.lower(), _kwargs(klass))
    ref_model, ref_trainer = _train("nag", {**_kwargs(GuideNag1x), "impl": "reference"})
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, **TOL)
    for i, state in ref_trainer._updater.states.items():
        torch.testing.assert_close(trainer._updater.states[i], state, **TOL)
    assert trainer.optimizer.num_update == STEPS
    assert trainer.optimizer._index_update_count == ref_trainer.optimizer._index_update_count
    if klass is GuideNag1x:
        assert set(klass.calls) == {int} and len(klass.calls) == 4 * STEPS  # once per parameter
    if klass is GuideNag20:
        assert set(klass.calls) == {list} and len(klass.calls) == STEPS  # once per step, with lists
    if klass is GuideNagFused:
        assert klass.fused_calls >= STEPS


@pytest.mark.parametrize("klass", CUSTOM, ids=lambda k: k.__name__)
def test_custom_optimizer_through_an_updater_with_lists(klass):
    torch.manual_seed(1)
    weights = [torch.randn(3, 2), torch.randn(4)]
    ref_weights = [w.clone() for w in weights]
    updater = opt.get_updater(opt.create(klass.__name__.lower(), **_kwargs(klass)))
    reference = opt.get_updater(opt.create("nag", **_kwargs(GuideNag1x), impl="reference"))
    for step in range(STEPS):
        grads = [torch.randn(w.shape, generator=torch.Generator().manual_seed(step * 7 + k))
                 for k, w in enumerate(weights)]
        updater([0, 1], grads, weights)
        reference([0, 1], grads, ref_weights)
    for w, r in zip(weights, ref_weights):
        torch.testing.assert_close(w, r, **TOL)
    for i in (0, 1):
        torch.testing.assert_close(updater.states[i], reference.states[i], **TOL)


def test_fused_step_runs_only_when_asked():
    assert opt.create("guidenagfused").impl == "reference"  # MXNet 2.0: use_fused_step defaults to False
    assert opt.create("guidenagfused", use_fused_step=True).impl == "foreach"
    with pytest.raises(ValueError, match="no native kernel"):
        opt.create("guidenagfused", impl="native")


def test_custom_optimizer_checkpoint_round_trip(tmp_path):
    _, trainer = _train("guidenag20", _kwargs(GuideNag20))
    trainer.save_states(tmp_path / "t.states")
    resumed = Trainer(_model(), "guidenag20", {"learning_rate": 1.0})
    resumed.load_states(tmp_path / "t.states")
    assert resumed.optimizer.momentum == 0.8 and resumed.optimizer.lr == 0.05
    for i, state in trainer._updater.states.items():
        assert torch.equal(resumed._updater.states[i], state)
