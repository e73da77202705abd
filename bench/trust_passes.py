"""Each pass of the trust-ratio kernels against its own pass of the multi-pass floor, in one process.

    .venv/bin/python bench/trust_passes.py [--shapes resnet50,random] [--optimizers lamb,lars,lans,lbsgd]
        [--threads 2] [--rounds 15] [--target-ms 30] [--cpu-time] [--against OLD.so] [--quick]

The benchmark's "% floor" column compares a whole step with the sum of the pass kernels' times (`MULTI_PASS` in
optzoo/bench/torch_runner.py); this script splits the step the way the floor is split. Per rule and shape set it
times the pass kernels, the native whole step and, for LARS, LAMB and LANS, each pass alone: a norm stage through
the native `norm_sums` entry (no tensor fused) and the update through `step` with those sums. LBSGD's kernel has
no split entries: only its whole step. Every measurement is the fastest of `--rounds` rounds, the rounds of all
measurements interleaved in a shuffled order, so a busy neighbour disturbs them alike.

`--cpu-time` reports process CPU time instead of wall time (with OMP_WAIT_POLICY=passive, idle threads are not
counted: the loops' own cost, steadier on a shared machine; without it, waiting threads spin and count).
`--against OLD.so` also times a second build of the native library (e.g. the cached library of an earlier commit,
~/.cache/optzoo/optzoo_native_*.so) on the same tensors and calls: an A/B of two kernel versions in one process.
"""

from __future__ import annotations

import importlib.util
import random
import time

import torch

import optzoo.optimizer as oo
from optzoo import native
from optzoo.bench import check_instrument_arguments, instrument_parser
from optzoo.bench.shapes import get_shapes
from optzoo.bench.sol import PassKernel
from optzoo.bench.timing import time_step
from optzoo.bench.torch_runner import MULTI_PASS, SPECS, _full_state_lists, _weights

RULES = ("lamb", "lars", "lans", "lbsgd")


def _load_library(path):
    spec = importlib.util.spec_from_file_location("_optzoo_native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _native_call(name, weights, grads):
    """The optimizer, its states and the arguments of the native `step` call its update makes (after one step)."""
    opt = oo.create(name, **SPECS[name][0])
    indices = list(range(len(weights)))
    states = [opt.create_state_multi_precision(i, w) for i, w in zip(indices, weights)]
    lib, calls = native.load(), []

    class Recorder:
        def __getattr__(self, key):
            return getattr(lib, key)

        def step(self, *args):
            calls.append(args)
            return lib.step(*args)

    native._module = Recorder()
    try:
        opt.update_multi_precision(indices, weights, grads, states)
    finally:
        native._module = lib
    if opt.impl != "native" or not calls:
        raise SystemExit(f"{name}: the native kernels did not take the step")
    return states, calls[-1]


def _passes(lib, name, call):
    """label -> callable: the whole step and (LARS, LAMB, LANS) each pass alone through the split entries."""
    args = (lib.rule_id(name), *call[1:9])
    aux = call[9]
    out = {"step": lambda: lib.step(*args, aux)}
    if name == "lbsgd":
        return out
    stages, prior = [], None
    for _ in range(2 if name == "lans" else 1):
        sums = lib.norm_sums(*args, aux, prior)
        out[f"pass {len(stages) + 1}"] = (lambda prior=prior: lib.norm_sums(*args, aux, prior))
        stages.append(sums)
        prior = stages[0]
    out[f"pass {len(stages) + 1}"] = lambda: lib.step(*args, (aux, *stages))
    return out


def main(argv=None):
    parser = instrument_parser(__doc__.split("\n\n")[0], shapes="resnet50,random", optimizers=",".join(RULES),
                               rounds=15, target_ms=30.0)
    parser.add_argument("--cpu-time", action="store_true")
    parser.add_argument("--against", help="a second native library to time on the same calls")
    opts = parser.parse_args(argv)
    names = opts.optimizers.split(",")
    for name in names:
        if name not in RULES:
            parser.error(f"--optimizers: {name!r} is not one of {', '.join(RULES)}")
    check_instrument_arguments(parser, opts)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    if native.load() is None:
        raise SystemExit(f"native kernels unavailable: {native.unavailable_reason()}")
    libraries = {"ours": native.load()}
    if opts.against:
        libraries["other"] = _load_library(opts.against)
    clock = time.process_time if opts.cpu_time else time.perf_counter

    def seconds(fn):
        fn()  # warm
        return time_step(fn, 1, opts.target_ms / 1e3, clock)[0]

    order = random.Random(0)
    print(f"{threads} threads, {'CPU' if opts.cpu_time else 'wall'} time, fastest of {opts.rounds} rounds; "
          f"ms (% of the floor's pass)")
    for shape_name in opts.shapes.split(","):
        shapes = get_shapes(shape_name, quick=opts.quick)
        gen = torch.Generator().manual_seed(2)
        grads = [torch.randn(s, generator=gen) * 0.01 for s in shapes]
        for name in names:
            weights = _weights(shapes)
            states, call = _native_call(name, weights, grads)
            lists = [weights, grads, *_full_state_lists(states, weights)]
            timed = {}
            for k, (written, read) in enumerate(MULTI_PASS[name]):
                timed[("floor", f"pass {k + 1}")] = PassKernel([lists[i] for i in written],
                                                              [lists[i] for i in read], threads)
            for label, lib in libraries.items():
                timed.update({(label, what): fn for what, fn in _passes(lib, name, call).items()})
            best = dict.fromkeys(timed, float("inf"))
            for _ in range(opts.rounds):
                keys = list(timed)
                order.shuffle(keys)
                for key in keys:
                    best[key] = min(best[key], seconds(timed[key]))
            floor = {what: s for (label, what), s in best.items() if label == "floor"}
            floor["step"] = sum(floor.values())
            print(f"{shape_name} {name}: floor {floor['step'] * 1e3:.3f} ms")
            for what in ["step", *[w for w in floor if w != "step"]]:
                cells = [f"{what:7s} floor {floor[what] * 1e3:8.3f}"]
                for label in libraries:
                    if (label, what) in best:
                        s = best[(label, what)]
                        cells.append(f"{label} {s * 1e3:8.3f} ({100 * floor[what] / s:5.1f}%)")
                print("   " + "   ".join(cells))


if __name__ == "__main__":
    main()
