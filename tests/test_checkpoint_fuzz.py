"""Every loader turns every malformed input into a CheckpointError/ValueError (hypothesis fuzzing), old files still
load, saves are atomic, and a checkpoint never silently switches the optimizer.

Loaders: ``serialization.loads``/``load``, ``Trainer.load_states``/``load_state_dict``, ``Updater.set_states``,
``TorchOptimizer.load_state_dict``. CI runs a few thousand cases (well under a minute); ``OPTZOO_FULL=1`` ten
times as many.
"""

from __future__ import annotations

import copy
import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from legacy_checkpoint import dumps_v1
from safetensors.torch import load_file

from optzoo import TorchOptimizer, serialization
from optzoo import optimizer as opt
from optzoo.serialization import CheckpointError
from optzoo.trainer import Trainer

FULL = os.environ.get("OPTZOO_FULL") == "1"
SCALE = 10 if FULL else 1


def fuzz(examples: int):
    """Hypothesis settings of a fuzz test: ``examples`` cases in CI (derandomized), ten times as many with
    OPTZOO_FULL=1."""
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=not FULL, database=None,
                    suppress_health_check=list(HealthCheck))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def _trained(name="adam", **kwargs):
    model = _model()
    trainer = Trainer(model, name, {"learning_rate": 0.1, **kwargs})
    model(torch.ones(2, 3)).sum().backward()
    trainer.step(2)
    return model, trainer


_, TRAINER = _trained()
STATE = TRAINER.state_dict()
BLOB = serialization.dumps(STATE["tensors"], STATE["meta"])
LEGACY_BLOB = dumps_v1(STATE["tensors"], STATE["meta"])
TENSORS, META = serialization.loads(BLOB)


def _updater_blob():
    updater = opt.get_updater(opt.create("adam"))
    updater([0, 1], [torch.ones(3), torch.ones(2, 2)], [torch.zeros(3), torch.zeros(2, 2)])
    return updater.get_states(dump_optimizer=True)


UPDATER_BLOB = _updater_blob()


def _same(result, expected) -> bool:
    tensors, meta = result
    return meta == expected[1] and tensors.keys() == expected[0].keys() and all(
        tensors[k].dtype == v.dtype and torch.equal(tensors[k], v) for k, v in expected[0].items())


def _flip(blob: bytes, edits) -> bytes:
    data = bytearray(blob)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data)


# ---------------------------------------------------------------------------------------- the container
@pytest.mark.parametrize("blob", [BLOB, LEGACY_BLOB], ids=["safetensors", "first-format"])
def test_every_truncation_is_a_checkpoint_error(blob):
    for length in range(len(blob)):
        with pytest.raises(CheckpointError):
            serialization.loads(blob[:length])
    with pytest.raises(CheckpointError):
        serialization.loads(blob + b"\0")  # trailing bytes


@fuzz(1500)
@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4))
def test_byte_flips_are_detected(edits):
    """The checksum catches every change of a tensor byte or of the metadata; a change the JSON parser cannot
    see (header padding, whitespace) loads the same content."""
    try:
        result = serialization.loads(_flip(BLOB, edits))
    except CheckpointError:
        return
    assert _same(result, (TENSORS, META))


@fuzz(500)
@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4))
def test_first_format_byte_flips_are_checkpoint_errors_or_load(edits):
    try:
        tensors, _ = serialization.loads(_flip(LEGACY_BLOB, edits))  # no checksum: flipped values may load
    except CheckpointError:
        return
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())  # and no other exception escaped


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=12)
ENTRY = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "X"]) | JSON,
                               "shape": st.lists(st.integers(-2, 6), max_size=3) | JSON,
                               "data_offsets": st.lists(st.integers(-2, 200), max_size=3) | JSON})
METADATA = st.dictionaries(st.sampled_from(["optzoo.format_version", "optzoo.meta", "optzoo.sha256", "x"]),
                           st.sampled_from(["1", "2", "3", "{}", "null"]) | st.text(max_size=6) | JSON, max_size=4)


@fuzz(400)
@given(st.dictionaries(st.text(max_size=4), ENTRY | JSON, max_size=3), METADATA, st.binary(max_size=64))
def test_crafted_headers_are_checkpoint_errors(entries, metadata, data):
    header = json.dumps({**entries, "__metadata__": metadata}).encode()
    with pytest.raises(CheckpointError):
        serialization.loads(struct.pack("<Q", len(header)) + header + data)


@fuzz(300)
@given(JSON, st.binary(max_size=32))
def test_crafted_first_format_headers_are_checkpoint_errors(header, data):
    raw = json.dumps(header).encode()
    try:
        serialization.loads(serialization.LEGACY_MAGIC + struct.pack("<Q", len(raw)) + raw + data)
    except CheckpointError:
        return
    assert isinstance(header, dict) and header.get("format_version") == 1


def test_old_files_still_load_and_resume(tmp_path):
    path = tmp_path / "old.states"
    path.write_bytes(LEGACY_BLOB)
    assert _same(serialization.load(path), (TENSORS, META))
    model = _model()
    trainer = Trainer(model, "adam", {"learning_rate": 0.1})
    trainer.load_states(path)
    assert trainer.optimizer.num_update == 1
    for name, tensor in trainer.state_dict()["tensors"].items():
        assert torch.equal(tensor, STATE["tensors"][name])


def test_saved_files_are_plain_safetensors(tmp_path):
    path = tmp_path / "t.states"
    TRAINER.save_states(path)
    tensors = load_file(path)
    assert tensors.keys() == STATE["tensors"].keys()
    assert all(torch.equal(tensors[k], v) for k, v in STATE["tensors"].items())


def test_zeroed_bytes_fail_the_checksum():
    data = bytearray(BLOB)
    data[-16:] = bytes(16)  # the last tensor's bytes
    with pytest.raises(CheckpointError, match="checksum"):
        serialization.loads(bytes(data))


# ---------------------------------------------------------------------------------------- atomic saves
def test_missing_folder_names_the_target(tmp_path):
    target = tmp_path / "no" / "such" / "t.states"
    with pytest.raises(FileNotFoundError, match=str(target).replace(".", r"\.")):
        TRAINER.save_states(target)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "t.states"
    TRAINER.save_states(path)
    before = path.read_bytes()
    monkeypatch.setattr(serialization.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.raises(OSError, match="disk full"):
        TRAINER.save_states(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["t.states"]
    with pytest.raises(TypeError, match="complex"):  # a state that cannot be stored fails before any file opens
        serialization.save(path, {"x": torch.zeros(2, dtype=torch.complex64)}, None)
    assert path.read_bytes() == before


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_files_respect_the_umask_and_replaced_files_keep_their_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        fresh = tmp_path / "fresh.states"
        TRAINER.save_states(fresh)
        assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
        fresh.chmod(0o600)
        TRAINER.save_states(fresh)
        assert fresh.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------------------- the loaders
def test_optimizer_switch_on_load_needs_consent(tmp_path):
    path = tmp_path / "adam.states"
    TRAINER.save_states(path)
    sgd = Trainer(_model(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    with pytest.raises(ValueError, match="'adam' optimizer, but this one uses 'sgd'.*allow_optimizer_change"):
        sgd.load_states(path)
    assert isinstance(sgd.optimizer, opt.SGD) and sgd._updater.states == {}
    sgd.load_states(path, allow_optimizer_change=True)
    assert isinstance(sgd.optimizer, opt.Adam)
    updater = opt.get_updater(opt.create("sgd"))
    with pytest.raises(ValueError, match="allow_optimizer_change"):
        updater.set_states(UPDATER_BLOB)
    updater.set_states(UPDATER_BLOB, allow_optimizer_change=True)
    assert isinstance(updater.optimizer, opt.Adam)


def test_states_of_wrong_shape_or_dtype_are_rejected_on_load():
    for edit, match in [(lambda t: t.reshape(t.shape[::-1]) if t.dim() == 2 else t.reshape(1, -1), "shape"),
                        (lambda t: t.double(), "float64")]:
        state = copy.deepcopy(STATE)
        name = sorted(state["tensors"])[0]
        state["tensors"][name] = edit(state["tensors"][name])
        with pytest.raises(ValueError, match=match):
            Trainer(_model(), "adam").load_state_dict(state)


@st.composite
def mutated_meta(draw):
    meta = copy.deepcopy(META)
    node, path = meta, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        if not isinstance(node[key], (dict, list)):
            break
        node = node[key]
    if not path:
        return draw(JSON)
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON)
    return meta


@st.composite
def mutated_tensors(draw):
    tensors = dict(TENSORS)
    for name in draw(st.lists(st.sampled_from(sorted(tensors)), max_size=2, unique=True)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            del tensors[name]
        elif choice == 1:
            tensors[name] = tensors[name].to(draw(st.sampled_from([torch.float64, torch.float16, torch.int64,
                                                                   torch.bool])))
        else:
            tensors[name] = torch.zeros(draw(st.lists(st.integers(0, 5), max_size=3)))
    return tensors


@fuzz(400)
@given(mutated_meta(), mutated_tensors())
def test_trainer_loader_rejects_crafted_checkpoints(meta, tensors):
    """Well-formed files (a valid checksum) with crafted content: a ValueError/CheckpointError or a Trainer that
    steps."""
    model = _model()
    trainer = Trainer(model, "adam", {"learning_rate": 0.1})
    try:
        blob = serialization.dumps(tensors, meta)
    except ValueError:  # metadata JSON cannot hold (inf): nothing to load
        return
    try:
        loaded_tensors, loaded_meta = serialization.loads(blob)
        trainer._restore({"meta": loaded_meta, "tensors": loaded_tensors}, copy=False)
    except (ValueError, TypeError) as err:  # TypeError: only for a state that is not a dict at all
        assert isinstance(err, ValueError) or "'meta' and 'tensors'" in str(err)
        return
    try:
        model(torch.ones(2, 3)).sum().backward()
        trainer.step(2)
    except ValueError:
        pass


@fuzz(500)
@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=3))
def test_updater_loader_rejects_corrupt_blobs(edits):
    updater = opt.get_updater(opt.create("adam"))
    try:
        updater.set_states(_flip(UPDATER_BLOB, edits))
    except CheckpointError:
        return
    updater([0, 1], [torch.ones(3), torch.ones(2, 2)], [torch.zeros(3), torch.zeros(2, 2)])


def _torch_state():
    model = _model()
    topt = TorchOptimizer(model.parameters(), "adam", learning_rate=0.1)
    model(torch.ones(2, 3)).sum().backward()
    topt.step()
    return topt.state_dict()


TORCH_STATE = _torch_state()


@st.composite
def mutated_torch_state(draw):
    state = copy.deepcopy(TORCH_STATE)
    pid = draw(st.sampled_from(sorted(state["state"])))
    entry = state["state"][pid]
    keys = sorted(k for k in entry if k.startswith("state"))  # the flat state entries ("state.mean", ...)
    choice = draw(st.integers(0, 6))
    if choice == 0:
        entry[draw(st.sampled_from(keys))] = torch.zeros(draw(st.lists(st.integers(0, 4), max_size=3)))
    elif choice == 1:
        del entry[draw(st.sampled_from(keys))]
    elif choice == 2:
        entry[draw(st.sampled_from(keys))] = draw(JSON)
    elif choice == 3:
        entry["step"] = draw(JSON)
    elif choice == 4:  # the nested format of earlier versions, with another optimizer's or an unknown kind
        items = [entry[k] for k in keys]
        state["state"][pid] = {"step": entry["step"], "state": {
            "kind": draw(st.sampled_from(["tuple", "LAMBState", "FTMLState", "nope"])),
            "items": items[:draw(st.integers(0, len(items)))]}}
    elif choice == 5:
        entry["state." + draw(st.sampled_from(["bogus", "0", "mean.x"]))] = torch.zeros(3)
    else:
        state["param_groups"][0][draw(st.sampled_from(["lr", "wd", "params"]))] = draw(JSON)
    return state


@fuzz(400)
@given(mutated_torch_state())
def test_torch_optimizer_loader_rejects_crafted_state_dicts(state):
    model = _model()
    topt = TorchOptimizer(model.parameters(), "adam", learning_rate=0.1)
    try:
        topt.load_state_dict(state)
    except ValueError:
        return
    model(torch.ones(2, 3)).sum().backward()
    topt.step()
