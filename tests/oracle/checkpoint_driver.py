"""Writes real MXNet checkpoints and continues from them (executed inside the oracle runner, MXNet 2.0 or 1.x).

``params`` is ``{"out": folder, "cases": [case, ...]}``; each case is a dict:
  id           folder name under ``out``
  kind         network: "mlp" (Dense 6->8 tanh, Dense 8->3), "bn" (mlp with BatchNorm after the first
               layer), "nobias" (mlp without biases), "embed" (sparse-gradient Embedding 10x6 in front),
               "elem" (one 6->3 affine map from element-wise operators, for float16)
  dtype        "float32" or "float16" (the net is cast; use multi_precision in kwargs)
  optimizer, kwargs   optimizer name and arguments ("inf" means numpy.inf)
  scheduler    {"type": class name in mx.lr_scheduler, "kwargs": {...}} or null
  mults        {parameter structural name: [lr_mult, wd_mult]}
  style        "gluon" (Trainer.save_states) or "module" (1.x only: save_checkpoint + save_optimizer_states)
  k, m         steps before the checkpoint and after it
Inputs: ``{id}/init/{name}`` initial weights, ``X``/``XI``/``Y`` batches. The case folder gets
``model.params`` + ``trainer.states`` after k steps (Module: ``model-symbol.json``, ``model-0000.params``,
``model-0000.states``); MXNet then loads them into a fresh net and optimizer, trains m more steps and writes
``final.params`` + ``final.states``.
"""

import os

from mxnet import autograd, gluon
from mxnet.gluon import nn

V2 = mx.__version__.startswith("2")
F = mx.np if V2 else mx.nd


def _kwargs(raw):
    return {k: (np.inf if v == "inf" else v) for k, v in raw.items()}


if V2:
    class Elem(gluon.HybridBlock):
        """``y = sum_j w[i, j] x[j] + b[i]`` with element-wise operators (MXNet's CPU FullyConnected has no
        float16 kernel)."""

        def __init__(self):
            super().__init__()
            self.weight = gluon.Parameter("weight", shape=(3, 6))
            self.bias = gluon.Parameter("bias", shape=(3,))

        def forward(self, x):
            return (mx.np.expand_dims(x, 1) * mx.np.expand_dims(self.weight.data(), 0)).sum(axis=2) + self.bias.data()
else:
    class Elem(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.weight = self.params.get("weight", shape=(3, 6))
                self.bias = self.params.get("bias", shape=(3,))

        def hybrid_forward(self, F, x, weight, bias):
            prod = F.broadcast_mul(F.expand_dims(x, 1), F.expand_dims(weight, 0))
            return F.broadcast_add(F.sum(prod, axis=2), F.expand_dims(bias, 0))


def build(case):
    kind, dtype = case["kind"], case.get("dtype", "float32")
    if kind == "elem":
        net = Elem()
        net.initialize()
        if dtype != "float32":
            net.cast(dtype)
        for name, p in net._collect_params_with_prefix().items():
            p.set_data(F.array(inputs[f"{case['id']}/init/{name}"], dtype=dtype))
        return net
    net = nn.HybridSequential()
    if kind == "embed":
        net.add(nn.Embedding(10, 6, sparse_grad=True))
    bias = kind != "nobias"
    net.add(nn.Dense(8, in_units=6, activation="tanh", use_bias=bias))
    if kind == "bn":
        net.add(nn.BatchNorm(in_channels=8))
    net.add(nn.Dense(3, in_units=8, use_bias=bias))
    net.initialize()
    if dtype != "float32":
        net.cast(dtype)
    for name, p in net._collect_params_with_prefix().items():
        if "running" not in name:
            p.set_data(F.array(inputs[f"{case['id']}/init/{name}"], dtype=dtype))
    for name, (lr_mult, wd_mult) in case.get("mults", {}).items():
        p = net._collect_params_with_prefix()[name]
        p.lr_mult, p.wd_mult = lr_mult, wd_mult
    return net


def optimizer_params(case):
    kwargs = _kwargs(case.get("kwargs", {}))
    sched = case.get("scheduler")
    if sched:
        kwargs["lr_scheduler"] = getattr(mx.lr_scheduler, sched["type"])(**sched["kwargs"])
    return kwargs


def batch(case, step):
    dtype = case.get("dtype", "float32")
    x = F.array(inputs["XI"][step], dtype="int64") if case["kind"] == "embed" else F.array(
        inputs["X"][step], dtype=dtype)
    return x, F.array(inputs["Y"][step], dtype=dtype)


def train(case, net, trainer, steps, offset):
    for step in range(offset, offset + steps):
        x, y = batch(case, step)
        with autograd.record():
            loss = ((net(x) - y) ** 2).sum()
        loss.backward()
        trainer.step(x.shape[0])


def gluon_case(case, folder):
    net = build(case)
    trainer = gluon.Trainer(net.collect_params(), case["optimizer"], optimizer_params(case))
    train(case, net, trainer, case["k"], 0)
    net.save_parameters(os.path.join(folder, "model.params"))
    trainer.save_states(os.path.join(folder, "trainer.states"))
    net2 = build(case)  # fresh net and trainer, as a restarted job would have
    net2.load_parameters(os.path.join(folder, "model.params"))
    trainer2 = gluon.Trainer(net2.collect_params(), case["optimizer"], optimizer_params(case))
    trainer2.load_states(os.path.join(folder, "trainer.states"))
    train(case, net2, trainer2, case["m"], case["k"])
    net2.save_parameters(os.path.join(folder, "final.params"))
    trainer2.save_states(os.path.join(folder, "final.states"))
    structural = {id(p): name for name, p in net._collect_params_with_prefix().items()}
    # the Trainer's index order (sorted collect_params() names) in structural names
    results[case["id"]] = {"order": [structural[id(p)] for _, p in sorted(net.collect_params().items())]}


def module_case(case, folder):
    """1.x Module: a symbolic MLP trained with fit-style forward_backward/update, saved with save_checkpoint."""
    data, label = mx.sym.var("data"), mx.sym.var("label")
    h = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=8, name="fc1"), act_type="tanh")
    out = mx.sym.FullyConnected(h, num_hidden=3, name="fc2")
    loss = mx.sym.MakeLoss(mx.sym.sum(mx.sym.square(out - label)))
    prefix = os.path.join(folder, "model")

    def module():
        mod = mx.mod.Module(loss, data_names=["data"], label_names=["label"])
        mod.bind(data_shapes=[("data", inputs["X"].shape[1:])], label_shapes=[("label", inputs["Y"].shape[1:])])
        return mod

    def run(mod, steps, offset):
        for step in range(offset, offset + steps):
            x, y = inputs["X"][step], inputs["Y"][step]
            mod.forward_backward(mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)]))
            mod.update()

    mod = module()
    init = {"fc1_weight": "0.weight", "fc1_bias": "0.bias", "fc2_weight": "1.weight", "fc2_bias": "1.bias"}
    mod.init_params(arg_params={k: mx.nd.array(inputs[f"{case['id']}/init/{v}"]) for k, v in init.items()})
    opt_params = dict(optimizer_params(case), rescale_grad=1.0 / inputs["X"].shape[1])
    mod.init_optimizer(optimizer=case["optimizer"], optimizer_params=opt_params)
    run(mod, case["k"], 0)
    mod.save_checkpoint(prefix, 0, save_optimizer_states=True)
    mod2 = module()
    _, args, auxs = mx.model.load_checkpoint(prefix, 0)
    mod2.init_params(arg_params=args, aux_params=auxs)
    mod2.init_optimizer(optimizer=case["optimizer"], optimizer_params=dict(
        opt_params, begin_num_update=case.get("begin_num_update", 0)))
    mod2.load_optimizer_states(prefix + "-0000.states")
    run(mod2, case["m"], case["k"])
    mod2.save_checkpoint(os.path.join(folder, "final"), 0, save_optimizer_states=True)
    results[case["id"]] = {"order": list(mod._param_names)}


for case in params["cases"]:
    folder = os.path.join(params["out"], case["id"])
    os.makedirs(folder, exist_ok=True)
    if case.get("seed") is not None:
        mx.random.seed(case["seed"])
    (module_case if case.get("style") == "module" else gluon_case)(case, folder)
