"""``optzoo bench``: per optimizer and shape set, ms/step, GB/s and % of the speed of light (SoL, measured in the
same run) of optzoo's fast path, and its speed ratios against optzoo's reference path, every torch.optim
implementation of the same algorithm (for-loop, foreach, fused) and MXNet 2.0 (timed in its own virtualenv).

Run ``python -m optzoo bench --help`` or ``python bench/run.py --help``. Results go to ``<out>/bench.json`` and
``<out>/bench.png``; the table is printed. Timing goals belong here, never in unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

__all__ = ["QUICK_OPTIMIZERS", "QUICK_ROUNDS", "QUICK_SHAPES", "check_instrument_arguments", "instrument_parser",
           "main", "mxnet_python", "noise_estimate"]

ROOT = Path(__file__).resolve().parents[2]
#: ``--quick`` without --optimizers/--shapes: one rule per kind of memory traffic (one state, two states, two
#: passes for the trust ratio) on many mid-size tensors and on many tiny ones (per-tensor overhead)
QUICK_OPTIMIZERS = ("sgd", "adam", "lamb")
QUICK_SHAPES = ("resnet50", "tiny")
#: ``--quick`` times each step this many rounds (of about 5 ms) and keeps the fastest (as ``--min`` does)
QUICK_ROUNDS = 5


def mxnet_python() -> Path | None:
    """MXNet 2.0's interpreter: ``$OPTZOO_MXNET_PYTHON`` or ``<repo>/.venv-mxnet/bin/python``."""
    explicit = os.environ.get("OPTZOO_MXNET_PYTHON")
    path = Path(explicit) if explicit else ROOT / ".venv-mxnet" / "bin" / "python"
    return path if path.exists() else None


def _csv(text: str) -> list[str]:
    return [x.strip().lower() for x in text.split(",") if x.strip()]


def _parser():
    from .shapes import DEFAULT_SHAPES
    from .torch_runner import DEFAULT_OPTIMIZERS

    p = argparse.ArgumentParser(prog="optzoo bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated shape sets (default: {','.join(DEFAULT_SHAPES)}; --quick: "
                        f"{','.join(QUICK_SHAPES)})")
    p.add_argument("--optimizers", default=None,
                   help=f"comma-separated optimizers (default: {','.join(DEFAULT_OPTIMIZERS)}; --quick: "
                        f"{','.join(QUICK_OPTIMIZERS)})")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed runs (rounds) per measurement (default 3; --quick: {QUICK_ROUNDS})")
    p.add_argument("--min", action="store_true", help="report the fastest of the rounds instead of their median "
                   "(the least disturbed round, on a machine shared with other work; --quick always does)")
    p.add_argument("--threads", type=int, default=None, help="threads for torch, the SoL kernels and MXNet "
                   "(default: torch's current setting)")
    p.add_argument("--target-ms", type=float, default=None,
                   help="length of one timed run in ms (default 150, or 5 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"under 30 s: small shape sets, {len(QUICK_OPTIMIZERS)} optimizers, the fastest of "
                        f"{QUICK_ROUNDS} short rounds (implies --min)")
    p.add_argument("--no-mxnet", action="store_true", help="skip the MXNet comparison")
    p.add_argument("--no-reference", action="store_true", help="skip optzoo's impl='reference' path")
    p.add_argument("--no-foreach", action="store_true", help="skip optzoo's impl='foreach' path")
    p.add_argument("--compiled", default="", metavar="OPTIMIZERS",
                   help="comma-separated optimizers (or 'all') to also time under torch.compile: optzoo's foreach "
                        "rule and torch.optim's step, after their compile (reported apart); minutes per shape set. "
                        "Default: none (the columns say 'not measured')")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the tensors live (cuda: optzoo runs its foreach path; SoL = a.add_(b) bandwidth)")
    p.add_argument("--out", default="bench-results", help="directory for bench.json and bench.png")
    return p


def instrument_parser(description: str, *, shapes: str, optimizers: str, rounds: int,
                      target_ms: float) -> argparse.ArgumentParser:
    """The arguments the instrument scripts (``bench/trust_passes.py``, ``bench/compiled_bound.py``) share, with
    their defaults: ``--shapes``, ``--optimizers``, ``--threads``, ``--rounds``, ``--target-ms``, ``--quick``. A
    script adds its own and checks these with :func:`check_instrument_arguments`."""
    from .shapes import SHAPE_SETS

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shapes", default=shapes, help=f"comma-separated, of {', '.join(SHAPE_SETS)}")
    parser.add_argument("--optimizers", default=optimizers)
    parser.add_argument("--threads", type=int, default=0, help="threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--target-ms", type=float, default=target_ms, help="length of one round of one measurement")
    parser.add_argument("--quick", action="store_true", help="the shape sets' small versions (a smoke test)")
    return parser


def check_instrument_arguments(parser: argparse.ArgumentParser, opts) -> None:
    """``parser.error`` naming the flag for an :func:`instrument_parser` argument out of range: ``--shapes`` not
    comma-separated shape set names, ``--threads`` < 0, ``--rounds`` < 1, ``--target-ms`` <= 0."""
    from .shapes import SHAPE_SETS

    for shape_name in opts.shapes.split(","):
        if shape_name not in SHAPE_SETS:
            parser.error(f"--shapes: {shape_name!r} is not one of {', '.join(SHAPE_SETS)}")
    for flag, value, ok in (("--threads", opts.threads, opts.threads >= 0), ("--rounds", opts.rounds, opts.rounds >= 1),
                            ("--target-ms", opts.target_ms, opts.target_ms > 0)):
        if not ok:
            parser.error(f"{flag} {value} is out of range (threads >= 0, rounds >= 1, target-ms > 0)")


def _machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {threads} thread{'s' if threads != 1 else ''} used"


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def _run_mxnet(python: Path, shapes, names, threads, repeats, target_s, statistic) -> dict:
    from .torch_runner import SPECS

    spec = {"shapes": [list(s) for s in shapes], "optimizers": {n: SPECS[n][0] for n in names},
            "repeats": repeats, "target_s": target_s, "statistic": statistic}
    with tempfile.TemporaryDirectory(prefix="optzoo-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(OMP_NUM_THREADS=str(threads), MXNET_STORAGE_FALLBACK_LOG_VERBOSE="0")
        with resources.as_file(resources.files(__package__).joinpath("mxnet_runner.py")) as runner:
            proc = subprocess.run([str(python), str(runner), str(spec_path), str(out_path)], capture_output=True,
                                  text=True, env=env, timeout=3600)
        if proc.returncode != 0 or not out_path.exists():
            return {"_error": f"MXNet process failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"}
        return json.loads(out_path.read_text())


def noise_estimate(results: list[dict]) -> dict:
    """How repeatable this run's times are: per measurement (every implementation and SoL kernel with two or more
    rounds) the gap between its two fastest rounds, as a % of the fastest. With ``--min`` that gap bounds how much a
    reported time owes to luck; a slow outlier round (another process took the core) does not enter it. Returns the
    median and the 90th percentile of the gaps over the run's measurements."""
    gaps = []
    for row in results:
        sol = row.get("sol") or {}
        for m in [sol, *sol.get("floor_samples_ms", []), *row["impls"].values()]:
            samples = sorted(m if isinstance(m, list) else m.get("samples_ms") or [])
            if len(samples) >= 2:
                gaps.append(100.0 * (samples[1] - samples[0]) / samples[0])
    gaps.sort()

    def percentile(q):
        return gaps[min(len(gaps) - 1, int(q * len(gaps)))] if gaps else 0.0

    return {"method": "gap between the two fastest rounds, % of the fastest", "measurements": len(gaps),
            "median_gap_pct": percentile(0.5), "p90_gap_pct": percentile(0.9)}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    import torch  # before the SoL kernels are loaded: one libgomp in the process

    from . import report, sol
    from .shapes import DEFAULT_SHAPES, SHAPE_SETS, get_shapes, numel
    from .timing import set_statistic
    from .torch_runner import SPECS, make_grads, run_compiled, run_optzoo, run_torch, run_torch_compiled, torch_variants

    shape_names = _csv(args.shapes) if args.shapes else list(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    names = _csv(args.optimizers) if args.optimizers else list(QUICK_OPTIMIZERS if args.quick else SPECS)
    compiled = set(names if args.compiled.strip().lower() == "all" else _csv(args.compiled))
    for s in shape_names:
        if s not in SHAPE_SETS:
            print(f"optzoo bench: unknown shape set {s!r}; choose from {', '.join(SHAPE_SETS)}", file=sys.stderr)
            return 2
    for n in names:
        if n not in SPECS:
            print(f"optzoo bench: no benchmark setup for optimizer {n!r}; choose from {', '.join(SPECS)}",
                  file=sys.stderr)
            return 2
    if (args.repeats is not None and args.repeats < 1) or (args.threads is not None and args.threads < 1):
        print("optzoo bench: --repeats and --threads must be >= 1", file=sys.stderr)
        return 2
    threads = args.threads or torch.get_num_threads()
    statistic = "min" if args.min or args.quick else "median"
    set_statistic(statistic)
    torch.set_num_threads(threads)
    repeats = args.repeats or (QUICK_ROUNDS if args.quick else 3)
    target_s = (args.target_ms if args.target_ms is not None else (5.0 if args.quick else 150.0)) / 1e3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    notes = []
    device_ok = args.device == "cpu" or torch.cuda.is_available()
    if not device_ok:
        notes.append("no CUDA device here: nothing is measured")
        print(f"note: {notes[-1]}")
    try:
        if args.device == "cpu":
            sol.load()
        sol_ok = device_ok
    except sol.SolUnavailable as err:
        sol_ok = False
        notes.append(f"SoL n/a: {err}")
        print(f"note: {err}")
    from .. import native

    native_ok = native.load() is not None
    if not native_ok:
        notes.append(f"native kernels unavailable ({native.unavailable_reason()}): optzoo runs its foreach path")
        print(f"note: {notes[-1]}")
    mx_python = None if args.no_mxnet or args.device != "cpu" else mxnet_python()
    if not args.no_mxnet and args.device != "cpu":
        notes.append("MXNet skipped: its comparison runs on the CPU only")
        print(f"note: {notes[-1]}")
    elif not args.no_mxnet and mx_python is None:
        notes.append("MXNet skipped: no MXNet 2.0 virtualenv (<repo>/.venv-mxnet or $OPTZOO_MXNET_PYTHON)")
        print(f"note: {notes[-1]}")

    started = time.time()
    data = {"meta": {"machine": _machine(threads), "threads": threads, "torch": torch.__version__,
                     "python": platform.python_version(), "quick": args.quick, "repeats": repeats,
                     "statistic": statistic,
                     "target_ms": target_s * 1e3, "loadavg_start": _loadavg(), "argv": list(argv or []),
                     "sol_available": sol_ok, "native": native_ok, "notes": notes, "device": args.device,
                     "ratio_definition": "t_other / t_optzoo (optzoo impl='auto'); > 1 means optzoo is faster",
                     "peak_memory_method": {
                         "torch": "torch.profiler(profile_memory=True): peak of the running sum of allocator "
                                  "allocations/frees during one steady-state step (temporaries only)",
                         "mxnet": "rise of the process RSS high-water mark (VmHWM, reset via /proc/self/clear_refs) "
                                  "over one steady-state step; a lower bound, MXNet pools memory"}},
            "shapes": {}, "results": []}
    for shape_name in shape_names:
        shapes = get_shapes(shape_name, args.quick)
        params = sum(numel(s) for s in shapes)
        data["shapes"][shape_name] = {"tensors": len(shapes), "params": params,
                                      "largest": max(numel(s) for s in shapes),
                                      "description": SHAPE_SETS[shape_name][2]}
        print(f"== {shape_name}: {len(shapes)} tensors, {params:,} values", flush=True)
        if not device_ok:
            for name in names:
                row = {"shape": shape_name, "optimizer": name, "tensors": len(shapes), "params": params,
                       "n_states": None, "bytes_per_param": None, "sol": None,
                       "impls": {"optzoo": {"unavailable": "not measured: no CUDA device"}}}
                data["results"].append(row)
            continue
        grads = make_grads(shapes, device=args.device)
        for name in names:
            impls = {}
            oz, n_states, sol_row = run_optzoo(name, shapes, grads, "auto", repeats, target_s, threads, sol_ok)
            impls["optzoo"] = oz
            sol_s = (sol_row or {}).get("ms", 0) / 1e3
            bpp = sol.bytes_per_param(n_states)
            others = [] if oz["impl"] != "native" or args.no_foreach else ["foreach"]
            others += [] if args.no_reference else ["reference"]
            for impl in others:
                other, _, _ = run_optzoo(name, shapes, grads, impl, repeats, target_s, threads, False)
                other["pct_sol"] = 100.0 * sol_s / (other["ms"] / 1e3) if sol_s else None
                impls[f"optzoo {impl}"] = other
            for variant in torch_variants(name):
                impls[variant] = run_torch(name, variant, shapes, grads, repeats, target_s, bpp, sol_s)
            if name in compiled:
                impls["optzoo compiled"] = run_compiled(name, shapes, grads, repeats, target_s, bpp, sol_s)
                impls["torch compiled"] = run_torch_compiled(name, shapes, grads, repeats, target_s, bpp, sol_s)
            else:
                impls["optzoo compiled"] = {"unavailable": "not measured (--compiled)"}
            data["results"].append({"shape": shape_name, "optimizer": name, "tensors": len(shapes), "params": params,
                                    "n_states": n_states, "bytes_per_param": bpp, "sol": sol_row, "impls": impls})
            shown = "  ".join(f"{k}={m['ms']:.3g}ms" for k, m in impls.items() if m.get("ms"))
            print(f"  {name:10s} SoL={sol_s * 1e3:.3g}ms  {shown}", flush=True)
        del grads
        if mx_python is not None:
            print(f"  (MXNet 2.0, own process, {threads} OpenMP threads)", flush=True)
            mx = _run_mxnet(mx_python, shapes, names, threads, repeats, target_s, statistic)
            data["meta"].setdefault("mxnet", mx.get("mxnet_version") or mx.get("_error"))
            for row in data["results"]:
                if row["shape"] != shape_name:
                    continue
                m = dict(mx.get(row["optimizer"]) or {"error": mx.get("_error", "no result")})
                if m.get("ms"):
                    m["gbps"] = row["params"] * row["bytes_per_param"] / m["ms"] / 1e6
                    sol_ms = (row.get("sol") or {}).get("ms")
                    m["pct_sol"] = 100.0 * sol_ms / m["ms"] if sol_ms else None
                row["impls"]["mxnet"] = m
    data["meta"]["timing"] = noise_estimate(data["results"])
    for row in data["results"]:
        row["ratios"] = report.ratios(row["impls"])
    data["meta"]["wall_s"] = time.time() - started
    data["meta"]["loadavg_end"] = _loadavg()
    data["targets"] = report.check_targets(data)

    report.write_json(data, out / "bench.json")
    print()
    print(report.main_table(data))
    print()
    print(report.targets_summary(data["targets"]))
    noise = data["meta"]["timing"]
    print(f"timing: the {'fastest' if statistic == 'min' else 'median'} of {repeats} rounds of ~{target_s * 1e3:g} ms "
          f"per measurement; noise estimate (gap between a measurement's two fastest rounds): median "
          f"{noise['median_gap_pct']:.1f}%, 90th percentile {noise['p90_gap_pct']:.1f}% over {noise['measurements']} "
          f"measurements; load average {data['meta']['loadavg_start']} at the start, {data['meta']['loadavg_end']} "
          "at the end")
    try:
        report.write_chart(data, out / "bench.png")
        chart = out / "bench.png"
    except ImportError:
        chart = None
        print("note: matplotlib is not installed; no chart written")
    print(f"\nwrote {out / 'bench.json'}" + (f" and {chart}" if chart else "")
          + f" ({data['meta']['wall_s']:.0f} s)")
    return 0
