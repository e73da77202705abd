"""The native kernels' core: building and caching, when a step runs natively and when it falls back to the torch
path, and that falling back never changes results or error messages. Each family's rules are tested against the
reference path in tests/test_native_<family>.py and against MXNet through tests/test_mxnet_parity.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from native_support import require_native

from optzoo import TorchOptimizer, native
from optzoo import optimizer as opt
from optzoo.optimizer.base import Optimizer

ROOT = Path(__file__).resolve().parents[1]


def _run(name, impl, weights, steps=30, seed=0, update="update_multi_precision", **kwargs):
    o = opt.create(name, impl=impl, **kwargs)
    ws = [w.clone() for w in weights]
    states = [o.create_state_multi_precision(i, w) for i, w in enumerate(ws)]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        grads = [torch.randn(w.shape, generator=gen).to(w.dtype) for w in ws]
        getattr(o, update)(list(range(len(ws))), ws, grads, states)
    return o, ws, states


def test_required_build_exists():
    require_native()
    names = native.load().rule_names()
    for klass in Optimizer.opt_registry.values():
        if klass.native_rule is not None:
            assert klass.native_rule in names, f"{klass.__name__} names missing rule {klass.native_rule!r}"


def test_auto_picks_native_and_config_stays_portable():
    require_native()
    o = opt.create("adam")
    assert o.impl == "native" and o.use_fused_step
    assert o.get_config()["impl"] == "auto"  # a checkpoint made here loads where no compiler exists
    assert opt.create("adam", impl="foreach").impl == "foreach"
    assert opt.create("adam", use_fused_step=False).get_config()["impl"] == "reference"


def test_native_step_runs_without_the_torch_path(no_foreach):
    require_native()
    weights = [torch.randn(5, 3), torch.randn(40_000), torch.randn(7)]
    o, ws, states = _run("adam", "native", weights, steps=5)
    _, ref, ref_states = _run("adam", "reference", weights, steps=5)
    for a, b in zip(ws + [x for s in states for x in s], ref + [x for s in ref_states for x in s]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert o.num_update == 5 and o._index_update_count == {0: 5, 1: 5, 2: 5}


@pytest.mark.parametrize("threads", [1, 2])
def test_results_do_not_depend_on_the_thread_count(threads):
    require_native()
    weights = [torch.randn(100_003), torch.randn(33, 65)]
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one, _ = _run("adam", "native", weights, steps=10, wd=0.01)
        torch.set_num_threads(threads)
        _, many, _ = _run("adam", "native", weights, steps=10, wd=0.01)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_version_counter_is_bumped():
    require_native()
    w = torch.zeros(10, requires_grad=True)
    o = opt.create("sgd", impl="native", momentum=0.9, learning_rate=0.1)
    state = o.create_state(0, w)
    before = w._version, state._version
    o.update(0, w, torch.ones(10), state)
    assert (w._version, state._version) == (before[0] + 1, before[1] + 1)  # one in-place write each
    assert torch.equal(state, torch.full((10,), -0.1)) and torch.equal(w, state)


def _fallback_inputs():
    base = torch.randn(6, 4)
    return {
        "non-contiguous weight": ([base.t().contiguous().t(), torch.randn(9)], None),
        "float64 weights": ([torch.randn(6, 4, dtype=torch.float64), torch.randn(9, dtype=torch.float64)], None),
        "float16 without multi_precision": ([torch.randn(6, 4).half(), torch.randn(9).half()], None),
    }


@pytest.mark.parametrize("case", list(_fallback_inputs()))
def test_tensors_the_kernel_cannot_take_fall_back_unchanged(case):
    """A step with any tensor the kernel does not take runs the torch path for all tensors, with the same result
    as impl='foreach' (nothing was written by the kernel before it declined)."""
    require_native()
    weights, _ = _fallback_inputs()[case]
    with pytest.warns(UserWarning) if weights[0].dtype == torch.float16 else _nothing():
        _, native_ws, native_states = _run("sgd", "native", weights, steps=6, momentum=0.9)
    with pytest.warns(UserWarning) if weights[0].dtype == torch.float16 else _nothing():
        _, foreach_ws, foreach_states = _run("sgd", "foreach", weights, steps=6, momentum=0.9)
    for a, b in zip(native_ws + native_states, foreach_ws + foreach_states):
        assert torch.equal(a, b)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_rejected_tensor_later_in_the_list_leaves_earlier_ones_alone():
    require_native()
    good, view = torch.randn(50), torch.randn(8, 6).t()  # the second is not contiguous
    o = opt.create("sgd", impl="native", momentum=0.5)
    ws, states = [good.clone(), view.clone().t().contiguous().t()], []
    states = [o.create_state(i, w) for i, w in enumerate(ws)]
    grads = [torch.ones(50), torch.ones(6, 8)]
    o.update([0, 1], ws, grads, states)
    ref = opt.create("sgd", impl="reference", momentum=0.5)
    rws = [good.clone(), view.clone()]
    rstates = [ref.create_state(i, w) for i, w in enumerate(rws)]
    ref.update([0, 1], rws, grads, rstates)
    assert torch.equal(ws[0], rws[0]) and torch.equal(ws[1], rws[1])  # updated exactly once


@pytest.mark.parametrize("bad,exc,match", [
    (lambda w: torch.ones(3), ValueError, "grad shape"),
    (lambda w: torch.ones(w.shape, dtype=torch.float64), ValueError, "grad dtype"),
    (lambda w: [1.0] * 4, TypeError, "torch.Tensor"),
])
def test_bad_input_gives_the_same_clear_error(bad, exc, match):
    require_native()
    o = opt.create("adam", impl="native")
    w = torch.zeros(4)
    state = o.create_state(0, w)
    with pytest.raises(exc, match=match):
        o.update([0], [w], [bad(w)], [state])
    assert torch.equal(w, torch.zeros(4)) and o.num_update == 0


def test_repeated_indices_and_counts_match_the_reference():
    require_native()
    results = []
    for impl in ("reference", "native"):
        o = opt.create("adam", impl=impl, begin_num_update=3)
        o.set_lr_mult({1: 0.5})
        ws = [torch.ones(4) for _ in range(3)]
        states = [o.create_state(i, w) for i, w in enumerate(ws)]
        for indices in ([0, 1, 2], [1, 2], [0, 0], [2]):
            chosen = [ws[i] for i in indices]
            o.update(list(indices), chosen, [torch.full((4,), 0.1 * (k + 1)) for k in range(len(indices))],
                     [states[i] for i in indices])
        results.append((ws, dict(o._index_update_count), o.num_update))
    (rw, rc, rn), (nw, nc, nn) = results
    assert rc == nc and rn == nn
    for a, b in zip(rw, nw):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_torch_optimizer_multi_precision_runs_natively(no_foreach):
    require_native()
    torch.manual_seed(0)
    out = {}
    for impl in ("native", "reference"):
        model = torch.nn.Linear(40, 30).to(torch.bfloat16)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape))
        topt = TorchOptimizer(model.parameters(), "adam", learning_rate=0.01, multi_precision=True, impl=impl)
        x = torch.linspace(-1, 1, 8 * 40).reshape(8, 40).to(torch.bfloat16)
        for _ in range(10):
            topt.zero_grad()
            model(x).float().pow(2).mean().backward()
            topt.step()
        masters = [topt.state[p]["state"][0] for p in model.parameters()]
        for p, m in zip(model.parameters(), masters):
            assert torch.equal(p, m.to(torch.bfloat16))
        out[impl] = masters + [x for p in model.parameters() for x in topt.state[p]["state"][1]]
    for a, b in zip(out["native"], out["reference"]):  # float32 master copies and states: float32 rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ building, caching, falling back
def _python(code: str, env: dict, cwd=ROOT) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("OPTZOO_NATIVE", "OPTZOO_CACHE", "CXX")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


STEP = """
    import warnings, torch
    from optzoo import optimizer as opt
    o = opt.create("adam")
    w = torch.ones(3)
    o.update(0, w, torch.ones(3), o.create_state(0, w))
    print("impl", o.impl, float(w[0]))
"""


def test_disabled_native_uses_foreach_and_refuses_impl_native():
    code = STEP + """
    try:
        opt.create("adam", impl="native")
    except ValueError as err:
        print("refused:", err)
"""
    proc = _python(code, {"OPTZOO_NATIVE": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "impl foreach" in proc.stdout
    assert "refused: Adam: impl='native' is not available here (disabled by OPTZOO_NATIVE=0)" in proc.stdout


def test_no_compiler_falls_back_with_one_warning_line(tmp_path):
    proc = _python(STEP + "\n    opt.create('sgd'); print('second optimizer ok')\n",
                   {"OPTZOO_CACHE": str(tmp_path), "CXX": "/nonexistent/g++", "PATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "impl foreach" in proc.stdout and "second optimizer ok" in proc.stdout
    warning_lines = [line for line in proc.stderr.splitlines() if "native kernels unavailable" in line]
    assert len(warning_lines) == 1 and "no C++ compiler" in warning_lines[0]


def test_a_foreach_step_never_builds_the_kernels_for_its_input_check(tmp_path):
    """The foreach path's usual-case check uses the native pass only where the library is already built
    (native.built()): with an empty cache it runs the Python check, compiling nothing and warning nothing."""
    code = """
    import torch
    from optzoo import native, optimizer as opt
    o = opt.create("adam", impl="foreach")
    w = torch.ones(3)
    o.update([0], [w], [torch.ones(3)], [o.create_state(0, w)])
    print("built", native.built(), "loaded", native._module, "kept", "_usual_layouts" in o.__dict__)
"""
    proc = _python(code, {"OPTZOO_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "built None loaded None kept False" in proc.stdout
    assert "compiling" not in proc.stderr and "unavailable" not in proc.stderr
    assert not list(tmp_path.glob("**/*.so")) and not list(tmp_path.glob("**/*.o"))


def test_cold_build_is_announced_shared_by_concurrent_processes_and_cached(tmp_path):
    require_native()
    env = {"OPTZOO_CACHE": str(tmp_path)}
    full_env = {k: v for k, v in os.environ.items() if k not in ("OPTZOO_NATIVE", "OPTZOO_CACHE")}
    full_env.update(env)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(STEP)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "impl native" in out
    announced = [err for _, err in outs if "compiling the native optimizer kernels" in err]
    assert len(announced) == 1  # the other process waited on the lock and loaded the result
    assert "native kernels ready" in announced[0]
    assert len(list(tmp_path.glob("optzoo_native_*.so"))) == 1
    again = _python(STEP, env)
    assert again.returncode == 0 and "impl native" in again.stdout
    assert "compiling" not in again.stderr


def _many_views(n=300, size=7, gap=0):
    """n weights as views of one buffer, `gap` elements apart (0: adjacent, negative: each overlaps the next)."""
    base = torch.randn(n * (size + max(gap, 0)) + size)
    return [base[i * (size + gap): i * (size + gap) + size] for i in range(n)]


@pytest.mark.parametrize("case", ["adjacent views", "two views overlap", "state is another weight",
                                  "one gradient for all"])
def test_shared_memory_check_on_a_step_of_many_tensors(case):
    """Past the size where the native overlap check sorts by radix (64 regions): adjacent views of one buffer and
    gradients shared by every tensor are accepted (and updated as separate tensors would be); two overlapping
    views, or a state that is another tensor's weight, are a ValueError naming both, with nothing written."""
    require_native()
    o = opt.create("adam", impl="native", learning_rate=0.1)
    weights = _many_views()
    indices = list(range(len(weights)))
    states = [o.create_state(i, w) for i, w in zip(indices, weights)]
    grads = [torch.randn(w.shape) for w in weights]
    if case == "two views overlap":
        weights[150] = weights[151].as_strided((7,), (1,), 151 * 7 - 1)  # shares six elements with 151
    elif case == "state is another weight":
        states[200] = type(states[200])(weights[30], states[200].var)
    elif case == "one gradient for all":
        grads = [grads[0]] * len(weights)
    before = [w.clone() for w in weights]
    if case in ("adjacent views", "one gradient for all"):
        separate = [w.clone() for w in weights]
        separate_states = [o.create_state(i, w) for i, w in zip(indices, separate)]
        o.update(indices, weights, grads, states)
        opt.create("adam", impl="native", learning_rate=0.1).update(indices, separate, grads, separate_states)
        assert all(torch.equal(a, b) for a, b in zip(weights, separate))
        assert not any(torch.equal(a, b) for a, b in zip(weights, before))
        return
    with pytest.raises(ValueError, match="share memory") as err:
        o.update(indices, weights, grads, states)
    named = ("parameter 150", "parameter 151") if case == "two views overlap" else ("parameter 30", "parameter 200")
    assert all(who in str(err.value) for who in named), str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(weights, before)), "nothing may be written"
