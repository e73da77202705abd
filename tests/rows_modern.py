"""Table rows of the optimizers that came after MXNet: Lion, ADOPT, AdEMAMix, MARS, Schedule-Free AdamW/SGD and
Prodigy. MXNet has no counterpart (oracle=None); tests/test_modern_reference.py compares them with their
reference packages instead."""

from __future__ import annotations

import math

from optimizer_table import Row, Tol, _nan, _neg, beta_errors


def _flag_error(name):
    return ({name: 1}, TypeError, name)


ROWS = [
    Row("lion",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.1}, {"learning_rate": 1e-3, "clip_gradient": 0.4,
                                                                "rescale_grad": 0.5},
                 {"lr": 3e-3, "betas": (0.8, 0.95), "weight_decay": 0.2, "decoupled_weight_decay": True}],
        errors=[({"beta1": 1.5}, ValueError, "beta1"), _nan("beta2"), ({"beta2": "0.9"}, TypeError, "beta2"),
                _flag_error("decoupled_weight_decay"), ({"betas": (0.9,)}, ValueError, "betas"),
                ({"lr": 0.1, "learning_rate": 0.2}, ValueError, "not both")],
        oracle=None, train_kwargs={"learning_rate": 3e-3}),
    Row("adopt",
        configs=[{}, {"beta1": 0.5, "beta2": 0.9, "wd": 0.03}, {"epsilon": 1e-3, "clip_gradient": 0.4,
                                                                 "clip_exponent": None},
                 {"learning_rate": 0.01, "wd": 0.05, "weight_decouple": True, "rescale_grad": 0.5},
                 {"wd": 0.05, "weight_decouple": True, "fixed_decay": True, "begin_num_update": 3}],
        errors=beta_errors("beta1", "beta2") + [_neg("epsilon"), _nan("clip_exponent"),
                                                _flag_error("weight_decouple"), _flag_error("fixed_decay")],
        first_step_still="ADOPT's first update of a tensor only records v = g^2 (the update uses the previous v)",
        oracle=None, train_kwargs={"learning_rate": 0.01}),
    Row("ademamix",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "beta3": 0.95, "wd": 0.03},
                 {"alpha": 2.0, "t_alpha_beta3": 30, "clip_gradient": 0.4},
                 {"epsilon": 1e-3, "wd": 0.05, "weight_decouple": True, "rescale_grad": 0.5},
                 {"learning_rate": 0.01, "betas": (0.8, 0.9, 0.99)}],
        errors=beta_errors("beta1", "beta2", "beta3") + [_neg("alpha"), _neg("epsilon"),
                                                         ({"t_alpha_beta3": 0}, ValueError, "t_alpha_beta3"),
                                                         ({"betas": (0.9, 0.99)}, ValueError, "betas")],
        oracle=None, train_kwargs={"learning_rate": 0.01}),
    Row("mars",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03, "gamma": 0.1}, {"optimize_1d": True,
                                                                              "clip_gradient": 0.4},
                 {"mars_type": "lion", "learning_rate": 1e-3, "wd_1d": 0.0, "rescale_grad": 0.5},
                 {"lr_1d": 1e-3, "betas_1d": (0.5, 0.8), "weight_decay_1d": 0.2, "epsilon": 1e-3}],
        errors=beta_errors("beta1", "beta2", "beta1_1d") + [
            _neg("gamma"), _neg("wd_1d"), _neg("lr_1d"), ({"mars_type": "shampoo"}, ValueError, "mars_type"),
            _flag_error("optimize_1d"), ({"wd_1d": 0.2, "weight_decay_1d": 0.3}, ValueError, "not both")],
        no_decay_kwargs={"wd_1d": 0.0},  # 1-D tensors take the AdamW side with their own decay (0.1 by default)
        oracle=None, train_kwargs={"learning_rate": 0.01}),
    Row("schedulefree_adamw",
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03}, {"warmup_steps": 10, "r": 0.5, "clip_gradient": 0.4},
                 {"learning_rate": 0.01, "weight_lr_power": 1.0, "epsilon": 1e-3, "rescale_grad": 0.5}],
        errors=[({"beta1": 0.0}, ValueError, "beta1"), ({"beta1": 1.0}, ValueError, "beta1"), _nan("beta2"),
                ({"warmup_steps": -1}, ValueError, "warmup_steps"), ({"warmup_steps": 1.5}, TypeError,
                                                                     "warmup_steps"),
                _neg("r"), _neg("weight_lr_power"), _neg("epsilon")],
        oracle=None, train_kwargs={"learning_rate": 0.01}),
    Row("schedulefree_sgd",
        configs=[{}, {"momentum": 0.5, "wd": 0.03}, {"warmup_steps": 10, "r": 1.0, "clip_gradient": 0.4},
                 {"learning_rate": 0.1, "weight_lr_power": 0.0, "rescale_grad": 0.5}],
        errors=[({"momentum": 0.0}, ValueError, "momentum"), ({"momentum": 1.0}, ValueError, "momentum"),
                _nan("momentum"), ({"warmup_steps": -1}, ValueError, "warmup_steps"), _neg("r")],
        oracle=None, train_kwargs={"learning_rate": 0.1}),
    Row("prodigy",
        # configs[1] drives the torch contract tests: with the default d0=1e-6 the first steps move a weight by
        # ~1e-6, below float16/bfloat16 resolution (the float32 master copy moves, the weight rightly does not)
        configs=[{}, {"beta1": 0.5, "beta2": 0.8, "wd": 0.03, "d0": 1e-3},
                 {"beta1": 0.0, "beta3": 0.9, "clip_gradient": 0.4},
                 {"decouple": False, "wd": 0.05, "use_bias_correction": True, "safeguard_warmup": True},
                 {"learning_rate": 0.5, "d0": 1e-3, "d_coef": 0.5, "growth_rate": 1.02, "rescale_grad": 0.5}],
        errors=beta_errors("beta1", "beta2") + [
            ({"epsilon": 0.0}, ValueError, "epsilon"), ({"d0": 0.0}, ValueError, "d0"), _nan("d_coef"),
            ({"growth_rate": 0.5}, ValueError, "growth_rate"), ({"slice_p": 2}, ValueError, "slice_p"),
            _flag_error("decouple"), ({"beta3": math.inf}, ValueError, "beta3")],
        # the d estimate sums over every tensor of the step: the paths add in different orders
        impl_tol=Tol(1e-4, 1e-5, "float32 sums of the d estimate in a different order"),
        joint_step="one step size d is estimated from every parameter together (optimizer-wide, as in prodigyopt)",
        oracle=None),
]
