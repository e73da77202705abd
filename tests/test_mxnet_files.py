"""optzoo.mxnet's readers on crafted and corrupt files: every MXNet dtype, record version and storage type, the
restricted unpickler (a hostile pickle never runs), clear errors naming the file, and a fuzz test. The oracle
test at the end checks that tests/mxnet_files.py writes exactly the bytes real MXNet writes."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mxnet_files import adam_attrs, csr_record, legacy_file, record, row_sparse_record, states_pickle
from oracle import run_mxnet

from optzoo import Trainer, lr_scheduler, mxnet
from optzoo.mxnet.ndarray import DTYPES
from optzoo.optimizer import create, get_updater
from optzoo.serialization import CheckpointError


def _sample(dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.tensor([[True, False, True], [False, False, True]])
    if dtype.is_floating_point:
        return torch.arange(6, dtype=torch.float32).reshape(2, 3).div(3).to(dtype)
    return torch.arange(6).reshape(2, 3).to(dtype)


def _write(tmp_path, data: bytes, name="x.params"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_every_dtype_code_and_record_version(tmp_path, version):
    tensors = {f"t{code}": _sample(dtype) for code, dtype in DTYPES.items()}
    path = _write(tmp_path, legacy_file([record(t, version) for t in tensors.values()], list(tensors)))
    loaded = mxnet.load_params(path)
    assert list(loaded) == list(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert torch.equal(loaded[name].view(torch.uint8), t.view(torch.uint8)), name


def test_list_form_and_scalars(tmp_path):
    path = _write(tmp_path, legacy_file([record(torch.ones(2)), record(torch.tensor(5.0), 3)]))
    loaded = mxnet.load_params(path)
    assert list(loaded) == ["0", "1"] and loaded["1"].shape == () and loaded["1"].item() == 5.0


def test_sparse_storage_dense_and_torch(tmp_path):
    values, rows = np.arange(8, dtype=np.float32).reshape(2, 4), np.array([1, 3])
    csr = csr_record(np.array([1.0, 2.0, 3.0]), np.array([0, 2, 2, 3]), np.array([0, 2, 1]), (3, 3))
    path = _write(tmp_path, legacy_file([row_sparse_record(values, rows, (5, 4)), csr], ["rs", "cs"]))
    dense = mxnet.load_params(path)
    expected = np.zeros((5, 4), np.float32)
    expected[rows] = values
    np.testing.assert_array_equal(dense["rs"].numpy(), expected)
    np.testing.assert_array_equal(dense["cs"].numpy(), [[1, 0, 2], [0, 0, 0], [0, 3, 0]])
    sparse = mxnet.load_params(path, sparse="torch")
    assert sparse["rs"].layout == torch.sparse_coo and sparse["cs"].layout == torch.sparse_csr
    np.testing.assert_array_equal(sparse["rs"].to_dense().numpy(), expected)
    np.testing.assert_array_equal(sparse["cs"].to_dense().numpy(), dense["cs"].numpy())


def test_npz_with_bfloat16(tmp_path):
    path = tmp_path / "model.params"
    np.savez(path.with_suffix(""), **{"0.weight": np.ones((2, 3), np.float32), "0.bias": np.arange(3)})
    os.replace(str(path.with_suffix("")) + ".npz", path)
    bf16 = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    header = "{'descr': '<b2', 'fortran_order': False, 'shape': (3,), }".ljust(117) + "\n"
    blob = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bf16.view(torch.int16).numpy(
    ).tobytes()
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("1.weight.npy", blob)
    loaded = mxnet.load_params(path)
    assert loaded["0.weight"].dtype == torch.float32 and loaded["0.bias"].tolist() == [0, 1, 2]
    assert loaded["1.weight"].dtype == torch.bfloat16 and torch.equal(loaded["1.weight"], bf16)


GOOD = legacy_file([record(torch.ones(2, 3)), record(torch.zeros(4, dtype=torch.float16))], ["a", "b"])


@pytest.mark.parametrize("data, message", [
    (GOOD[:-3], "truncated"),
    (GOOD[:40], "truncated"),
    (b"\x13\x01" + GOOD[2:], "not an MXNet"),
    (GOOD[:8], "truncated"),
    (GOOD.replace(struct.pack("<ii", 1, 0) + struct.pack("<i", 2), struct.pack("<ii", 1, 0) + struct.pack("<i", 99)),
     "unknown MXNet dtype code 99"),
    (GOOD + b"xx", "unexpected bytes"),
    (legacy_file([record(torch.ones(2)), record(torch.ones(2))], ["w", "w"]), "appears twice"),
    (legacy_file([record(torch.ones(2))], ["a", "b"]), "1 arrays but 2 names"),
    (struct.pack("<QQQ", 0x112, 0, 1 << 60), "claims"),
    (legacy_file([struct.pack("<Ii", 0xF993FAC9, 7)]), "unknown storage type 7"),
    (legacy_file([struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack("<iq", 1, -5)]), "negative extent"),
    (legacy_file([struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack("<iq", 1, 1 << 40) + b"\0" * 12]), "truncated"),
    (b"PK\x03\x04garbage", "corrupt .npz"),
    (b"\x80\x04N.", "pickled optimizer-states file"),
])
def test_bad_params_files_name_the_file_and_the_problem(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(CheckpointError, match=message) as err:
        mxnet.load_params(path)
    assert str(path) in str(err.value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch /tmp/optzoo-evil')",))


@pytest.mark.parametrize("payload, culprit", [("system", r"(posix|os)\.system"),
                                             ("eval", r"(builtins|__builtin__)\.eval")])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, payload, culprit):
    marker = tmp_path / "pwned"
    evil = _Evil(marker) if payload == "system" else _EvalEvil()
    for blob in (pickle.dumps(evil), pickle.dumps(({0: evil}, None)), pickle.dumps(evil, protocol=0)):
        path = _write(tmp_path, blob, "trainer.states")
        with pytest.raises(CheckpointError, match=culprit) as err:
            mxnet.load_states(path)
        assert str(path) in str(err.value) and "nothing was executed" in str(err.value)
        net = torch.nn.Linear(2, 2)
        trainer = Trainer(net, "sgd", {"learning_rate": 0.1})
        with pytest.raises(CheckpointError, match=culprit):
            trainer.load_states(path)
        with pytest.raises(CheckpointError, match=culprit):
            get_updater(create("sgd")).set_states(blob)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Evil(marker)))  # the payload is real: plain pickle runs it
    assert marker.exists()


def test_states_file_fields_and_layouts(tmp_path):
    mean, var = torch.full((3, 2), 0.5), torch.full((3, 2), 0.25)
    sched = {"base_lr": 0.05, "warmup_steps": 1, "warmup_final_lr": 0.1, "warmup_begin_lr": 0,
             "warmup_mode": "linear", "step": 2, "factor": 0.5, "stop_factor_lr": 1e-08, "count": 2}
    blob = states_pickle({0: (mean, var), 1: (mean[:, 0], var[:, 0])}, adam_attrs(), sched)
    path = _write(tmp_path, blob, "trainer.states")
    mx = mxnet.load_states(path)
    assert (mx.version, mx.optimizer_class, mx.num_update, mx.scheduler_class) == ("2.0", "Adam", 3,
                                                                                   "FactorScheduler")
    assert mx.index_update_counts == {0: 3, 1: 3} and mx.optimizer_attrs["rescale_grad"] == 0.2
    assert torch.equal(mx.states[0][1], var)
    # an optzoo Trainer with the same settings resumes: scheduler rebuilt from the *original* rate
    net = torch.nn.Linear(2, 3)  # sorted names: bias (index 0 would be (3,)), weight
    trainer = Trainer({"a": net.weight, "b": net.bias}, "adam", {
        "learning_rate": 0.1, "lr_scheduler": lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.1,
                                                                            warmup_steps=1)})
    trainer.load_states(path)
    assert trainer.optimizer.num_update == 3 and trainer.learning_rate == pytest.approx(0.05)
    assert trainer.optimizer.lr_scheduler(5) == pytest.approx(0.025)  # decayed once more, not twice
    assert torch.equal(trainer._updater.states[0].var, var)
    # Updater.set_states takes the same bytes, keyed by MXNet's indices
    updater = get_updater(create("sgd"))
    updater.set_states(blob)
    assert type(updater.optimizer).__name__ == "Adam" and torch.equal(updater.states[1].mean, mean[:, 0])


def test_trainer_refuses_other_optimizer_or_settings_unless_overridden(tmp_path):
    blob = states_pickle({0: (torch.zeros(3), torch.zeros(3))}, adam_attrs(_all_index_update_counts={0: {0: 3}},
                                                                           beta1=0.8))
    path = _write(tmp_path, blob, "t.states")
    bias = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="holds a Adam optimizer, the Trainer has SGD"):
        Trainer({"bias": bias}, "sgd").load_states(path)
    trainer = Trainer({"bias": bias}, "adam", {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="beta1: Trainer 0.9, file 0.8"):
        trainer.load_states(path)
    assert trainer.optimizer.beta1 == 0.9 and not trainer._updater.states  # unchanged
    trainer.load_states(path, allow_optimizer_change=True)
    assert trainer.optimizer.beta1 == 0.8 and trainer.optimizer._index_update_count == {0: 3}


def test_scheduler_that_does_not_replay_is_refused(tmp_path):
    sched = {"base_lr": 0.07, "warmup_steps": 0, "warmup_final_lr": 0.1, "warmup_begin_lr": 0,
             "warmup_mode": "linear", "step": 2, "factor": 0.5, "stop_factor_lr": 1e-08, "count": 2}
    path = _write(tmp_path, states_pickle({0: (torch.zeros(3), torch.zeros(3))}, adam_attrs(), sched), "t.states")
    with pytest.raises(CheckpointError, match="learning rate changed"):
        mxnet.states.build_optimizer(mxnet.load_states(path))


@pytest.mark.parametrize("class_name", ["LARS", "Test"])
def test_mxnet1_rules_that_differ_from_2_0_are_refused(tmp_path, class_name):
    attrs = {k: v for k, v in adam_attrs().items() if k != "use_fused_step"}  # 1.x has no use_fused_step
    path = _write(tmp_path, states_pickle({0: torch.zeros(3)}, attrs, version="1.x", class_name=class_name),
                  "t.states")
    with pytest.raises(CheckpointError, match=f"MXNet 1.x's {class_name} .* is a different rule"):
        mxnet.states.build_optimizer(mxnet.load_states(path))


def test_trainer_load_states_points_params_files_to_load_params_into(tmp_path):
    path = _write(tmp_path, GOOD)
    with pytest.raises(CheckpointError, match="MXNet parameters file.*load_params_into"):
        Trainer(torch.nn.Linear(2, 2), "sgd").load_states(path)


@pytest.mark.parametrize("header_length", [0x80, 0x380, 0x28, 0x7D, 0x63])
def test_safetensors_files_are_not_taken_for_pickles(header_length):
    from optzoo.mxnet.ndarray import sniff

    blob = struct.pack("<Q", header_length) + b'{"__metadata__":{}}'
    assert sniff(blob[:16]) == "safetensors"
    for protocol in (0, 2, 4):
        assert sniff(pickle.dumps({0: None}, protocol=protocol)[:16]) == "pickle"


def test_numpy_scalar_hyperparameters_are_read_without_numpy_pickles(tmp_path):
    attrs = adam_attrs(beta1=np.float32(0.5), wd=np.float64(1e-4), num_update=np.int64(3))
    path = _write(tmp_path, states_pickle({0: (torch.zeros(3), torch.zeros(3))}, attrs), "t.states")
    mx = mxnet.load_states(path)
    assert mx.optimizer_attrs["beta1"] == 0.5 and mx.optimizer_attrs["wd"] == 1e-4 and mx.num_update == 3
    assert type(mx.optimizer_attrs["num_update"]) is int


def test_state_shape_mismatch_is_named(tmp_path):
    path = _write(tmp_path, states_pickle({0: (torch.zeros(4), torch.zeros(4))}, adam_attrs()), "t.states")
    trainer = Trainer({"bias": torch.nn.Parameter(torch.zeros(3))}, "adam", {"learning_rate": 0.1})
    with pytest.raises(CheckpointError, match=r"state 0 \('bias'\): state tensor 0 has shape \(4,\)"):
        trainer.load_states(path)


def test_load_params_into_rules_and_errors(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    want = {k: torch.randn(v.shape) for k, v in net.state_dict().items() if "num_batches" not in k}
    gluon = {k.replace("1.weight", "1.gamma").replace("1.bias", "1.beta"): v for k, v in want.items()}
    path = _write(tmp_path, legacy_file([record(v) for v in gluon.values()], list(gluon)))
    report = mxnet.load_params_into(net, path)
    assert not report["unmatched"] and not report["missing"] and report["mapping"]["1.gamma"] == "1.weight"
    for k, v in want.items():
        assert torch.equal(net.state_dict()[k], v), k
    # 1.x prefixed names (save_checkpoint): layers paired in order with the torch layers that hold parameters
    prefixed = {"arg:dense0_weight": want["0.weight"], "arg:dense0_bias": want["0.bias"],
                "arg:bn0_gamma": want["1.weight"], "arg:bn0_beta": want["1.bias"],
                "arg:dense1_weight": want["2.weight"], "arg:dense1_bias": want["2.bias"],
                "aux:bn0_moving_mean": want["1.running_mean"],
                "aux:bn0_moving_var": want["1.running_var"]}
    path = _write(tmp_path, legacy_file([record(v) for v in prefixed.values()], list(prefixed)), "p2.params")
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    report = mxnet.load_params_into(fresh, path)
    assert report["mapping"]["aux:bn0_moving_var"] == "1.running_var"
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in want.items())
    # every problem in one error; nothing copied
    bad = {"0.weight": torch.zeros(5, 4), "0.bias": torch.zeros(3, dtype=torch.float64), "extra": torch.zeros(1)}
    path = _write(tmp_path, legacy_file([record(v) for v in bad.values()], list(bad)), "bad.params")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError) as err:
        mxnet.load_params_into(fresh, path)
    text = str(err.value)
    for piece in ("'0.weight' -> '0.weight': file has (5, 4)", "float64", "extra", "2.weight", str(path)):
        assert piece in text, piece
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())
    report = mxnet.load_params_into(fresh, path, strict=False)
    assert report["loaded"] == [] and len(report["mismatched"]) == 2 and report["unmatched"] == ["extra"]
    report = mxnet.load_params_into(fresh, path, mapping={"extra": None, "0.weight": None, "0.bias": None},
                                    strict=False)
    assert report["unmatched"] == ["0.weight", "0.bias", "extra"]


def test_module_param_names_follow_the_graph(tmp_path):
    nodes = [{"op": "null", "name": "data"}, {"op": "null", "name": "fc1_weight"}, {"op": "null", "name": "fc1_bias"},
             {"op": "FullyConnected", "name": "fc1", "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]]},
             {"op": "null", "name": "bn_gamma"}, {"op": "null", "name": "bn_beta"},
             {"op": "null", "name": "bn_moving_mean"}, {"op": "null", "name": "bn_moving_var"},
             {"op": "BatchNorm", "name": "bn", "inputs": [[3, 0, 0], [4, 0, 0], [5, 0, 0], [6, 0, 1], [7, 0, 1]]},
             {"op": "null", "name": "softmax_label"},
             {"op": "SoftmaxOutput", "name": "softmax", "inputs": [[8, 0, 0], [9, 0, 0]]}]
    sym = tmp_path / "m-symbol.json"
    sym.write_text(__import__("json").dumps({"nodes": nodes, "arg_nodes": [0, 1, 2, 4, 5, 6, 7, 9],
                                             "heads": [[10, 0, 0]]}))
    names = ["arg:fc1_weight", "arg:fc1_bias", "arg:bn_gamma", "arg:bn_beta", "aux:bn_moving_mean",
             "aux:bn_moving_var"]
    assert mxnet.module_param_names(sym, names) == ["fc1_weight", "fc1_bias", "bn_gamma", "bn_beta"]


# ---------------------------------------------------------------------------------------------- fuzz
def _fuzz_files():
    tensors = [record(torch.arange(6.0).reshape(2, 3)), record(torch.ones(3, dtype=torch.float16), 3),
               row_sparse_record(np.ones((1, 2), np.float32), np.array([1]), (3, 2)),
               csr_record(np.array([1.0]), np.array([0, 1, 1]), np.array([1]), (2, 2))]
    legacy = legacy_file(tensors, ["a", "b", "c", "d"])
    states = states_pickle({0: (torch.zeros(3), torch.ones(3)), 1: None},
                           adam_attrs(), {"base_lr": 0.05, "warmup_steps": 1, "warmup_final_lr": 0.1,
                                          "warmup_begin_lr": 0, "warmup_mode": "linear", "step": 2, "factor": 0.5,
                                          "stop_factor_lr": 1e-08, "count": 2})
    buffer = __import__("io").BytesIO()
    np.savez(buffer, **{"0.weight": np.ones((2, 3), np.float32), "0.bias": np.arange(3, dtype=np.float16)})
    compressed = __import__("io").BytesIO()
    np.savez_compressed(compressed, w=np.arange(40, dtype=np.float32))
    return {"legacy": legacy, "states": states, "npz": buffer.getvalue(), "npz-deflate": compressed.getvalue()}


FUZZ = _fuzz_files()


@settings(max_examples=150 if os.environ.get("OPTZOO_FULL") != "1" else 2000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(FUZZ)), cut=st.integers(0, 10_000), flips=st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4))
def test_fuzzed_files_raise_only_checkpoint_or_value_errors(tmp_path, kind, cut, flips):
    data = bytearray(FUZZ[kind])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    data = bytes(data[: len(data) - cut % (len(data) + 1)] if cut % 3 == 0 else data)
    path = tmp_path / f"fuzz.{kind}"
    path.write_bytes(data)
    for reader in (mxnet.load_params, mxnet.load_states):
        try:
            reader(path)
        except ValueError:  # CheckpointError is a ValueError
            pass
    try:
        mx = mxnet.load_states(path)
        if mx.has_optimizer:
            mxnet.states.build_optimizer(mx)
    except ValueError:
        pass


# ---------------------------------------------------------------------------------------------- oracle
WRITE_ALL = r"""
import numpy as np
for name, dtype in params["dtypes"]:
    values = [[1, 0, 1], [0, 0, 1]] if dtype == "bool" else np.arange(6).reshape(2, 3)
    a = mx.nd.array(values, dtype=dtype)
    mx.nd.save(params["out"] + "/" + name + ".nd", {"x": a})
    mx.nd.save(params["out"] + "/" + name + ".list", [a, a])
"""


@pytest.mark.oracle
@pytest.mark.parametrize("version", ["2.0", "1.9"])
def test_writer_matches_real_mxnet_bytes_for_every_dtype(tmp_path, version):
    names = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "uint8": torch.uint8,
             "int32": torch.int32, "int8": torch.int8, "int64": torch.int64, "bool": torch.bool}
    if version == "2.0":  # 1.9's Python front end has no 16/32/64-bit unsigned or int16 arrays
        names.update(int16=torch.int16, uint16=torch.uint16, uint32=torch.uint32, uint64=torch.uint64)
    run_mxnet(WRITE_ALL, params={"out": str(tmp_path), "dtypes": [[n, n] for n in names]}, version=version)
    for name, dtype in names.items():
        expected = _sample(dtype) if dtype == torch.bool else torch.arange(6).reshape(2, 3).to(dtype)
        real = (tmp_path / f"{name}.nd").read_bytes()
        magic = struct.unpack("<I", real[24:28])[0]
        ours = legacy_file([record(expected, 3 if magic == 0xF993FACA else 2)], ["x"])
        assert real == ours, name
        loaded = mxnet.load_params(tmp_path / f"{name}.list")
        assert list(loaded) == ["0", "1"] and torch.equal(loaded["1"], expected), name


def test_cli_inspect_and_convert_crafted_files(tmp_path, capsys):
    from safetensors.torch import load_file

    from optzoo.cli import main

    params = _write(tmp_path, legacy_file([record(torch.ones(2, 3)), record(torch.zeros(3))],
                                          ["arg:fc_weight", "aux:bn_moving_var"]))
    assert main(["inspect", str(params)]) == 0
    text = capsys.readouterr().out
    assert "arg:fc_weight" in text and "(2, 3)" in text and "NDArray binary" in text
    assert main(["convert", str(params), "--out", str(tmp_path / "out")]) == 0
    assert sorted(load_file(tmp_path / "out" / "model.safetensors")) == ["bn_moving_var", "fc_weight"]
    assert "model.safetensors" in capsys.readouterr().out
    states = _write(tmp_path, states_pickle({0: (torch.zeros(3), torch.ones(3))},
                                            adam_attrs(_all_index_update_counts={0: {0: 7}})), "t.states")
    assert main(["inspect", str(states), "--json"]) == 0
    info = __import__("json").loads(capsys.readouterr().out)
    assert info["optimizer"] == "Adam" and info["update_counts"] == {"0": 7}
    assert info["hyperparameters"]["beta1"] == 0.9
    evil = _write(tmp_path, pickle.dumps(_Evil(tmp_path / "pwned")), "evil.states")
    assert main(["inspect", str(evil)]) == 2
    assert "refusing to load" in capsys.readouterr().err and not (tmp_path / "pwned").exists()
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    capsys.readouterr()
    net = torch.nn.Linear(2, 3)
    trainer = Trainer(net, "adam", {"learning_rate": 0.1})
    net(torch.ones(4, 2)).sum().backward()
    trainer.step(4)
    trainer.save_states(tmp_path / "optzoo.states")
    assert main(["inspect", str(tmp_path / "optzoo.states")]) == 0
    text = capsys.readouterr().out
    assert "optzoo optzoo.trainer" in text and "optimizer: adam" in text and "'weight': 1" in text


def test_updater_set_states_infers_multi_precision_pairs():
    master, mom = torch.ones(3), torch.full((3,), 0.5)
    attrs = adam_attrs(multi_precision=True)
    updater = get_updater(create("sgd"))
    updater.set_states(states_pickle({0: (master, (mom, mom * 2)), 1: (mom, mom * 3)}, attrs))
    assert isinstance(updater.states[0], tuple) and torch.equal(updater.states[0][0], master)
    assert torch.equal(updater.states[0][1].var, mom * 2)  # (master, AdamState) for a float16 weight
    assert torch.equal(updater.states[1].var, mom * 3)  # a float32 weight of the same optimizer: plain state
    weight = torch.ones(3, dtype=torch.float16)
    updater(0, torch.full((3,), 0.1, dtype=torch.float16), weight)
    assert updater.optimizer._index_update_count[0] == 4 and weight.dtype == torch.float16
