"""optzoo.kvstore in one process: the KVStore surface ('local', 'device'), the compression protocol (packing
layout, error feedback), and bad combinations. Multi-process behaviour: tests/test_distributed.py; MXNet
parity of compression: tests/test_compression_mxnet.py."""

from __future__ import annotations

import pytest
import torch

import optzoo
from optzoo import kvstore as kvs
from optzoo.kvstore.compression import OneBitCompression, TwoBitCompression, create_compression


# ---------------------------------------------------------------------------------------------- surface
def test_create_names_and_errors():
    assert kvs.create("local").type == "local" and kvs.create("Device").type == "device"
    with pytest.raises(ValueError, match="unknown kvstore type 'horovod'.*torch.distributed"):
        kvs.create("horovod")
    with pytest.raises(ValueError, match="unknown kvstore type 'bogus'"):
        kvs.create("bogus")
    with pytest.raises(TypeError, match="must be a string"):
        kvs.create(3)


def test_local_push_sums_devices_and_pull_copies_out():
    kv = kvs.create("local")
    assert (kv.rank, kv.num_workers) == (0, 1) and kv.is_capable("optimizer")
    kv.init([0, 1], [torch.zeros(3), torch.ones(2)])
    kv.push(0, [torch.ones(3), 2 * torch.ones(3)])
    out = [torch.empty(3), torch.empty(3)]
    kv.pull(0, out=out)
    assert all(torch.equal(o, torch.full((3,), 3.0)) for o in out)
    grads = torch.tensor([1.0, 2.0])
    kv.pushpull(1, grads)  # no optimizer, no out: the (summed) value comes back into the pushed tensor
    assert torch.equal(grads, torch.tensor([1.0, 2.0]))


def test_string_keys_and_errors():
    kv = kvs.create("local")
    kv.init("w", torch.zeros(2))
    with pytest.raises(ValueError, match="already initialised"):
        kv.init("w", torch.zeros(2))
    with pytest.raises(KeyError, match="has not been initialised"):
        kv.push("v", torch.zeros(2))
    with pytest.raises(ValueError, match="shape \\(3,\\) differs"):
        kv.push("w", torch.zeros(3))
    with pytest.raises(TypeError, match="keys must be int or str"):
        kv.init(1.5, torch.zeros(2))
    with pytest.raises(ValueError, match="pull needs out="):
        kv.pull("w")


def test_set_optimizer_updates_the_stored_weight_like_the_updater():
    kv = kvs.create("device")
    kv.set_optimizer(optzoo.optimizer.create("sgd", learning_rate=0.1, momentum=0.9))
    w0 = torch.linspace(-1, 1, 5)
    kv.init(3, w0)
    ref = w0.clone()
    updater = optzoo.optimizer.get_updater(optzoo.optimizer.create("sgd", learning_rate=0.1, momentum=0.9))
    for step in range(3):
        g = torch.sin(torch.arange(5.0) + step)
        out = torch.empty(5)
        kv.pushpull(3, [g / 2, g / 2], out=out)  # two devices' halves: summed before the update
        updater(3, g, ref)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-7)


def test_optimizer_states_round_trip(tmp_path):
    def run(kv, steps):
        out = torch.empty(4)
        for s in range(steps):
            kv.pushpull(0, torch.cos(torch.arange(4.0) * (s + 1)), out=out)
        return out

    def fresh(w):
        kv = kvs.create("local")
        kv.set_optimizer(optzoo.optimizer.create("adam", learning_rate=0.01))
        kv.init(0, w)
        return kv

    kv = fresh(torch.ones(4))
    w = run(kv, 2)
    kv.save_optimizer_states(tmp_path / "s", dump_optimizer=True)
    want = run(kv, 2)
    kv2 = fresh(w)
    kv2.load_optimizer_states(tmp_path / "s")
    assert torch.equal(run(kv2, 2), want)
    with pytest.raises(ValueError, match="no optimizer is set"):
        kvs.create("local").save_optimizer_states(tmp_path / "t")


# ---------------------------------------------------------------------------------------------- compression
def test_two_bit_packing_layout_is_msb_first():
    comp = TwoBitCompression(0.5)
    g = torch.tensor([0.5, -0.5, 0.0, 0.7, -0.6, 0.1, 0.0, 0.0] + [0.0] * 9 + [0.9])  # 18 values
    packed = comp.compress(g, comp.init_residual(g))
    # byte 0: codes 11 10 00 11 -> 0b11100011; byte 1: 10 00 00 00; element 17 -> byte 4, second pair
    assert packed.dtype == torch.uint8 and packed.numel() == 8  # ceil(18 / 16) = 2 words
    assert packed.tolist() == [0b11100011, 0b10000000, 0, 0, 0b00110000, 0, 0, 0]
    assert packed.view(torch.int32).numel() == 2


def test_one_bit_packing_layout_is_msb_first():
    comp = OneBitCompression(0.0)
    g = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
    packed = comp.compress(g, comp.init_residual(g))
    assert packed.tolist() == [0b10110001, 0b10000000, 0, 0]
    assert comp.decompress(packed, 9).tolist() == g.tolist()


@pytest.mark.parametrize("comp", [TwoBitCompression(0.5), TwoBitCompression(0.05), OneBitCompression(0.5),
                                  OneBitCompression(0.0)], ids=repr)
def test_error_feedback_invariant(comp):
    """sum(sent) + residual == sum(gradients): quantisation error is delayed, never lost."""
    gen = torch.Generator().manual_seed(0)
    residual = comp.init_residual(torch.zeros(100))
    sent, total = torch.zeros(100, dtype=torch.float64), torch.zeros(100, dtype=torch.float64)
    for _ in range(50):
        g = torch.randn(100, generator=gen) * 0.4
        packed = comp.compress(g, residual)
        assert packed.numel() == comp.packed_bytes(100)
        sent += comp.decompress(packed, 100).double()
        total += g.double()
    torch.testing.assert_close(sent + residual.double(), total, rtol=0, atol=1e-4)


def test_compression_bytes_are_16x_and_32x_smaller():
    assert TwoBitCompression().packed_bytes(1 << 20) * 16 == 4 << 20
    assert OneBitCompression().packed_bytes(1 << 20) * 32 == 4 << 20


def test_compress_leaves_the_gradient_alone():
    comp = TwoBitCompression(0.5)
    g = torch.tensor([0.7, -0.9])
    comp.compress(g, comp.init_residual(g))
    assert g.tolist() == pytest.approx([0.7, -0.9])


@pytest.mark.parametrize("params, error, match", [
    ("2bit", TypeError, "must be a dict"),
    ({"type": "2bit", "threshold": 0.0}, ValueError, "threshold"),
    ({"type": "3bit"}, ValueError, "must be one of"),
    ({"threshold": 0.5}, ValueError, "needs a 'type'"),
    ({"type": "2bit", "thr": 0.5}, ValueError, "unknown key"),
])
def test_bad_compression_params(params, error, match):
    with pytest.raises(error, match=match):
        create_compression(params)
    assert create_compression(None) is None and create_compression({"type": "none"}) is None


def test_compression_needs_a_device_or_dist_kvstore():
    with pytest.raises(ValueError, match="not supported for this type of kvstore \\('local'\\)"):
        kvs.create("local").set_gradient_compression({"type": "2bit"})


def test_compression_rejects_sparse_and_non_float32_gradients():
    kv = kvs.create("device")
    kv.set_gradient_compression({"type": "2bit", "threshold": 0.5})
    kv.init(0, torch.zeros(4, 2))
    sparse = torch.sparse_coo_tensor([[1]], torch.ones(1, 2), (4, 2), check_invariants=True)
    with pytest.raises(ValueError, match="sparse gradient; gradient compression supports only dense"):
        kv.push(0, sparse)
    kv.init(1, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="only float32 gradients"):
        kv.push(1, torch.zeros(3, dtype=torch.float64))


def test_sparse_push_without_compression_is_densified():
    kv = kvs.create("local")
    kv.init(0, torch.zeros(4, 2))
    out = torch.empty(4, 2)
    kv.pushpull(0, torch.sparse_coo_tensor([[1]], torch.ones(1, 2), (4, 2), check_invariants=True), out=out)
    assert out.sum().item() == 2.0 and out[1].tolist() == [1.0, 1.0]


def test_distributed_save_optimizer_states_is_refused(monkeypatch, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        kv = kvs.create("dist_sync")
        with pytest.raises(ValueError, match="Cannot save states for distributed training"):
            kv.save_optimizer_states(tmp_path / "s")
        with pytest.raises(ValueError, match="timeout must be a positive"):
            kvs.create("dist_sync", timeout=-1)
    finally:
        dist.destroy_process_group()


def test_trainer_compression_on_a_sparse_gradient_is_a_clear_error():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = torch.nn.Embedding(10, 3, sparse=True)
        trainer = optzoo.Trainer(model, "sgd", kvstore="dist_sync", compression_params={"type": "2bit"})
        model(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(ValueError, match="sparse gradient; gradient compression supports only dense"):
            trainer.step(2)
        plain = torch.nn.Embedding(10, 3, sparse=True)  # without compression the sparse gradient is summed
        plain.weight.data.copy_(model.weight.data)
        trainer = optzoo.Trainer(plain, "sgd", {"learning_rate": 1.0}, kvstore="dist_sync")
        before = plain.weight.detach().clone()
        plain(torch.tensor([1, 2])).sum().backward()
        trainer.step(1)
        changed = (plain.weight != before).any(dim=1)
        assert changed.tolist() == [i in (1, 2) for i in range(10)]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("levels", [3, 5, 16, 17, 255, 256, 257, 9000])
def test_level_counts_pack_and_unpack(levels):
    from optzoo.kvstore.compression import pack_counts, packed_count_bytes, unpack_counts

    for n in (0, 1, 2, 7, 64):
        counts = torch.randint(0, levels, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.int64)
        data = pack_counts(counts.to(torch.int16), levels)
        assert data.dtype == torch.uint8 and data.numel() == packed_count_bytes(n, levels)
        assert torch.equal(unpack_counts(data, n, levels), counts.to(torch.int16))


@pytest.mark.parametrize("comp", [kvs.TwoBitCompression(0.3), kvs.OneBitCompression(0.1)], ids=["2bit", "1bit"])
@pytest.mark.parametrize("workers", [1, 2, 3, 6])
def test_level_counts_stand_for_the_exact_sum(comp, workers):
    """sum_counts + counts_to_values give the sum of the workers' dequantised values, exact then rounded once
    (equal to the rank-order float32 sum whenever that sum is exact, e.g. for two workers)."""
    n = 77
    packed, parts = [], []
    for r in range(workers):
        grad = torch.randn(n, generator=torch.Generator().manual_seed(r)) * 0.5
        p = comp.compress(grad, comp.init_residual(grad))
        packed.append(p)
        parts.append(comp.decompress(p, n))
    counts = comp.sum_counts(packed, n)
    assert int(counts.min()) >= 0 and int(counts.max()) < comp.count_levels(workers)
    got = comp.counts_to_values(counts, workers)
    assert torch.equal(got, sum(x.double() for x in parts).float())
    if workers <= 2:
        assert torch.equal(got, sum(parts))
