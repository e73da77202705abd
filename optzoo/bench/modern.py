"""Benchmark rows of the optimizers that came after MXNet (``optzoo bench --optimizers lion,adopt,...``): optzoo's
arguments and the reference package each is timed against in the same run ("reference package" column).

The packages are test dependencies (``pip install -e .[test]``); a missing one leaves its column empty.

Adafactor, CAME, Muon and SOAP are timed by :mod:`optzoo.bench.modern_transformer` instead (``bench/run.py
modern``): Muon needs each tensor's role (hidden matrix, embedding, head, vector), SOAP whole 10-step periods, and
the factored rules mix state layouts (a matrix's row/column factors, a vector's full moment) that the main
benchmark's streaming speed of light does not model; this table feeds the main benchmark's element-wise rows."""

from __future__ import annotations

import importlib

__all__ = ["MODERN_SPECS", "REFERENCE_LABEL", "make_reference"]

#: the label of the reference package's timings in bench.json and the tables
REFERENCE_LABEL = "reference package"

#: optimizer -> (optzoo keyword arguments, "module:Class" of the reference package, its keyword arguments)
MODERN_SPECS = {
    "lion": ({"learning_rate": 1e-4, "wd": 0.1}, "lion_pytorch:Lion", {"lr": 1e-4, "weight_decay": 0.1}),
    "adopt": ({"learning_rate": 1e-3}, "pytorch_optimizer:ADOPT", {"lr": 1e-3}),
    "ademamix": ({"learning_rate": 1e-3}, "pytorch_optimizer:AdEMAMix", {"lr": 1e-3}),
    "mars": ({"learning_rate": 3e-3}, "pytorch_optimizer:MARS", {"lr": 3e-3}),
    "schedulefree_adamw": ({"learning_rate": 2.5e-3}, "schedulefree:AdamWScheduleFree", {"lr": 2.5e-3}),
    "schedulefree_sgd": ({"learning_rate": 1.0}, "schedulefree:SGDScheduleFree", {"lr": 1.0}),
    "prodigy": ({"learning_rate": 1.0}, "prodigyopt:Prodigy", {"lr": 1.0}),
}


def make_reference(name: str, params):
    """The reference package's optimizer over ``params`` (in train mode where it has one)."""
    _, target, kwargs = MODERN_SPECS[name]
    module, cls = target.split(":")
    opt = getattr(importlib.import_module(module), cls)(params, **kwargs)
    if hasattr(opt, "train"):
        opt.train()
    return opt
