"""``optzoo compare``: "What should I use?" answered by running the optimizers.

Trains a small MLP and/or CNN on scikit-learn's handwritten digits with each chosen optimizer and several
seeds, then prints a ranked table and writes curves (PNG) and a self-contained HTML report. Each finished run
is written at once (atomically) to ``OUT/runs/<model>__<label>__seed<k>.json``, so an interrupted comparison
keeps its completed runs, and the report is then made from them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from .. import __version__
from .common import (
    CLIError,
    assign_labels,
    check_specs,
    fraction,
    guide_specs,
    jsonable,
    lr_list,
    parse_optimizer_specs,
    positive_int,
    prepare_output_dir,
    require,
    write_json_atomic,
)

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_OUT", "DEFAULT_SEEDS", "add_parser", "run"]

DEFAULT_EPOCHS = 8
DEFAULT_SEEDS = 3
DEFAULT_OUT = "runs/compare"
DEFAULT_TARGET = 0.9

#: ``--preset modern``: the optimizers that replaced Adam in many recipes since MXNet, with rates for these models
#: (AdamW is the baseline; a name this build does not register is skipped with a note)
MODERN_PRESET = [
    ("adamw", {"learning_rate": 0.003, "wd": 0.01}), ("lion", {"learning_rate": 0.0003, "wd": 0.1}),
    ("adopt", {"learning_rate": 0.003}), ("ademamix", {"learning_rate": 0.003}), ("mars", {"learning_rate": 0.003}),
    ("schedulefree_adamw", {"learning_rate": 0.005}), ("schedulefree_sgd", {"learning_rate": 0.5}),
    ("prodigy", {}), ("adafactor", {}), ("came", {}), ("muon", {}), ("soap", {}),
]
PRESETS = {"guide": None, "modern": MODERN_PRESET}

_EXAMPLES = """\
examples:
  optzoo compare                                    the guide's optimizers, MLP and CNN, 3 seeds
  optzoo compare --preset modern                    Lion, Schedule-Free, Prodigy, ... against AdamW
  optzoo compare --model mlp --optimizers sgd:momentum=0.9 adam:learning_rate=0.01
  optzoo compare --optimizers adam,sgd --lr 0.1 0.01 0.001 --seeds 5 --out runs/lr-sweep
  optzoo compare --optimizers adam --epochs 10 --target-accuracy 0.95

Optimizer specs are NAME[:KEY=VALUE,...] with the MXNet argument names that 'optzoo list' shows
(values: numbers, true/false, none). Several specs may be separated by spaces or commas.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="train small models on scikit-learn's digits with several optimizers and rank them",
        description="Train a small MLP and/or CNN on scikit-learn's handwritten digits (8x8 images) with each "
                    "optimizer and several seeds; print a ranked table and write loss/accuracy curves (PNG), "
                    "per-run JSON files and a self-contained HTML report. Default optimizers: the MXNet "
                    "optimizer guide's, with its example hyperparameters.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", action="extend", metavar="NAME[:K=V,...]",
                        help="optimizers to compare (default: the preset's optimizers that are registered)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="guide",
                        help="the default optimizer set: the MXNet guide's (default) or the modern ones")
    parser.add_argument("--model", choices=("mlp", "cnn", "both"), default="both",
                        help="model(s) to train (default: both)")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                        help=f"epochs per run (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS,
                        help=f"runs per optimizer and model, seeds 0..N-1 (default: {DEFAULT_SEEDS})")
    parser.add_argument("--lr", type=lr_list, nargs="+", action="extend", metavar="LR",
                        help="learning rates to sweep: every optimizer runs with each (replaces its learning_rate)")
    parser.add_argument("--target-accuracy", type=fraction, default=DEFAULT_TARGET, metavar="FRACTION",
                        help=f"validation accuracy for the steps-to-target column (default: {DEFAULT_TARGET})")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="minibatch size (default: 32)")
    parser.add_argument("--eval-every", type=positive_int, default=None, metavar="STEPS",
                        help="evaluate every STEPS updates (default: three times per epoch)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (default: 1; these models are too small to gain from more)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="FOLDER",
                        help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs in OUT/runs with identical settings instead of training again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (one line per run only)")
    parser.set_defaults(run=run)


def _plan(args) -> tuple[list, list[str]]:
    if args.optimizers:
        specs, notes = parse_optimizer_specs(args.optimizers), []
    else:
        specs, notes = guide_specs(PRESETS[getattr(args, "preset", "guide")])
        for note in notes:
            print(f"optzoo compare: {note}", file=sys.stderr)
        if not specs:
            raise CLIError("none of the guide's optimizers is registered; pass --optimizers", status=1)
    if args.lr:
        rates = list(dict.fromkeys(lr for group in args.lr for lr in group))
        specs = [spec.with_params(learning_rate=lr) for spec in specs for lr in rates]
    check_specs(specs)
    assign_labels(specs)
    return specs, notes


@contextlib.contextmanager
def _sigint_deferred():
    """Holds Ctrl-C back while a finished run is saved and counted, so the files and the report agree."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _run_path(runs_dir: Path, config) -> Path:
    return runs_dir / f"{config.key()}.json"


def _load_finished(path: Path, config) -> dict | None:
    import json

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("config") != jsonable(config.as_dict()):
        return None
    if record.get("status") not in ("ok", "diverged") or "curves" not in record:
        return None
    return record


def run(args) -> int:
    specs, notes = _plan(args)
    out = prepare_output_dir(args.out)
    runs_dir = prepare_output_dir(out / "runs", "--out")
    rich_console = require("rich.console", "compare")
    rich_progress = require("rich.progress", "compare")
    require("matplotlib", "compare")
    import torch

    from . import report
    from .training import RunConfig, load_digits, steps_to_target, train_run

    torch.set_num_threads(args.threads)
    data = load_digits()
    models = ("mlp", "cnn") if args.model == "both" else (args.model,)
    steps_per_epoch = -(-data.x_train.shape[0] // args.batch_size)
    eval_every = args.eval_every or max(1, -(-steps_per_epoch // 3))
    configs = [RunConfig(model, spec.name, tuple(sorted(spec.params.items())), spec.label, seed, args.epochs,
                         args.batch_size, eval_every)
               for seed in range(args.seeds) for model in models for spec in specs]
    if not args.resume:  # results of an earlier, different comparison must not leak into this report
        for stale in runs_dir.glob("*.json"):
            stale.unlink()

    err = rich_console.Console(stderr=True)
    show_bars = err.is_terminal and not args.no_progress
    records: list[dict] = []
    failures: list[str] = []
    interrupted = False
    started = time.perf_counter()
    columns = [rich_progress.TextColumn("{task.description}"), rich_progress.BarColumn(),
               rich_progress.MofNCompleteColumn(), rich_progress.TimeElapsedColumn(),
               rich_progress.TextColumn("{task.fields[info]}")]
    try:
        with rich_progress.Progress(*columns, console=err, disable=not show_bars) as progress:
            overall = progress.add_task("all runs", total=len(configs), info="")
            for n, config in enumerate(configs, 1):
                name = f"{config.model} {config.label} seed {config.seed}"
                path = _run_path(runs_dir, config)
                record = _load_finished(path, config) if args.resume else None
                if record is None:
                    task = progress.add_task(name, total=config.epochs * steps_per_epoch, info="")

                    def tick(step, total, accuracy, task=task):
                        if step % 5 == 0 or step == total:
                            progress.update(task, completed=step, info=f"val acc {accuracy:.3f}")

                    try:
                        record = train_run(config, data, tick)
                    except (ArithmeticError, RuntimeError, TypeError, ValueError) as exc:
                        # one optimizer failing (e.g. rejecting a gradient) must not cost the other results
                        message = " ".join(str(exc).split())
                        failures.append(f"{name} failed: {type(exc).__name__}: {message}")
                        progress.console.print(f"[{n}/{len(configs)}] {failures[-1]}", highlight=False,
                                               markup=False)
                        progress.advance(overall)
                        continue
                    finally:
                        progress.remove_task(task)
                    record["target_accuracy"] = args.target_accuracy
                    record["steps_to_target"] = steps_to_target(record, args.target_accuracy)
                    record["optzoo_version"] = __version__
                    how = f"{record['wall_time_s']:.1f} s"
                else:
                    how = "reused"
                with _sigint_deferred():
                    if how != "reused":
                        write_json_atomic(path, record)
                    records.append(record)
                final = record["final"]
                acc = "-" if final["val_accuracy"] is None else f"{final['val_accuracy']:.3f}"
                loss = "-" if final["val_loss"] is None else f"{final['val_loss']:.4f}"
                status = "" if record["status"] == "ok" else f" [{record['status']}]"
                progress.console.print(f"[{n}/{len(configs)}] {name}: val acc {acc}, val loss {loss} "
                                       f"({how}){status}", highlight=False, markup=False)
                progress.advance(overall)
    except KeyboardInterrupt:
        interrupted = True
    training_time = time.perf_counter() - started

    settings = {
        "command": "optzoo " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["compare"])),
        "dataset": data.description,
        "split": f"{data.x_train.shape[0]} training / {data.x_val.shape[0]} validation images (stratified, fixed)",
        "models": ", ".join(models),
        "epochs": args.epochs, "seeds": args.seeds, "batch size": args.batch_size,
        "evaluation": f"every {eval_every} steps ({steps_per_epoch} steps per epoch)",
        "target accuracy": args.target_accuracy, "torch threads": args.threads,
        "optzoo": __version__, "torch": torch.__version__,
        "runs": f"{len(records)} of {len(configs)} completed" + (" (interrupted)" if interrupted else ""),
        "training time": f"{training_time:.1f} s",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    notes = notes + failures
    try:
        _write_outputs(out, records, specs, notes, settings, models, interrupted, len(configs),
                       args.target_accuracy, rich_console, report)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        print(f"optzoo compare: interrupted; {len(records)} of {len(configs)} runs completed and kept in "
              f"{runs_dir} (report: {out / 'report.html'})", file=sys.stderr)
        return 130
    if failures:
        print(f"optzoo compare: {len(failures)} of {len(configs)} runs failed (listed in the report)", file=sys.stderr)
        return 1
    return 0


def _write_outputs(out, records, specs, notes, settings, models, interrupted, planned, target, rich_console,
                   report) -> None:
    by_model = report.aggregate(records, target)
    write_json_atomic(out / "results.json", {
        "settings": settings, "interrupted": interrupted, "planned_runs": planned,
        "optimizers": [{"label": s.label, "name": s.name, "params": s.params} for s in specs], "notes": notes,
        "ranking": by_model, "runs": sorted(f"runs/{_run_name(r)}" for r in records)})
    report.write_csv(by_model, out / "ranking.csv")
    stdout = rich_console.Console(width=None if sys.stdout.isatty() else 160)
    if by_model:
        report.print_ranking(by_model, target, stdout)
    images: dict[str, list] = {}
    for model in models:
        groups = by_model.get(model)
        if not groups:
            continue
        curves = out / f"curves_{model}.png"
        report.plot_curves(records, model, [g["label"] for g in groups], curves, target,
                           color_order=[s.label for s in specs])
        images[model] = [(curves, f"{model}: loss and accuracy curves")]
        sweep = out / f"lr_sweep_{model}.png"
        if report.plot_lr_sweep(groups, model, sweep):
            images[model].append((sweep, f"{model}: final validation accuracy against learning rate"))
    report.write_html(out / "report.html", title="optzoo compare: which optimizer should I use?",
                      by_model=by_model, records=records, settings=settings, specs=specs, notes=notes,
                      images=images, interrupted=interrupted, planned_runs=planned, target=target)
    written = ", ".join(str(p) for p in [out / "report.html", *(i for v in images.values() for i, _ in v),
                                         out / "results.json"])
    print(f"wrote {written}", file=sys.stderr)


def _run_name(record: dict) -> str:
    from .training import RunConfig

    c = dict(record["config"])
    c["params"] = tuple(sorted(c["params"].items()))
    return f"{RunConfig(**c).key()}.json"
