"""Bring an MXNet run along: read MXNet's ``.params`` and ``.states`` files without MXNet, and resume exactly.

* :func:`load_params` - ``{name: tensor}`` from MXNet 2.0 ``save_parameters`` (``.npz``), 1.x
  ``save_parameters``, ``mx.nd.save`` (list or dict) and ``save_checkpoint`` (``-0000.params``, names keep their
  ``arg:``/``aux:`` prefix). Sparse arrays (``row_sparse``, ``csr``) come back dense, or as torch sparse COO /
  CSR tensors with ``sparse="torch"``.
* :func:`load_params_into` - the same into a ``torch.nn.Module`` (name rules in :mod:`optzoo.mxnet.names`).
* :func:`load_states` - an :class:`~optzoo.mxnet.states.MXNetStates` with the per-index states, the optimizer's
  class and settings, ``num_update``, update counts, ``idx2name``, multipliers and the scheduler.
* :func:`resume_trainer` (also ``optzoo.Trainer.load_states(path)`` on an MXNet file) - an optzoo Trainer
  continues the MXNet run: same optimizer, scheduler position, update counts and states.

Nothing here imports MXNet or executes code from a file: tensors are parsed from bytes and ``.states``
pickles are read by a restricted unpickler (:mod:`optzoo.mxnet.pickled`). Bad files raise
:class:`optzoo.serialization.CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..serialization import CheckpointError
from .names import resolve_names, strip_prefix, torch_param_name
from .ndarray import read_tensor_file, sniff
from .states import MXNetStates, build_optimizer, convert_state, load_states, loads_states, mxnet_version

__all__ = ["CheckpointError", "MXNetStates", "build_optimizer", "convert_state", "file_kind", "is_mxnet_file",
           "load_params", "load_params_into", "load_states", "load_trainer_states", "module_param_names",
           "mxnet_version", "resume_trainer", "set_updater_states"]


def file_kind(path) -> str:
    """``'npz'``, ``'legacy'`` (NDArray list), ``'pickle'`` (states), ``'optzoo'`` or ``'unknown'``."""
    with open(path, "rb") as f:
        return sniff(f.read(16))


def is_mxnet_file(path) -> bool:
    return file_kind(path) in ("npz", "legacy", "pickle")


def load_params(path, sparse: str = "dense") -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of an MXNet parameters file (formats in the module docstring).

    A list file (``mx.nd.save([...])``) gets the names ``"0"``, ``"1"``, ... Duplicate names are a
    :class:`CheckpointError`.
    """
    out: dict[str, torch.Tensor] = {}
    for i, (name, tensor) in enumerate(read_tensor_file(path, sparse)):
        key = str(i) if name is None else name
        if key in out:
            raise CheckpointError(f"{path}: the name {key!r} appears twice")
        out[key] = tensor
    return out


def load_params_into(module: torch.nn.Module, path, mapping: Mapping | Callable | None = None,
                     strict: bool = True) -> dict:
    """Copies an MXNet parameters file into ``module``'s parameters and buffers (rules in
    :mod:`optzoo.mxnet.names`).

    Returns ``{"loaded": [torch keys], "unmatched": [file names], "missing": [torch keys], "mismatched":
    [descriptions], "mapping": {file name: torch key}}`` (``mapping`` can be given to
    :func:`resume_trainer`). With ``strict=True`` (default) any unmatched, missing or mismatched (shape or dtype)
    entry raises one ``ValueError`` listing all of them, and nothing is copied.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    params = load_params(path)
    names = resolve_names(list(params), {n: tuple(t.shape) for n, t in params.items()}, module, mapping)
    state = module.state_dict()
    targets = {k for k in state if not k.endswith("num_batches_tracked")}
    loaded, unmatched, mismatched, seen = {}, [], [], {}
    for name, key in names.items():
        if key is None or key not in state:
            unmatched.append(name if key is None else f"{name} (-> {key!r}, not in the module)")
            continue
        if key in seen:
            mismatched.append(f"{name!r} and {seen[key]!r} both map to {key!r}")
            continue
        seen[key] = name
        tensor, ours = params[name], state[key]
        if tuple(tensor.shape) != tuple(ours.shape) or tensor.dtype != ours.dtype:
            mismatched.append(f"{name!r} -> {key!r}: file has {tuple(tensor.shape)} {_dt(tensor)}, module has "
                              f"{tuple(ours.shape)} {_dt(ours)}")
            continue
        loaded[key] = tensor
    missing = sorted(targets - set(loaded) - set(seen))
    report = {"loaded": sorted(loaded), "unmatched": unmatched, "missing": missing, "mismatched": mismatched,
              "mapping": {n: k for n, k in names.items() if k is not None}}
    if strict and (unmatched or missing or mismatched):
        parts = [f"{label}: {items}" for label, items in (("file names without a module key", unmatched),
                                                          ("module keys not in the file", missing),
                                                          ("mismatched", mismatched)) if items]
        raise ValueError(f"{path}: does not fit {type(module).__name__}; " + "; ".join(parts)
                         + " (pass mapping={mxnet_name: torch_key} or strict=False)")
    with torch.no_grad():
        for key, tensor in loaded.items():
            state[key].copy_(tensor)
    return report


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def module_param_names(symbol_file, params, data_names=("data",), label_names=("softmax_label",)) -> list[str]:
    """A 1.x ``Module``'s optimizer index order (``symbol.list_arguments()`` without inputs) from its
    ``-symbol.json`` and its ``-0000.params`` (whose ``aux:`` names are left out).

    ``params`` is the params path or its names. The arguments are the graph's variables in depth-first order
    from the outputs (MXNet's ``list_arguments``).
    """
    import json

    try:
        graph = json.loads(Path(symbol_file).read_text())
        nodes, heads = graph["nodes"], graph["heads"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{symbol_file}: not an MXNet symbol file ({err})") from None
    names = list(load_params(params)) if isinstance(params, (str, os.PathLike)) else list(params)
    aux = {strip_prefix(n) for n in names if n.startswith("aux:")}
    order, seen = [], set()

    def visit(i):
        stack = [(i, False)]
        while stack:
            node, done = stack.pop()
            if done:
                if nodes[node]["op"] == "null":
                    order.append(nodes[node]["name"])
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            for inp in reversed(nodes[node].get("inputs", [])):
                stack.append((inp[0], False))

    for head in heads:
        visit(head[0])
    skip = set(data_names) | set(label_names) | aux
    return [n for n in order if n not in skip]


# ---------------------------------------------------------------------------------------------- resuming
def _gluon_order(mx: MXNetStates, param_names, params, mapping, trainer_names: list[str]) -> tuple[dict, str]:
    """``{mxnet index: torch name}`` and a description of where the order came from."""
    if param_names is not None:
        names, how = (dict(param_names) if isinstance(param_names, Mapping) else dict(enumerate(param_names)),
                      "param_names")
    elif mx.idx2name:
        names, how = mx.idx2name, "the file's idx2name"
    elif params is not None:
        listed = list(load_params(params)) if isinstance(params, (str, os.PathLike)) else list(params)
        names, how = dict(enumerate(sorted(listed))), f"sorted names of {params}"
    else:
        names, how = dict(enumerate(sorted(trainer_names))), "sorted Trainer parameter names"
    return {i: _translate(n, mapping) for i, n in names.items()}, how


def _translate(name: str, mapping) -> str | None:
    """An MXNet name as a torch name: ``mapping`` (dict, tried with and without ``arg:``) or callable, else the
    structural-name rule (:func:`optzoo.mxnet.names.torch_param_name`)."""
    if mapping is None:
        return torch_param_name(name)
    if isinstance(mapping, Mapping):
        return mapping.get(name, mapping.get("arg:" + name, mapping.get(strip_prefix(name))))
    return mapping(name)


def _check_order_known(mx: MXNetStates, path, param_names) -> None:
    """Refuses to guess the index order where sorted names would silently pair the wrong parameters."""
    if param_names is not None or mx.idx2name:
        return
    if not mx.has_optimizer:
        raise ValueError(f"{path}: holds states without an optimizer (Module.save_optimizer_states), which number "
                         "parameters in symbol.list_arguments() order; pass param_names="
                         "optzoo.mxnet.module_param_names('model-symbol.json', 'model-0000.params')")


def _index_map_by_shape(mx: MXNetStates, path, trainer) -> dict:
    """MXNet 1.x Gluon: the Trainer numbers parameters by their sorted *prefixed* names (``dense0_weight``), which
    the files do not record. Each state is given to the one Trainer parameter its tensors fit; if a state fits
    several (equal shapes), the order cannot be known and ``param_names`` is required."""
    probe = build_optimizer(mx)
    index_map, names = {}, trainer._names
    for mx_index, state in mx.states.items():
        if state is None:
            continue
        fits = []
        for i, p in enumerate(trainer._params):
            try:
                convert_state(state, probe, p, mx.version, "")
                fits.append(i)
            except CheckpointError:
                pass
        if len(fits) != 1:
            which = f"fits {[names[i] for i in fits]}" if fits else "fits no Trainer parameter"
            raise ValueError(
                f"{path}: MXNet 1.x's Gluon Trainer numbers parameters by their sorted prefixed names (dense0_weight, "
                f"...), which the files do not record, and state {mx_index} {which}; pass param_names=[the names "
                "in that order] (in MXNet 1.x: [structural[id(p)] for _, p in sorted(net.collect_params().items())] "
                "with structural = {id(p): n for n, p in net._collect_params_with_prefix().items()})")
        index_map[mx_index] = fits[0]
    if len(set(index_map.values())) != len(index_map):
        raise ValueError(f"{path}: two MXNet 1.x states fit one Trainer parameter; pass param_names=")
    return index_map


def _index_map_by_name(mx: MXNetStates, path, names, param_names, params, mapping) -> dict:
    order, how = _gluon_order(mx, param_names, params, mapping, names)
    for key in mx.states:  # states keyed by name (a kvstore's string keys)
        if isinstance(key, str) and key not in order:
            order[key] = _translate(key, mapping)
    index_of = {n: i for i, n in enumerate(names)}
    index_map = {mx_index: index_of[name] for mx_index, name in order.items() if name in index_of}
    problems = [f"state {mx_index!r} ({order.get(mx_index)!r} by {how}) is no Trainer parameter"
                for mx_index in mx.states if mx_index not in index_map]
    if problems:
        raise ValueError(f"{path}: cannot match the MXNet indices to the Trainer's parameters: "
                         + "; ".join(problems[:10]) + " (pass param_names=, params= or mapping=)")
    return index_map


def _differences(ours, theirs) -> list[str]:
    """Hyperparameters in which two optimizers of one class differ (rescale_grad is the Trainer's)."""
    skip = {"rescale_grad", "param_idx2name", "impl", "aggregate_num", "begin_num_update", "learning_rate"}
    a, b = ours.get_config(), theirs.get_config()
    out = []
    for key in sorted(set(a) | set(b)):
        if key in skip:
            continue
        x, y = a.get(key), b.get(key)
        same = x == y or (isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isclose(
            x, y, rel_tol=1e-9, abs_tol=0.0))
        if not same:
            out.append(f"{key}: Trainer {x!r}, file {y!r}")
    sa, sb = ours.lr_scheduler, theirs.lr_scheduler
    ca = sa.get_config() if sa is not None and hasattr(sa, "get_config") else sa
    cb = sb.get_config() if sb is not None else None
    if ca != cb:
        out.append(f"lr_scheduler: Trainer {ca!r}, file {cb!r}")
    elif sa is None and not math.isclose(ours.lr, theirs.lr, rel_tol=1e-9):
        out.append(f"learning_rate: Trainer {ours.lr!r}, file {theirs.lr!r}")
    return out


def resume_trainer(trainer, path, *, param_names=None, params=None, mapping=None,
                   allow_optimizer_change: bool = False,
                   mxnet_version: str | None = None) -> None:
    """Loads an MXNet ``.states`` file into an :class:`optzoo.Trainer` so that it continues the MXNet run.

    Args:
        trainer: the optzoo Trainer of the torch model (its parameters named like the Gluon block's, or
            mapped with ``mapping``).
        path: the ``.states`` file (Gluon ``Trainer.save_states``, ``Module.save_optimizer_states``, ...).
        param_names: the MXNet names in index order (a list, or a dict ``{index: name}``), translated to the
            Trainer's names with ``mapping`` (default: Gluon's BatchNorm renaming, else unchanged). Default:
            the file's ``idx2name`` if it has one; for MXNet 1.x Gluon files, the one parameter each state's
            shape fits (an error if several fit); else the sorted names of ``params``, else the sorted names of
            the Trainer's parameters (Gluon numbers ``collect_params()`` in sorted-name order; this default is
            right when every Gluon parameter, gradient or not, is a Trainer parameter: give ``params`` when the
            Gluon block has BatchNorm running statistics or other parameters without gradient).
        params: the Gluon ``.params`` file (or its names) saved with the states, to number the parameters.
        mapping: MXNet name -> torch name (dict or callable) for names that differ.
        allow_optimizer_change: when the file's optimizer class or hyperparameters differ from the Trainer's,
            take the file's (Gluon's ``load_states`` behaviour) instead of raising ``ValueError`` (the same
            keyword as for optzoo's own checkpoints).
        mxnet_version: ``"1.x"`` or ``"2.0"`` state layout for files without a dumped optimizer
            (default ``"1.x"``: such files come from ``Module``).

    With a dumped optimizer the Trainer's optimizer is replaced by its continuation (class, hyperparameters,
    scheduler position, ``num_update``, per-parameter counts); without one the Trainer's optimizer is kept and
    only the states are loaded (MXNet restarts the counts from ``begin_num_update`` too). On error the Trainer
    is unchanged.
    """
    from ..optimizer.updater import get_updater

    if mxnet_version not in (None, "1.x", "2.0"):
        raise ValueError(f"mxnet_version must be '1.x', '2.0' or None, got {mxnet_version!r}")
    mx = _read_pickled(load_states, path)
    _check_order_known(mx, path, param_names)
    names = list(trainer._names)
    if mx.version == "1.x" and mx.has_optimizer and param_names is None and not mx.idx2name:
        index_map = _index_map_by_shape(mx, path, trainer)
    else:
        index_map = _index_map_by_name(mx, path, names, param_names, params, mapping)
    if mx.has_optimizer:
        optimizer = build_optimizer(mx, param_dict=trainer._param_dict(), index_map=index_map)
        current = trainer._optimizer
        if not allow_optimizer_change:
            if type(current) is not type(optimizer):
                raise ValueError(f"{path}: holds a {mx.optimizer_class} optimizer, the Trainer has "
                                 f"{type(current).__name__}; pass allow_optimizer_change=True to take the file's")
            diff = _differences(current, optimizer)
            if diff:
                raise ValueError(f"{path}: the optimizer settings differ from the Trainer's: " + "; ".join(diff)
                                 + " (pass allow_optimizer_change=True to take the file's)")
        version = mx.version
    else:
        optimizer, version = trainer._optimizer, mxnet_version or "1.x"
    states = {}
    for mx_index, state in mx.states.items():
        i = index_map[mx_index]
        where = f"{path}: state {mx_index} ({names[i]!r})"
        states[i] = convert_state(state, optimizer, trainer._params[i], version, where)
    updater = get_updater(optimizer) if mx.has_optimizer else trainer._updater
    updater.states = states
    updater.states_synced = dict.fromkeys(states, True)
    trainer._optimizer, trainer._updater = optimizer, updater


def load_trainer_states(trainer, path, **options) -> bool:
    """``Trainer.load_states``'s hook: resumes from an MXNet states file (True), refuses an MXNet parameters
    file, and leaves anything else to optzoo's own loader (False)."""
    kind = file_kind(path)
    if kind == "pickle":
        resume_trainer(trainer, path, **options)
        return True
    if kind in ("npz", "legacy"):
        raise CheckpointError(f"{path}: is an MXNet parameters file, not optimizer states: load it into the model "
                              "with optzoo.mxnet.load_params_into(model, path)")
    return False


def _read_pickled(reader, *args) -> MXNetStates:
    """Reads a pickle handed to optzoo's own loaders: the error says both formats were tried."""
    try:
        return reader(*args)
    except CheckpointError as err:
        raise CheckpointError(f"not an optzoo checkpoint (bad magic), and not a readable MXNet states file: {err}"
                              ) from None


def set_updater_states(updater, data: bytes, source: str = "MXNet states",
                       mxnet_version: str | None = None) -> None:
    """``Updater.set_states`` of an MXNet ``get_states()`` blob: states keyed by MXNet's indices; a dumped
    optimizer replaces the updater's (keeping its ``param_dict``)."""
    mx = _read_pickled(loads_states, bytes(data), source)
    if mx.has_optimizer:
        optimizer = build_optimizer(mx, param_dict=updater.optimizer.param_dict)
        version = mx.version
    else:
        optimizer, version = updater.optimizer, mxnet_version or "1.x"
    states = {i: convert_state(s, optimizer, None, version, f"{source}: state {i!r}") for i, s in mx.states.items()}
    updater.optimizer, updater.states = optimizer, states
    updater.states_synced = dict.fromkeys(states, False)
