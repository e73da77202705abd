"""``python bench/run.py publish``: the README's speed table and docs/benchmarks.md's results, from ONE run.

Runs the benchmark with :data:`PUBLISH_ARGS` (run it on a quiet machine: it states the machine, the command and the
load average it saw), writes ``docs/benchmarks.json`` and ``docs/benchmarks.png``, and rewrites the generated
blocks of ``README.md`` and ``docs/benchmarks.md`` from that JSON: the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``. Every number those blocks show is the JSON's, so the pages cannot disagree with it;
``--check`` rewrites nothing and exits 1 when a block differs from what the JSON gives (tests/test_bench.py runs it
on the committed files), and ``--from-json`` regenerates the blocks from the committed JSON without timing anything.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

from . import report

__all__ = ["PUBLISH_ARGS", "blocks", "main", "replace_block"]

ROOT = Path(__file__).resolve().parents[2]
#: the published run: the shape sets the goals name plus three that no kernel was tuned on, the rules with a goal,
#: optzoo's fast path against the SoL, the multi-pass floor and every torch.optim implementation; the fastest of 7
#: rounds of each measurement
PUBLISH_ARGS = ("--shapes", "resnet50,many-small,bert,random,vectors",
                "--optimizers", "sgd,adam,nadam,rmsprop,ftml,lamb,lars,lans,lbsgd",
                "--no-mxnet", "--no-reference", "--no-foreach", "--min", "--repeats", "7")
SHAPE_LABELS = {"resnet50": "ResNet-50", "many-small": "2,000 small", "big": "1 x 100M", "tiny": "2,000 x 64",
                "bert": "BERT (4 layers)", "random": "300 random sizes", "vectors": "4,000 1-D"}
MARKER = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def _pct(x) -> str:
    return "–" if x is None else f"{x:.0f}"


def _machine(data: dict) -> str:
    meta = data["meta"]
    timing = meta.get("timing") or {}
    noise = (f"; noise estimate (gap between a measurement's two fastest rounds): median "
             f"{timing['median_gap_pct']:.1f}%, 90th percentile {timing['p90_gap_pct']:.1f}%") if timing else ""
    statistic = "fastest" if meta.get("statistic") == "min" else "median"
    argv = list(meta.get("argv") or [])
    if "--out" in argv:  # where that run wrote its files is not part of the command
        del argv[argv.index("--out"):argv.index("--out") + 2]
    return (f"Machine: {meta['machine']}; torch {meta['torch']}, Python {meta['python']}; load average "
            f"{meta.get('loadavg_start')} at the start, {meta.get('loadavg_end')} at the end; wall time "
            f"{meta.get('wall_s', 0) / 60:.0f} min. Command: `python bench/run.py {' '.join(argv)}`. Each "
            f"time is the {statistic} of {meta['repeats']} rounds of ~{meta['target_ms']:g} ms{noise}.")


def _torch_best(row: dict) -> float | None:
    times = [m["ms"] for k, m in row["impls"].items()
             if k.startswith("torch") and k != "torch compiled" and m.get("ms")]
    oz = row["impls"].get(report.BASE, {}).get("ms")
    return min(times) / oz if times and oz else None


def readme_table(data: dict) -> str:
    """The README's speed section: the machine, the command, one row per optimizer and shape set, the goals."""
    rows = []
    for r in data["results"]:
        oz = r["impls"].get(report.BASE, {})
        if not oz.get("ms"):
            continue
        best = _torch_best(r)
        label = f"{SHAPE_LABELS.get(r['shape'], r['shape'])} ({r['tensors']:,} tensors, {r['params'] / 1e6:.1f}M)"
        rows.append([label, r["optimizer"], f"{oz['ms']:.3g}", _pct(oz.get("pct_sol")), _pct(oz.get("pct_floor")),
                     "–" if best is None else f"{best:.2f}"])
    checks = data.get("targets") or []
    missed = [c for c in checks if not c["ok"]]
    goals = (f"{len(checks) - len(missed)} of the {len(checks)} goals this run checked were met"
             + (": missed " + "; ".join(f"{c['row']} {c['goal']} (measured {c['value']})" for c in missed)
                if missed else "") + ".")
    return "\n".join([
        _machine(data),
        "% floor: of the multi-pass floor (LARS, LAMB, LANS, LBSGD, MARS, Prodigy); x torch best = the fastest "
        "torch.optim implementation's time / optzoo's (> 1: optzoo faster).",
        "",
        report._md(["shape", "optimizer", "optzoo ms", "% SoL", "% floor", "x torch best"], rows),
        "",
        goals + " Every row and goal: [docs/benchmarks.md](docs/benchmarks.md).",
    ])


def docs_results(data: dict) -> str:
    """docs/benchmarks.md's results: the machine, the goals, the main table and every implementation's row."""
    return "\n".join([
        _machine(data), "", "### Goals", "", report.targets_summary(data.get("targets") or []), "",
        "### optzoo's fast path against everything else", "",
        "\"× X\" = time of X / time of optzoo `impl='auto'` (the native kernel).", "",
        report.main_table(data), "", "### Every implementation", "", report.detail_table(data),
    ])


def blocks(data: dict) -> dict[str, tuple[Path, str]]:
    """block name -> (file, generated text)"""
    return {"readme": (ROOT / "README.md", readme_table(data)),
            "results": (ROOT / "docs" / "benchmarks.md", docs_results(data))}


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the body of block ``name`` replaced; ValueError when the file has no such block."""
    found = [m for m in MARKER.finditer(text) if m.group("name") == name]
    if len(found) != 1:
        raise ValueError(f"expected one <!-- bench:{name} --> ... <!-- /bench:{name} --> block, found {len(found)}")
    m = found[0]
    return text[:m.start("body")] + body.rstrip("\n") + "\n" + text[m.end("body"):]


def _stale(data: dict) -> list[str]:
    out = []
    for name, (path, body) in blocks(data).items():
        text = path.read_text()
        if replace_block(text, name, body) != text:
            out.append(f"{path.relative_to(ROOT)}: block {name!r}")
    return out


def _write(data: dict) -> None:
    for name, (path, body) in blocks(data).items():
        path.write_text(replace_block(path.read_text(), name, body))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/run.py publish", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads (default: torch's setting: every core)")
    p.add_argument("--check", action="store_true", help="exit 1 when README.md or docs/benchmarks.md differ from "
                   "what docs/benchmarks.json gives; time nothing, write nothing")
    p.add_argument("--from-json", action="store_true", help="regenerate the blocks from docs/benchmarks.json "
                   "without timing anything")
    args = p.parse_args(argv)
    json_path = ROOT / "docs" / "benchmarks.json"
    if args.check or args.from_json:
        data = json.loads(json_path.read_text())
        if args.check:
            stale = _stale(data)
            for line in stale:
                print(f"stale: {line} (regenerate: python bench/run.py publish --from-json)", file=sys.stderr)
            return 1 if stale else 0
        _write(data)
        return 0
    from . import main as bench_main

    run_args = [*PUBLISH_ARGS, *(["--threads", str(args.threads)] if args.threads else [])]
    with tempfile.TemporaryDirectory(prefix="optzoo-publish-") as tmp:
        code = bench_main([*run_args, "--out", tmp])
        if code != 0:
            return code
        data = json.loads((Path(tmp) / "bench.json").read_text())
        data["meta"]["argv"] = run_args  # the command as the pages state it (the output folder is temporary)
        report.write_json(data, json_path)
        if (Path(tmp) / "bench.png").exists():
            shutil.copyfile(Path(tmp) / "bench.png", ROOT / "docs" / "benchmarks.png")
    _write(data)
    print(f"wrote {json_path.relative_to(ROOT)}, docs/benchmarks.png and the generated blocks of README.md and "
          "docs/benchmarks.md")
    return 0
