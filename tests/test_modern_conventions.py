"""MXNet's per-parameter conventions on Adafactor, CAME, Muon and SOAP: a parameter's ``lr_mult``/``wd_mult`` act as
its own learning rate and decay, and a scheduler's rate is the one ``set_learning_rate`` would give (each rule
updates every parameter independently, so one parameter with multipliers equals that parameter alone with the
multiplied hyperparameters). Exact (torch.equal): the same operations run either way."""

from __future__ import annotations

import pytest
import torch

from optzoo import lr_scheduler
from optzoo import optimizer as opt

NAMES = {"adafactor": {"learning_rate": 0.05, "wd": 0.1}, "came": {"learning_rate": 0.01, "wd": 0.1},
         "muon": {"learning_rate": 0.02, "wd": 0.1}, "soap": {"learning_rate": 0.01, "wd": 0.1}}


class _Param:
    def __init__(self, lr_mult, wd_mult):
        self.lr_mult, self.wd_mult = lr_mult, wd_mult


def _run(name, kwargs, steps=15, set_lr=None, **extra):
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(6, 5, generator=gen), torch.randn(7, generator=gen)]
    optimizer = opt.create(name, **kwargs, **extra)
    updater = opt.get_updater(optimizer)
    for k in range(steps):
        if set_lr is not None:
            optimizer.set_learning_rate(set_lr(k))
        updater([0, 1], [torch.randn(w.shape, generator=gen) for w in weights], weights)
    return weights


@pytest.mark.parametrize("name", sorted(NAMES))
def test_lr_mult_and_wd_mult_act_as_the_parameters_own_rate_and_decay(name):
    kwargs = NAMES[name]
    with_mults = _run(name, kwargs, param_dict={0: _Param(0.5, 2.0), 1: _Param(1.0, 1.0)})
    scaled = _run(name, {**kwargs, "learning_rate": 0.5 * kwargs["learning_rate"], "wd": 2.0 * kwargs["wd"]})
    plain = _run(name, kwargs)
    assert torch.equal(with_mults[0], scaled[0]) and torch.equal(with_mults[1], plain[1])
    assert not torch.equal(with_mults[0], plain[0])


@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_scheduler_sets_the_rate_of_every_update(name):
    kwargs = {k: v for k, v in NAMES[name].items() if k != "learning_rate"}
    schedule = lr_scheduler.FactorScheduler(step=4, factor=0.5, base_lr=0.02)
    scheduled = _run(name, {**kwargs, "lr_scheduler": schedule, "learning_rate": None})
    by_hand = _run(name, {**kwargs, "learning_rate": 0.02}, set_lr=lambda k: schedule(k + 1))
    assert all(torch.equal(a, b) for a, b in zip(scheduled, by_hand))
