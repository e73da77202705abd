"""``python bench/run.py modern``: Adafactor, CAME, Muon and SOAP against the packages they reproduce, timed in
the same process on the same tensors of a small transformer (the other modern optimizers have rows in the main
benchmark: :mod:`optzoo.bench.modern`).

The parameter set is a small transformer (embedding, ``layers`` blocks of attention and MLP matrices with their
norms and biases, an output head): Muon sends the embedding, the head and every 1-D tensor to its AdamW side, as
``torch.optim.Muon`` + ``torch.optim.AdamW`` are set up in the reference. Each row gives ms/step of optzoo's default
path, of the reference package, their ratio (> 1: optzoo is faster), and for the memory-bound factored rules the
% of the speed of light: the time of one ideal streaming pass (read w, g and every full-size state, write w and
the states: :mod:`optzoo.bench.sol`) over the same tensors. Muon and SOAP are bound by matrix products, not
memory: no SoL for them. SOAP is timed over whole periods of 10 steps, so its eigenbasis refreshes count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .sol import SolUnavailable, TouchKernel
from .timing import time_step

__all__ = ["main", "transformer_shapes"]


def transformer_shapes(width: int, layers: int, vocab: int) -> list[tuple[tuple[int, ...], str]]:
    """``(shape, kind)`` of a pre-norm transformer; kind is "hidden" (Muon's), "embed"/"head" or "vector"."""
    shapes = [((vocab, width), "embed")]
    for _ in range(layers):
        shapes += [((width,), "vector"), ((width,), "vector"), ((3 * width, width), "hidden"), ((3 * width,), "vector"),
                   ((width, width), "hidden"), ((width,), "vector"), ((width,), "vector"), ((width,), "vector"),
                   ((4 * width, width), "hidden"), ((4 * width,), "vector"), ((width, 4 * width), "hidden"),
                   ((width,), "vector")]
    return [*shapes, ((width,), "vector"), ((vocab, width), "head")]


def _references():
    """name -> (optzoo kwargs, builder of the reference optimizer over (params, kinds)), for installed packages."""
    out = {
        "adafactor": ({"learning_rate": 0.01},
                      lambda ps, kinds: torch.optim.Adafactor(ps, lr=0.01)),  # torch's default: for-loop
    }

    def muon(ps, kinds):
        hidden = [p for p, k in zip(ps, kinds) if k == "hidden"]
        rest = [p for p, k in zip(ps, kinds) if k != "hidden"]
        both = [torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=0.02, weight_decay=0.1)]

        class Pair:
            def step(self):
                for o in both:
                    o.step()

        return Pair()

    out["muon"] = ({"learning_rate": 0.02}, muon)
    try:
        import came_pytorch

        out["came"] = ({"learning_rate": 2e-4}, lambda ps, kinds: came_pytorch.CAME(ps, lr=2e-4))
    except ImportError:
        pass
    try:
        import pytorch_optimizer

        out["soap"] = ({"learning_rate": 3e-3}, lambda ps, kinds: pytorch_optimizer.SOAP(ps, lr=3e-3))
    except ImportError:
        pass
    return out


def _tensors(shapes, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) * 0.1 for s in shapes]


#: steps timed together: SOAP refreshes its eigenbases every 10 steps, so a sample must hold whole periods
GROUP = {"soap": 10}


def _timed(step, name, repeats, target_s) -> float:
    group = GROUP.get(name, 1)

    def steps():
        for _ in range(group):
            step()

    return time_step(steps, repeats, target_s)[0] / group


def _time_optzoo(name, kwargs, shapes, kinds, grads, repeats, target_s):
    from ..optimizer import create

    weights = _tensors(shapes, 1)
    for w, kind in zip(weights, kinds):
        w.use_muon = kind == "hidden"
    opt = create(name, **kwargs)
    indices = list(range(len(weights)))
    states = [opt.create_state_multi_precision(i, w) for i, w in zip(indices, weights)]

    def step():
        opt.update_multi_precision(indices, weights, grads, states)

    step()
    return _timed(step, name, repeats, target_s), weights, states, opt.impl


def _time_reference(name, build, shapes, kinds, grads, repeats, target_s):
    params = [torch.nn.Parameter(w) for w in _tensors(shapes, 1)]
    for p, g in zip(params, grads):
        p.grad = g
    ref = build(params, kinds)
    ref.step()
    return _timed(ref.step, name, repeats, target_s)


def _sol_seconds(weights, grads, states, threads, repeats, target_s):
    """One streaming pass over w, g and the full-size states every tensor has (a factored state, or a vector's
    unfactored one, is left out: the SoL is a lower bound)."""
    from ..optimizer.base import _leaves

    full = [[s for s in _leaves(state) if s.numel() == w.numel() and s.dim() > 0] for w, state in zip(weights, states)]
    n_states = min(len(f) for f in full)
    lists = [[f[k] for f in full] for k in range(n_states)]
    kernel = TouchKernel(weights, grads, lists, threads)
    kernel()
    return time_step(kernel, max(repeats, 3), target_s)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py modern", description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizers", default="adafactor,came,muon,soap")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--target-ms", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's setting)")
    p.add_argument("--quick", action="store_true", help="width 64, 2 layers, one repeat")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.layers, args.vocab, args.repeats, args.target_ms = 64, 2, 200, 1, 20.0
    references = _references()
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in references]
    if unknown:
        print(f"bench modern: no reference installed or unknown optimizer: {', '.join(unknown)}", file=sys.stderr)
        return 2
    spec = transformer_shapes(args.width, args.layers, args.vocab)
    shapes, kinds = [s for s, _ in spec], [k for _, k in spec]
    grads = _tensors(shapes, 0)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads, target_s = torch.get_num_threads(), args.target_ms / 1e3
    params = sum(torch.Size(s).numel() for s in shapes)
    rows = []
    print(f"transformer width {args.width}, {args.layers} layers, vocab {args.vocab}: {len(shapes)} tensors, "
          f"{params:,} values, {threads} threads")
    for name in names:
        kwargs, build = references[name]
        # alternated and the faster of two rounds kept for each: a shared machine's load drifts within a run
        ours, theirs = float("inf"), float("inf")
        for _ in range(2):
            seconds, weights, states, impl = _time_optzoo(name, kwargs, shapes, kinds, grads, args.repeats, target_s)
            ours = min(ours, seconds)
            theirs = min(theirs, _time_reference(name, build, shapes, kinds, grads, args.repeats, target_s))
        row = {"optimizer": name, "impl": impl, "optzoo_ms": ours * 1e3, "reference_ms": theirs * 1e3,
               "ratio": theirs / ours}
        if name in ("adafactor", "came"):
            try:
                sol = _sol_seconds(weights, grads, states, threads, args.repeats, target_s)
            except SolUnavailable as err:
                sol, row["sol_error"] = None, str(err)
            row["pct_sol"] = 100.0 * sol / ours if sol else None
        if name == "muon":
            row["optzoo_batched_ms"] = 1e3 * _time_optzoo(name, {**kwargs, "batch_newton_schulz": True}, shapes,
                                                          kinds, grads, args.repeats, target_s)[0]
        rows.append(row)
        extra = f"  {row['pct_sol']:.0f}% SoL" if row.get("pct_sol") else ""
        if "optzoo_batched_ms" in row:
            extra += f"  batched NS {row['optzoo_batched_ms']:.3g} ms"
        print(f"  {name:10s} optzoo {row['optzoo_ms']:8.3g} ms  reference {row['reference_ms']:8.3g} ms  "
              f"x{row['ratio']:.2f}{extra}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_modern.json").write_text(json.dumps(
        {"width": args.width, "layers": args.layers, "vocab": args.vocab, "threads": threads, "params": params,
         "ratio_definition": "reference_ms / optzoo_ms; > 1 means optzoo is faster", "rows": rows}, indent=2))
    print(f"wrote {out / 'bench_modern.json'}")
    return 0
