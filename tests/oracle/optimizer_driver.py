"""Runs optimizer trajectory cases in MXNet (executed inside the oracle runner).

``params`` is a list of cases; each case is a dict:
  id           unique key prefix for arrays
  name, kwargs optimizer registry name and constructor arguments ("inf" means numpy.inf)
  dtype        weight dtype name
  ntensors     number of parameters; initial weights in inputs[f"{id}/w0/{i}"]
  steps        number of updates; gradient of step k for tensor i in inputs[f"{id}/g/{k}/{i}"]
               (row-sparse: inputs[f"{id}/gv/{k}/{i}"] values and inputs[f"{id}/gr/{k}/{i}"] row ids)
  sparse       list of tensor indices whose gradients are row_sparse
  lr_mult, wd_mult   {index: value} set through param_dict objects (Gluon style)
  scheduler    {"type": class name in mx.lr_scheduler, "kwargs": {...}} or null
  set_lr       {step: learning rate} applied with set_learning_rate before that step
  record       list of steps after which weights are recorded (final weights and states always)
  seed         mx.random.seed before the first step (SGLD)
Outputs: {id}/w/{i} final weights, {id}/w@{k}/{i} recorded weights, {id}/s/{i}/{j} flattened state leaves.
"""


class _Param:
    def __init__(self, lr_mult=1.0, wd_mult=1.0):
        self.lr_mult = lr_mult
        self.wd_mult = wd_mult


def _flatten(state, out):
    if state is None:
        return out
    if isinstance(state, (tuple, list)):
        for item in state:
            _flatten(item, out)
        return out
    out.append(state.asnumpy())
    return out


def _kwargs(raw):
    return {k: (np.inf if v == "inf" else v) for k, v in raw.items()}


for case in params:
    cid = case["id"]
    n = case["ntensors"]
    dtype = case.get("dtype", "float32")
    lr_mult = {int(k): v for k, v in case.get("lr_mult", {}).items()}
    wd_mult = {int(k): v for k, v in case.get("wd_mult", {}).items()}
    kwargs = _kwargs(case.get("kwargs", {}))
    if lr_mult or wd_mult:
        kwargs["param_dict"] = {i: _Param(lr_mult.get(i, 1.0), wd_mult.get(i, 1.0)) for i in range(n)}
    sched = case.get("scheduler")
    if sched:
        kwargs["lr_scheduler"] = getattr(mx.lr_scheduler, sched["type"])(**sched["kwargs"])
    opt = mx.optimizer.create(case["name"], **kwargs)
    updater = mx.optimizer.get_updater(opt)
    weights = [mx.nd.array(inputs[f"{cid}/w0/{i}"], dtype=dtype) for i in range(n)]
    sparse = set(case.get("sparse", []))
    set_lr = {int(k): v for k, v in case.get("set_lr", {}).items()}
    record = set(case.get("record", []))
    if "seed" in case:
        mx.random.seed(case["seed"])
    for k in range(case["steps"]):
        if k in set_lr:
            opt.set_learning_rate(set_lr[k])
        grads = []
        for i in range(n):
            if i in sparse:
                values = inputs[f"{cid}/gv/{k}/{i}"]
                rows = inputs[f"{cid}/gr/{k}/{i}"]
                grads.append(mx.nd.sparse.row_sparse_array(
                    (mx.nd.array(values, dtype=dtype), mx.nd.array(rows, dtype="int64")),
                    shape=weights[i].shape, dtype=dtype))
            else:
                grads.append(mx.nd.array(inputs[f"{cid}/g/{k}/{i}"], dtype=dtype))
        updater(list(range(n)), grads, weights)
        if k + 1 in record:
            for i in range(n):
                outputs[f"{cid}/w@{k + 1}/{i}"] = weights[i].asnumpy()
    for i in range(n):
        outputs[f"{cid}/w/{i}"] = weights[i].asnumpy()
        for j, leaf in enumerate(_flatten(updater.states[i], [])):
            outputs[f"{cid}/s/{i}/{j}"] = leaf
    results[cid] = {"num_update": opt.num_update}
