"""optzoo.kvstore across processes: 2 gloo workers on 127.0.0.1, started inside the test suite.

Each job below starts 2 processes once (module-scoped fixtures), runs several scenarios and saves what the
tests compare; every job is bounded in time (the processes are killed past ``JOB_TIMEOUT``).
"""

from __future__ import annotations

import os
import time

import gloo_harness
import pytest
import torch
import torch.distributed as dist

import optzoo
from optzoo import kvstore as kvs

JOB_TIMEOUT = 180.0
WORLD = 2
B = 4  # per-worker batch
STEPS = 4
OPTIMIZERS = {  # name -> optimizer_params
    "sgd": {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-3},
    "adam": {"learning_rate": 0.01, "wd": 1e-3},
    "rmsprop": {"learning_rate": 0.01, "rho": 0.9, "momentum": 0.5, "centered": True},
}


# ---------------------------------------------------------------------------------------------- harness
def run_job(job: str, tmp_path, timeout: float = 60.0, expect_fail: tuple = (), world: int = WORLD,
            init: bool = True) -> dict:
    """Runs ``job(rank, world, outdir)`` on ``world`` processes; returns ``{rank: result}`` (ranks in
    ``expect_fail`` may die without a result). ``init=False``: the job creates the process group (from torchrun's
    variables)."""
    return gloo_harness.run_job(__name__, job, world, tmp_path, timeout=timeout, expect_fail=expect_fail, init=init,
                                job_timeout=JOB_TIMEOUT)[0]


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def global_batch(step, n=WORLD * B):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(n, 5, generator=g), torch.randn(n, 2, generator=g)


def loss_of(model, x, y):
    return ((model(x) - y) ** 2).sum()


def train(model, trainer, steps, rank=None, batch_size=WORLD * B, first=0):
    """``rank=None``: one process on the whole batch; else this rank's slice of B samples."""
    for step in range(first, first + steps):
        x, y = global_batch(step)
        if rank is not None:
            x, y = x[rank * B:(rank + 1) * B], y[rank * B:(rank + 1) * B]
        loss_of(model, x, y).backward()
        trainer.step(batch_size)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------------------------------------- job: sync
GRADS = [torch.linspace(-1.3, 1.1, 37) * (r + 1) + 0.05 * s for s in range(5) for r in range(WORLD)]


def sync_job(rank, world, outdir):
    out = {}
    for name, kwargs in OPTIMIZERS.items():  # N workers on B each == one process on N*B
        for uok in (True, False):
            model = make_model(seed=rank)  # different seeds: the kvstore must broadcast rank 0's weights
            trainer = optzoo.Trainer(model, name, kwargs, kvstore="dist_sync", update_on_kvstore=uok)
            train(model, trainer, STEPS, rank)
            out[(name, uok)] = params_of(model)
    for ctype in ("2bit", "1bit"):  # compressed reduce-scatter + all-gather of level counts
        kv = kvs.create("dist_sync")
        kv.set_gradient_compression({"type": ctype, "threshold": 0.5})
        kv.init("w", torch.zeros(37))
        pulled = []
        for s in range(5):
            o = torch.zeros(37)
            kv.pushpull("w", GRADS[2 * s + rank], out=o)
            pulled.append(o)
        out[ctype] = (torch.stack(pulled), kv.bytes_sent, kv.bytes_received)
    kv = kvs.create("dist_sync")
    kv.init(0, torch.zeros(1000))
    kv.push(0, torch.ones(1000))
    out["plain_bytes"] = kv.bytes_sent
    # checkpoint: 3 steps, save, 3 steps == a fresh job that loads the checkpoint and runs the last 3
    path = os.path.join(outdir, f"ckpt{rank}")
    model = make_model()
    trainer = optzoo.Trainer(model, "adam", {"learning_rate": 0.01}, kvstore="dist_sync")
    train(model, trainer, 3, rank)
    trainer.save_states(path + ".states")
    torch.save(model.state_dict(), path + ".model")
    train(model, trainer, 3, rank, first=3)
    out["continuous"] = params_of(model)
    model = make_model(seed=7)
    trainer = optzoo.Trainer(model, "adam", {"learning_rate": 0.5}, kvstore="dist_sync")
    model.load_state_dict(torch.load(path + ".model"))  # after the Trainer exists: the kvstore must see it
    trainer.load_states(path + ".states")
    train(model, trainer, 3, rank, first=3)
    out["resumed"] = params_of(model)
    # Signum with 1-bit (sign) compression trains a linear regression
    torch.manual_seed(0)
    true_w = torch.randn(2, 5)
    model = torch.nn.Linear(5, 2, bias=False)
    trainer = optzoo.Trainer(model, "signum", {"learning_rate": 0.01}, kvstore="dist_sync",
                             compression_params={"type": "1bit", "threshold": 0.0})
    losses = []
    for step in range(60):
        x = torch.randn(B, 5, generator=torch.Generator().manual_seed(1000 * rank + step))
        loss = ((model(x) - x @ true_w.T) ** 2).sum()
        loss.backward()
        trainer.step(WORLD * B)
        losses.append(loss.item())
    out["signum_losses"] = losses
    return out


@pytest.fixture(scope="module")
def sync_results(tmp_path_factory):
    return run_job("sync_job", tmp_path_factory.mktemp("sync"))


@pytest.mark.parametrize("uok", [True, False], ids=["update_on_kvstore", "update_in_trainer"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_dist_sync_equals_one_process_on_the_concatenated_batch(sync_results, name, uok):
    model = make_model(seed=0)
    trainer = optzoo.Trainer(model, name, OPTIMIZERS[name])
    train(model, trainer, STEPS)
    want_params = params_of(model)
    assert want_params and not all(torch.equal(a, b) for a, b in zip(want_params, params_of(make_model(seed=0))))
    for rank in range(WORLD):
        got_params = sync_results[rank][(name, uok)]
        assert len(got_params) == len(want_params)  # zip must not hide a missing parameter
        for got, want in zip(got_params, want_params):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ctype", ["2bit", "1bit"])
def test_dist_sync_compression_matches_the_device_kvstore(sync_results, ctype):
    """The same per-worker gradient sequences through a 2-"device" local kvstore (checked against MXNet in
    test_compression_mxnet.py) give bit-identical sums."""
    kv = kvs.create("device")
    kv.set_gradient_compression({"type": ctype, "threshold": 0.5})
    kv.init("w", torch.zeros(37))
    want = []
    for s in range(5):
        o = torch.zeros(37)
        kv.pushpull("w", [GRADS[2 * s], GRADS[2 * s + 1]], out=o)
        want.append(o)
    # Bytes per step (37 values). 2bit: 3 packed words, rank 0 owns word 0 (values 0-15), rank 1 words 1-2
    # (values 16-36); each sends the peer the words the peer owns (rank 0: 8 bytes, rank 1: 4), then its level
    # counts (5 levels: 3 bits each) padded to the longer slice, 21 values = 63 bits = 8 bytes. 1bit: 2 words, one
    # each (4 bytes), then counts for 32 values (3 levels: 2 bits) = 8 bytes.
    sent = {"2bit": (8 + 8, 4 + 8), "1bit": (4 + 8, 4 + 8)}[ctype]
    received = {"2bit": (4 + 8, 8 + 8), "1bit": (4 + 8, 4 + 8)}[ctype]
    for rank in range(WORLD):
        pulled, bytes_sent, bytes_received = sync_results[rank][ctype]
        assert torch.equal(pulled, torch.stack(want))
        assert (bytes_sent, bytes_received) == (5 * sent[rank], 5 * received[rank])


def test_wire_bytes_without_compression(sync_results):
    assert sync_results[0]["plain_bytes"] == 4000


def test_checkpoint_resume_loses_nothing(sync_results):
    for rank in range(WORLD):
        continuous, resumed = sync_results[rank]["continuous"], sync_results[rank]["resumed"]
        assert continuous and len(continuous) == len(resumed)
        for a, b in zip(continuous, resumed):
            assert torch.equal(a, b)


def test_signum_with_sign_compression_trains(sync_results):
    losses = sync_results[0]["signum_losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)


# ---------------------------------------------------------------------------------------------- job: async
CURV = torch.linspace(0.5, 1.0, 8)  # f(w) = 0.5 * sum(CURV * w^2)
W0 = torch.linspace(-1.0, 1.0, 8)
ROUNDS = 6


def _stale_rounds(kv, key, rank, rounds):
    """Every round both workers pull, then (after a barrier) both push a gradient computed at the pulled
    weight: the second push the server applies is one update stale."""
    w = torch.zeros(8)
    for _ in range(rounds):
        kv.pull(key, out=w)
        kv.barrier()
        kv.push(key, CURV * w)
        kv.barrier()
    kv.pull(key, out=w)
    return w


def async_job(rank, world, outdir):
    out = {}
    kv = kvs.create("dist_async")
    kv.set_optimizer(optzoo.optimizer.create("dcasgd", learning_rate=0.9, lamda=1.0))
    kv.init("dcasgd", W0)
    out["dcasgd"] = _stale_rounds(kv, "dcasgd", rank, ROUNDS)
    kv2 = kvs.create("dist_async")
    kv2.set_optimizer(optzoo.optimizer.create("dcasgd", learning_rate=0.9, lamda=0.0))
    kv2.init("plain", W0)
    out["plain"] = _stale_rounds(kv2, "plain", rank, ROUNDS)
    kv.barrier()
    out["pushes_applied"] = (kv.pushes_applied, kv2.pushes_applied)
    kv.close()
    kv2.close()
    # a Trainer on dist_async with 2-bit compression: no barriers, each worker on its own batches
    torch.manual_seed(0)
    true_w = torch.randn(2, 5)
    model = torch.nn.Linear(5, 2, bias=False)
    trainer = optzoo.Trainer(model, "sgd", {"learning_rate": 0.2}, kvstore="dist_async",
                             compression_params={"type": "2bit", "threshold": 0.2})
    losses = []
    for step in range(80):  # asynchronous: the interleaving varies, so a small rate and room to converge
        x = torch.randn(B, 5, generator=torch.Generator().manual_seed(1000 * rank + step))
        loss = ((model(x) - x @ true_w.T) ** 2).sum()
        loss.backward()
        trainer.step(B)
        losses.append(loss.item())
    trainer._kvstore.barrier()
    out["trainer_losses"] = losses
    trainer._kvstore.close()
    return out


def _local_stale(lamda):
    """The same schedule in one process: each round applies the round's gradient twice."""
    opt = optzoo.optimizer.create("dcasgd", learning_rate=0.9, lamda=lamda)
    updater = optzoo.optimizer.get_updater(opt)
    w = W0.clone()
    for _ in range(ROUNDS):
        g = CURV * w
        updater("k", g.clone(), w)
        updater("k", g.clone(), w)
    return w


@pytest.fixture(scope="module")
def async_results(tmp_path_factory):
    return run_job("async_job", tmp_path_factory.mktemp("async"))


def test_dist_async_server_applies_every_push(async_results):
    assert async_results[0]["pushes_applied"] == (2 * ROUNDS, 2 * ROUNDS)
    for rank in range(WORLD):
        torch.testing.assert_close(async_results[rank]["dcasgd"], _local_stale(1.0), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(async_results[rank]["plain"], _local_stale(0.0), rtol=1e-6, atol=1e-7)


def test_dcasgd_delay_compensation_beats_stale_sgd(async_results):
    loss = {k: float((0.5 * CURV * async_results[0][k] ** 2).sum()) for k in ("dcasgd", "plain")}
    start = float((0.5 * CURV * W0 ** 2).sum())
    assert loss["dcasgd"] < 0.05 * loss["plain"] < 0.05 * start, loss


def test_dist_async_trainer_trains(async_results):
    for rank in range(WORLD):
        losses = async_results[rank]["trainer_losses"]
        assert sum(losses[-10:]) < 0.4 * sum(losses[:10]), losses


# ---------------------------------------------------------------------------------------------- job: fault
def fault_job(rank, world, outdir):
    os.environ["OPTZOO_KVSTORE_TIMEOUT"] = "6"  # the process group's own timeout is 600 s (see the test)
    model = make_model()
    trainer = optzoo.Trainer(model, "sgd", {"learning_rate": 0.1}, kvstore="dist_sync")
    train(model, trainer, 1, rank)
    if rank == 1:
        os._exit(3)  # dies without a word
    start = time.monotonic()
    try:
        train(model, trainer, 1, rank, first=1)
    except kvs.KVStoreError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


def test_dead_worker_gives_a_clear_error_in_bounded_time(tmp_path):
    """The user's process group waits 600 s; the kvstore's own timeout (6 s) bounds the push all the same."""
    result = run_job("fault_job", tmp_path, timeout=600.0, expect_fail=(1,))[0]
    assert result["error"] is not None, "the surviving worker did not notice the dead one"
    assert "dist_sync: push (gradient sum) of key 0 failed on rank 0 of 2" in result["error"]
    assert "died" in result["error"]
    assert result["seconds"] < 25.0


def fault_async_job(rank, world, outdir):
    kv = kvs.create("dist_async", timeout=5)
    kv.set_optimizer(optzoo.optimizer.create("sgd", learning_rate=0.1))
    kv.init(0, torch.zeros(3))
    kv.push(0, torch.ones(3))
    if rank == 1:
        os._exit(3)
    start = time.monotonic()
    try:
        kv.barrier()
    except kvs.KVStoreError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


def test_dead_worker_fails_the_async_barrier_naming_it(tmp_path):
    result = run_job("fault_async_job", tmp_path, timeout=600.0, expect_fail=(1,))[0]
    assert result["error"] is not None and result["seconds"] < 20.0
    assert "dist_async: barrier failed on rank 0" in result["error"] and "1" in result["error"]


# ---------------------------------------------------------------------------------------------- job: async rescale
ASYNC_W = torch.randn(2, 5, generator=torch.Generator().manual_seed(5))
ASYNC_EVENTS = [(1, step, 4) for step in range(6)] + [(r, step, 2 if r == 0 else 4) for step in range(6, 10)
                                                      for r in (0, 1)]  # (worker, step, batch size), in order


def _async_batch(rank, step, size):
    x = torch.randn(size, 5, generator=torch.Generator().manual_seed(1000 * rank + step))
    return x, x @ ASYNC_W.T


def async_rescale_job(rank, world, outdir):
    """Rank 1 pushes six times before rank 0's first step (rank 0 only serves meanwhile), then the two take turns
    with different batch sizes: each push must be applied with its own worker's rescale_grad (1/batch)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2, bias=False)
    trainer = optzoo.Trainer(model, "sgd", {"learning_rate": 0.02, "momentum": 0.5}, kvstore="dist_async")
    kv = trainer._kvstore
    for i, (worker, step, size) in enumerate(ASYNC_EVENTS):
        if worker == rank:
            x, y = _async_batch(rank, step, size)
            ((model(x) - y) ** 2).sum().backward()
            trainer.step(size)
        if i >= 5:  # the first six pushes run back to back; then the turns are ordered by barriers
            kv.barrier()
    out = {"weight": model.weight.detach().clone()}
    if rank == 0:
        out["server"] = kv._store[0].clone()
    kv.close()
    return out


def _async_reference():
    """One server weight, one weight replica per worker, pushes applied in ASYNC_EVENTS order."""
    torch.manual_seed(0)
    server = torch.nn.Linear(5, 2, bias=False).weight.detach().clone()
    replicas = {0: server.clone(), 1: server.clone()}
    opt = optzoo.optimizer.create("sgd", learning_rate=0.02, momentum=0.5)
    updater = optzoo.optimizer.get_updater(opt)
    for worker, step, size in ASYNC_EVENTS:
        w = replicas[worker].clone().requires_grad_(True)
        x, y = _async_batch(worker, step, size)
        ((x @ w.T - y) ** 2).sum().backward()
        opt.rescale_grad = 1.0 / size
        updater(0, w.grad, server)
        replicas[worker] = server.clone()
    return server, replicas


def test_dist_async_applies_each_push_with_its_workers_rescale(tmp_path):
    results = run_job("async_rescale_job", tmp_path)
    server, replicas = _async_reference()
    torch.testing.assert_close(results[0]["server"], server, rtol=1e-6, atol=1e-7)
    for rank in range(WORLD):
        torch.testing.assert_close(results[rank]["weight"], replicas[rank], rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    loss0 = float(((torch.nn.Linear(5, 2, bias=False).weight.detach() - ASYNC_W) ** 2).sum())
    assert float(((server - ASYNC_W) ** 2).sum()) < 0.5 * loss0  # and it learns


# ---------------------------------------------------------------------------------------------- job: stuck server
def async_stuck_job(rank, world, outdir):
    kv = kvs.create("dist_async", timeout=4)
    kv.set_optimizer(optzoo.optimizer.create("sgd", learning_rate=0.1))
    kv.init(0, torch.zeros(3))
    if rank == 0:
        with kv._lock:  # the server thread cannot take any push for 15 s (a stuck server, alive)
            time.sleep(15)
        return {}
    start = time.monotonic()
    try:
        for _ in range(3):
            kv.push(0, torch.ones(3))
    except kvs.KVStoreError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


def test_dist_async_push_to_a_stuck_server_times_out(tmp_path):
    """The process group waits 600 s; the kvstore's 4 s bound the pushes (headers included)."""
    result = run_job("async_stuck_job", tmp_path, timeout=600.0)[1]
    assert result["error"] is not None and "dist_async: push" in result["error"], result
    assert result["seconds"] < 12.0, result


# ---------------------------------------------------------------------------------------------- job: close
def close_job(rank, world, outdir):
    out = {}
    stores = {}
    for name in ("dist_sync", "dist_async"):  # both open at once: the default group must outlive the first close
        kv = kvs.create(name, timeout=30)
        if name == "dist_async":
            kv.set_optimizer(optzoo.optimizer.create("sgd", learning_rate=0.1))
        kv.init(0, torch.zeros(4))
        kv.push(0, torch.ones(4))
        kv.barrier()
        stores[name] = kv
    registered = dist.distributed_c10d._world.pg_map  # the process groups torch.distributed holds
    for name, kv in stores.items():
        groups = list(kv._groups)
        assert groups and all(g in registered for g in groups)
        kv.close()
        out[name] = sum(g in registered for g in groups)
        out[name + "_left"] = len(kv._groups)
        out[name + "_default_after"] = dist.is_initialized()
    return out


@pytest.mark.parametrize("init", [True, False], ids=["user_group", "kvstore_group"])
def test_close_releases_what_the_kvstore_created(tmp_path, init):
    for result in run_job("close_job", tmp_path, init=init).values():
        assert result["dist_sync"] == result["dist_async"] == 0  # none of the kvstores' groups is registered
        assert result["dist_sync_left"] == result["dist_async_left"] == 0
        # a group the user created stays; one the first kvstore created goes with the last kvstore using it
        assert result["dist_sync_default_after"] is True
        assert result["dist_async_default_after"] is init


# ---------------------------------------------------------------------------------------------- job: 4 workers
COMP_GRADS = [torch.randn(211, generator=torch.Generator().manual_seed(s)) * 0.7 for s in range(4 * 3)]


def compressed4_job(rank, world, outdir):
    out = {}
    for ctype in ("2bit", "1bit"):
        kv = kvs.create("dist_sync", timeout=60)
        kv.set_gradient_compression({"type": ctype, "threshold": 0.4})
        kv.init("w", torch.zeros(211))
        pulled = []
        for s in range(3):
            o = torch.zeros(211)
            kv.pushpull("w", COMP_GRADS[4 * s + rank], out=o)
            pulled.append(o)
        out[ctype] = (torch.stack(pulled), kv.bytes_sent)
        kv.close()
    return out


def test_compressed_sum_with_four_workers(tmp_path):
    """4 workers, 211 values (uneven slices): every worker gets the exact sum of the four dequantised gradients
    (k * threshold rounded once) and sends about a quarter of the plain bytes' sixteenth per peer."""
    from optzoo.kvstore.compression import create_compression

    results = run_job("compressed4_job", tmp_path, world=4)
    for ctype in ("2bit", "1bit"):
        comp = create_compression({"type": ctype, "threshold": 0.4})
        residuals = [comp.init_residual(torch.zeros(211)) for _ in range(4)]
        want = []
        for s in range(3):
            parts = [comp.decompress(comp.compress(COMP_GRADS[4 * s + r], residuals[r]), 211).double()
                     for r in range(4)]
            want.append(sum(parts).float())  # exact in float64, one rounding to float32
        for rank in range(4):
            pulled, sent = results[rank][ctype]
            assert torch.equal(pulled, torch.stack(want)), (ctype, rank)
            plain = 2 * 3 * 211 * 4 // 4  # a ring all-reduce of 211 float32 on 4 workers, per step
            assert sent < 3 * plain / (5 if ctype == "2bit" else 8), (ctype, sent)
