"""How near the speed of light Inductor's own CPU code comes over many tensors once Dynamo is out of the way.

    .venv/bin/python bench/compiled_bound.py [--shapes many-small] [--optimizers sgd,adam,nadam,lion]
        [--threads 2] [--rounds 7] [--target-ms 50] [--quick]

The benchmark's "optzoo compiled" column times :class:`~optzoo.optimizer.traced.TracedStep`: per step, the rule's
bookkeeping in Python, then one call of the compiled chunk graph per chunk of tensors through Dynamo (guards, one
size a tensor, the AOT and Inductor wrappers). This script asks what is left without any of that. It records the
chunk calls a chunked TracedStep makes (the same 1-D aliases, padding and per-step scalar vectors), exports the
rule's arithmetic over one chunk with dynamic sizes (``torch.export``) and compiles it ahead of time with
AOTInductor twice, each loop split among the threads ("aot split") or on one thread ("aot 1-thread"), as
TracedStep's two chunk graphs. A step of those forms is one ``boxed_run`` (C++) a chunk with the recorded scalars:
Inductor's kernels and a C++ call, no Python per tensor and no bookkeeping, so their "% SoL" bounds from above
what a torch.compile route running these kernels reaches on this machine. Before timing, each form's first and
last chunks are checked against the eager arithmetic on copies (the largest difference relative to the tensor's
largest value is printed; over 1e-5 fails).

Timed side by side, rounds interleaved in a shuffled order, fastest round kept: the SoL touch kernel, the native
step, TracedStep's step (as the benchmark's compiled column) and the two AOT forms. Compiling takes minutes a rule.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
import torch.utils._pytree as pytree

import optzoo.optimizer as oo
from optzoo.bench import check_instrument_arguments, instrument_parser
from optzoo.bench.shapes import get_shapes
from optzoo.bench.sol import TouchKernel
from optzoo.bench.timing import time_step
from optzoo.bench.torch_runner import SPECS, _full_state_lists, _weights, make_grads
from optzoo.optimizer.traced import INDUCTOR_OPTIONS, TracedStep, supports_tracing

RULES = ("sgd", "adam", "nadam", "lion")
#: the largest normwise difference between an AOT form and the eager arithmetic that passes (Inductor fuses and
#: reorders: ~1e-7; a step that is wrong moves a weight by a learning rate's worth, ~1e-3 of its size)
MAX_DIFFERENCE = 1e-5


def _recorded_chunks(traced: TracedStep, indices, weights, grads, states) -> list:
    """``(fn, args, kwargs)`` of every chunk call ``traced.update`` makes, recorded instead of run."""
    calls = []
    traced._compiled_fn = lambda fn, chunked, split=False: (lambda *args, **kwargs: calls.append((fn, args, kwargs)))
    try:
        traced.update(indices, weights, grads, states)
    finally:
        del traced._compiled_fn  # the class's method again
    return calls


class _Chunk(torch.nn.Module):
    """The rule's arithmetic over one chunk, its tensors as one flat list (the recorded call's tensor leaves in
    pytree order), its other leaves (hyperparameters, per-tensor floats) constants."""

    def __init__(self, fn, spec, leaves):
        super().__init__()
        self.fn, self.spec = fn, spec
        self.leaves = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        self.where = [k for k, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    def forward(self, tensors):
        leaves = list(self.leaves)
        for k, t in zip(self.where, tensors):
            leaves[k] = t
        args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        self.fn(*args, **kwargs)
        return ()


def _flat_calls(calls) -> tuple[_Chunk, list[list[torch.Tensor]]]:
    """The chunk module and each call's tensors; every call must share the function, structure and constants."""
    fn, args, kwargs = calls[0]
    leaves, spec = pytree.tree_flatten((args, kwargs))
    module = _Chunk(fn, spec, leaves)
    flat = []
    for other_fn, a, k in calls:
        other, other_spec = pytree.tree_flatten((a, k))
        constants = [None if isinstance(x, torch.Tensor) else x for x in other]
        if other_fn is not fn or other_spec != spec or constants != module.leaves:
            raise SystemExit("the chunk calls differ in function, structure or constants: no single chunk graph")
        flat.append([other[i] for i in module.where])
    return module, flat


def _aot_step(module, flat, split: bool, workdir: Path):
    """A step of the AOTInductor form: one ``boxed_run`` a chunk. Returns (step, loader, compile seconds)."""
    example = flat[0]
    shapes = ([{0: torch.export.Dim.AUTO} if t.dim() == 1 else None for t in example],)
    start = time.perf_counter()
    program = torch.export.export(module, (example,), dynamic_shapes=shapes, strict=False)
    options = {**INDUCTOR_OPTIONS, "cpp.min_chunk_size": 1 if split else 1 << 40}
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(workdir / f"chunk_{int(split)}.pt2"),
                                                   inductor_configs=options)
    loader = torch._inductor.aoti_load_package(path).loader
    seconds = time.perf_counter() - start

    def step():
        for tensors in flat:
            loader.boxed_run(list(tensors))  # boxed_run takes its list apart

    return step, loader, seconds


def _difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference between ``a`` and ``b`` relative to the largest magnitude in ``a`` (normwise: a
    weight near zero after a step differs by many of its own ulps where the step rounds differently)."""
    if not a.numel():
        return 0.0
    scale = float(a.abs().max()) or 1.0
    return float((a.double() - b.double()).abs().max()) / scale


def _check(module, loader, flat) -> float:
    """The AOT form against the eager arithmetic, on copies of the first and the last chunk: the largest normwise
    difference of any tensor it writes."""
    worst = 0.0
    for tensors in (flat[0], flat[-1]):
        eager, aot = [t.clone() for t in tensors], [t.clone() for t in tensors]
        with torch.no_grad():
            module(eager)
        loader.boxed_run(list(aot))
        worst = max(worst, *(_difference(x, y) for x, y in zip(eager, aot)))
    return worst


def _timed_steps(name, shapes, grads, threads, workdir) -> tuple[dict, list[str], int]:
    """label -> step callable for one rule (SoL, native, TracedStep, the two AOT forms, each warmed), the notes
    (compile times, the AOT forms' differences) and the number of chunks."""
    kwargs, indices = SPECS[name][0], list(range(len(shapes)))
    timed, notes = {}, []
    native = oo.create(name, **kwargs)
    weights = _weights(shapes)
    states = [native.create_state_multi_precision(i, w) for i, w in zip(indices, weights)]
    native.update_multi_precision(indices, weights, grads, states)
    timed["native"] = lambda: native.update_multi_precision(indices, weights, grads, states)
    timed["SoL"] = TouchKernel(weights, grads, _full_state_lists(states, weights), threads)

    traced_opt = oo.create(name, impl="foreach", **kwargs)
    traced_weights = _weights(shapes)
    traced_states = [traced_opt.create_state(i, w) for i, w in zip(indices, traced_weights)]
    traced = TracedStep(traced_opt)
    start = time.perf_counter()
    traced.update(indices, traced_weights, grads, traced_states)
    traced.update(indices, traced_weights, grads, traced_states)
    notes.append(f"TracedStep compile {time.perf_counter() - start:.0f} s")
    timed["TracedStep"] = lambda: traced.update(indices, traced_weights, grads, traced_states)

    bound_opt = oo.create(name, impl="foreach", **kwargs)
    bound_weights = _weights(shapes)
    bound_states = [bound_opt.create_state(i, w) for i, w in zip(indices, bound_weights)]
    recorder = TracedStep(bound_opt, chunk_above=0)
    module, flat = _flat_calls(_recorded_chunks(recorder, indices, bound_weights, grads, bound_states))
    for split in (True, False):
        label = "aot split" if split else "aot 1-thread"
        step, loader, compile_s = _aot_step(module, flat, split, workdir)
        difference = _check(module, loader, flat)
        if difference > MAX_DIFFERENCE:
            raise SystemExit(f"{name} {label}: differs from the eager arithmetic by {difference:.1e} of its values' "
                             f"size (over {MAX_DIFFERENCE:.0e})")
        notes.append(f"{label} compile {compile_s:.0f} s, difference {difference:.0e}")
        timed[label] = step
    for fn in timed.values():
        fn()  # warm
    return timed, notes, len(flat)


def main(argv=None):
    parser = instrument_parser(__doc__.split("\n\n")[0], shapes="many-small", optimizers=",".join(RULES), rounds=7,
                               target_ms=50.0)
    opts = parser.parse_args(argv)
    names = opts.optimizers.split(",")
    for name in names:
        if name not in SPECS or not supports_tracing(oo.create(name, impl="foreach", **SPECS[name][0])):
            parser.error(f"--optimizers: {name!r} has no traced step (e.g. {', '.join(RULES)})")
    check_instrument_arguments(parser, opts)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    order = random.Random(0)
    print(f"{threads} threads, wall time, fastest of {opts.rounds} rounds; ms (% of the SoL)")
    with tempfile.TemporaryDirectory() as workdir:
        for shape_name in opts.shapes.split(","):
            shapes = get_shapes(shape_name, quick=opts.quick)
            grads = make_grads(shapes)
            for name in names:
                timed, notes, chunks = _timed_steps(name, shapes, grads, threads, Path(workdir))
                best = dict.fromkeys(timed, float("inf"))
                for _ in range(opts.rounds):
                    keys = list(timed)
                    order.shuffle(keys)
                    for key in keys:
                        best[key] = min(best[key], time_step(timed[key], 1, opts.target_ms / 1e3)[0])
                sol = best.pop("SoL")
                print(f"{shape_name} {name}: {len(shapes)} tensors, {chunks} chunks; SoL {sol * 1e3:.2f} ms; "
                      + "; ".join(notes))
                for label, s in best.items():
                    print(f"   {label:12s} {s * 1e3:8.2f} ({100 * sol / s:5.1f}%)")


if __name__ == "__main__":
    main()
