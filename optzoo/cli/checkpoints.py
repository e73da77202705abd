"""``optzoo inspect FILE`` and ``optzoo convert model.params [trainer.states] --out DIR``.

``inspect`` prints what an MXNet parameters file (``.params``, ``mx.nd.save``), an MXNet states file
(``.states``) or an optzoo checkpoint holds: names, shapes and dtypes; the optimizer, its hyperparameters,
``num_update``, update counts and the lr scheduler. Nothing is executed and MXNet is not needed.

``convert`` writes ``DIR/model.safetensors`` (a torch ``state_dict``: Gluon names with BatchNorm's
``gamma``/``beta`` renamed to ``weight``/``bias`` and ``arg:``/``aux:`` prefixes dropped) and, given a states
file, ``DIR/trainer.states``: an optzoo Trainer checkpoint keyed by the same names, loadable with
``optzoo.Trainer(model, ...).load_states(...)``. The Trainer's parameters are every name in the params file
except BatchNorm running statistics (buffers in torch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import CLIError

__all__ = ["add_parsers", "describe", "convert"]

_BUFFERS = ("running_mean", "running_var", "moving_mean", "moving_var")


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _tensor_rows(tensors: dict) -> list[dict]:
    return [{"name": str(k), "shape": list(t.shape), "dtype": _dtype(t)} for k, t in tensors.items()]


def _state_rows(states: dict) -> list[dict]:
    from ..optimizer.base import _leaves

    return [{"index": k, "tensors": [{"shape": list(t.shape), "dtype": _dtype(t)} for t in _leaves(s)]}
            for k, s in states.items()]


def describe(path) -> dict:
    """A JSON-able description of a checkpoint file (what ``optzoo inspect --json`` prints)."""
    from .. import mxnet
    from ..serialization import load

    kind = mxnet.file_kind(path)
    if kind in ("npz", "legacy"):
        tensors = mxnet.load_params(path)
        return {"file": str(path), "format": "MXNet parameters (" + (".npz, MXNet 2.0" if kind == "npz" else
                                                                     "NDArray binary") + ")",
                "tensors": _tensor_rows(tensors), "count": len(tensors),
                "elements": sum(t.numel() for t in tensors.values())}
    if kind == "pickle":
        mx = mxnet.load_states(path)
        out = {"file": str(path), "format": f"MXNet optimizer states ({mx.version or 'no optimizer dumped'})",
               "states": _state_rows(mx.states)}
        if mx.has_optimizer:
            from ..mxnet.states import optimizer_arguments

            try:
                hyper = optimizer_arguments(mx)
            except Exception as err:  # still show what the file holds
                hyper = {"error": str(err)}
            out.update(optimizer=mx.optimizer_class, hyperparameters=hyper, num_update=mx.num_update,
                       begin_num_update=mx.begin_num_update, update_counts=mx.index_update_counts,
                       idx2name=mx.idx2name, lr_mult=mx.lr_mult, wd_mult=mx.wd_mult,
                       lr_scheduler=None if mx.scheduler_class is None else {
                           "type": mx.scheduler_class, **mx.scheduler_attrs})
        return out
    if kind == "safetensors" and not _is_optzoo_safetensors(path):
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors' own errors: a malformed file
            raise CLIError(f"{path}: not a readable safetensors file ({err})") from None
        return {"file": str(path), "format": "safetensors (tensors only)", "tensors": _tensor_rows(tensors)}
    if kind in ("optzoo", "safetensors"):
        tensors, meta = load(path)
        out = {"file": str(path), "format": "optzoo " + str((meta or {}).get("format", (meta or {}).get("kind"))),
               "tensors": _tensor_rows(tensors)}
        if isinstance(meta, dict) and isinstance(meta.get("optimizer"), dict):
            opt = meta["optimizer"]
            out.update(optimizer=opt.get("name"), hyperparameters=opt.get("config"),
                       num_update=opt.get("num_update"), lr_scheduler=opt.get("lr_scheduler"),
                       update_counts=meta.get("counts"), params=meta.get("params"))
        return out
    raise CLIError(f"{path}: not an MXNet or optzoo checkpoint (unrecognised first bytes)")


def _is_optzoo_safetensors(path) -> bool:
    """Whether a safetensors file carries optzoo's metadata (a checkpoint) rather than tensors alone."""
    import json
    import struct

    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        if size > 100_000_000:
            return False
        try:
            header = json.loads(f.read(size))
        except ValueError:
            return True  # malformed: the optzoo loader says what is wrong
    return isinstance(header, dict) and any(key.startswith("optzoo") for key in (header.get("__metadata__") or {}))


def _print(info: dict, out) -> None:
    print(f"{info['file']}: {info['format']}", file=out)
    for key in ("optimizer", "num_update", "begin_num_update"):
        if info.get(key) is not None:
            print(f"  {key}: {info[key]}", file=out)
    if info.get("hyperparameters"):
        print("  hyperparameters: " + ", ".join(f"{k}={v!r}" for k, v in sorted(info["hyperparameters"].items())),
              file=out)
    if info.get("lr_scheduler"):
        print(f"  lr_scheduler: {info['lr_scheduler']}", file=out)
    for key in ("update_counts", "idx2name", "lr_mult", "wd_mult"):
        if info.get(key):
            print(f"  {key}: {info[key]}", file=out)
    if "tensors" in info:
        width = max((len(r["name"]) for r in info["tensors"]), default=4)
        print(f"  {len(info['tensors'])} tensors:", file=out)
        for row in info["tensors"]:
            print(f"    {row['name']:<{width}}  {row['dtype']:<9} {tuple(row['shape'])}", file=out)
    if "states" in info:
        print(f"  {len(info['states'])} states:", file=out)
        for row in info["states"]:
            parts = ", ".join(f"{t['dtype']} {tuple(t['shape'])}" for t in row["tensors"]) or "None"
            print(f"    [{row['index']}] {parts}", file=out)


def convert(params_path, states_path, out_dir, optimizer=None, optimizer_params=None, param_names=None) -> list[Path]:
    """Writes ``model.safetensors`` (and ``trainer.states``) into ``out_dir``; returns the written paths."""
    import torch
    from safetensors.torch import save_file

    from .. import mxnet
    from ..serialization import atomic_write, dumps
    from ..trainer import Trainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = mxnet.load_params(params_path)
    names = {n: mxnet.names.torch_param_name(n) for n in params}
    if len(set(names.values())) != len(names):
        raise CLIError(f"{params_path}: two names map to one torch name after renaming")
    state_dict = {names[n]: t.contiguous() for n, t in params.items()}
    written = [out_dir / "model.safetensors"]
    save_file(state_dict, str(written[0]), metadata={"source": str(params_path), "converted_by": "optzoo"})
    if states_path is None:
        return written
    mx = mxnet.load_states(states_path)
    trainable = {k: torch.nn.Parameter(t.float().clone() if not t.is_floating_point() else t.clone())
                 for k, t in state_dict.items() if not k.endswith(_BUFFERS)}
    if mx.has_optimizer:  # the file's optimizer, as it is
        trainer = Trainer(trainable, mx.optimizer_name)
    elif optimizer is None:
        raise CLIError(f"{states_path}: holds no optimizer (a Module file): pass --optimizer and --optimizer-params")
    else:
        trainer = Trainer(trainable, optimizer, optimizer_params or {})
    # Gluon 2.0 numbers every parameter of the params file in sorted-name order; for 1.x and Module files the
    # order must be given (load_states refuses to guess it)
    guessable = mx.has_optimizer and mx.version == "2.0" and not mx.idx2name
    order = param_names or (sorted(params) if guessable else None)
    trainer.load_states(states_path, param_names=order, allow_optimizer_change=True)
    state = trainer.state_dict()
    written.append(out_dir / "trainer.states")
    atomic_write(written[1], dumps(state["tensors"], state["meta"]))
    return written


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show what an MXNet or optzoo checkpoint holds",
        description="Print the tensors (names, shapes, dtypes) of an MXNet .params / mx.nd.save file, or the "
                    "optimizer, hyperparameters, update counts, scheduler and states of an MXNet .states file "
                    "or an optzoo checkpoint. Reads without MXNet and runs no code from the file.")
    parser.add_argument("file", help="the checkpoint file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run_inspect)
    parser = subparsers.add_parser(
        "convert", help="convert MXNet .params (+ .states) to safetensors and an optzoo Trainer checkpoint",
        description="Write OUT/model.safetensors (a torch state_dict) from an MXNet parameters file and, given "
                    "a states file, OUT/trainer.states (an optzoo Trainer checkpoint for the same names).")
    parser.add_argument("params", help="MXNet parameters file (.params, -0000.params, mx.nd.save output)")
    parser.add_argument("states", nargs="?", help="MXNet optimizer states file (.states)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--optimizer", help="optimizer name, for states files without a dumped optimizer")
    parser.add_argument("--optimizer-params", default="{}", help="JSON dict of optimizer arguments")
    parser.add_argument("--param-names", help="JSON list: MXNet's parameter names in optimizer-index order "
                                              "(needed for MXNet 1.x Gluon and Module files)")
    parser.set_defaults(run=run_convert)


def _json_arg(text: str, what: str, kind: type):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CLIError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, kind):
        raise CLIError(f"{what} must be a JSON {kind.__name__}")
    return value


def run_inspect(args) -> int:
    from ..serialization import CheckpointError

    if not Path(args.file).is_file():
        raise CLIError(f"{args.file}: no such file")
    try:
        info = describe(args.file)
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    if args.json:
        json.dump(info, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        _print(info, sys.stdout)
    return 0


def run_convert(args) -> int:
    from ..serialization import CheckpointError

    for path in (args.params, args.states):
        if path is not None and not Path(path).is_file():
            raise CLIError(f"{path}: no such file")
    hyper = _json_arg(args.optimizer_params, "--optimizer-params", dict)
    order = None if args.param_names is None else _json_arg(args.param_names, "--param-names", list)
    try:
        written = convert(args.params, args.states, args.out, args.optimizer, hyper, order)
    except (CheckpointError, ValueError) as err:
        raise CLIError(str(err)) from None
    for path in written:
        print(f"wrote {path}")
    return 0
