"""``optzoo compare``: "What should I use?" answered by running the optimizers.

Trains a small MLP and CNN on scikit-learn's handwritten digits and a sparse logistic regression
(``training.TASKS``) with each chosen optimizer and several seeds (``--tune``: at learning rates searched for
each optimizer, ``tuning``), then prints a ranked table and writes curves (PNG) and a self-contained HTML
report. Each finished run is written at once (atomically) to ``OUT/runs/<model>__<label>__seed<k>.json``
(``..._lr<lr>.json`` when tuning), so an interrupted comparison keeps its completed runs, and the report is then
made from them. Each comparison gets a new folder
(``runs/compare-<date>-<time>``, linked as ``runs/latest``); an existing non-empty ``--out`` is refused unless
``--resume`` or ``--force`` says what to do with it, so no run is ever overwritten by surprise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
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

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_SEEDS", "RUNS_ROOT", "add_parser", "run"]

DEFAULT_EPOCHS = 8
DEFAULT_SEEDS = 3
#: where each comparison without --out gets a new folder compare-<date>-<time>, and the link ``latest`` to it
RUNS_ROOT = "runs"
#: what a comparison writes into its folder (the patterns --force clears and a resumed run refreshes)
OUTPUT_PATTERNS = ("report.html", "results.json", "ranking.csv", "lr_search.csv", "curves_*.png", "lr_sweep_*.png",
                   "runs/*.json")

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
  optzoo compare                                    the guide's optimizers on every task, 3 seeds
  optzoo compare --tune                             each optimizer at its tuned learning rate (the demo)
  optzoo compare --preset modern                    Lion, Schedule-Free, Prodigy, ... against AdamW
  optzoo compare --model mlp --optimizers sgd:momentum=0.9 adam:learning_rate=0.01
  optzoo compare --optimizers adam,sgd --lr 0.1 0.01 0.001 --seeds 5 --out runs/lr-sweep
  optzoo compare --model sparse --optimizers ftrl adagrad sgd --tune
  optzoo compare --resume                           finish the latest comparison (runs/latest)

Optimizer specs are NAME[:KEY=VALUE,...] with the MXNet argument names that 'optzoo list' shows
(values: numbers, true/false, none). Several specs may be separated by spaces or commas.
Tasks: mlp and cnn (scikit-learn's digits), sparse (logistic regression on 2,000 sparse binary features).
"""


def _tasks(text: str) -> tuple[str, ...]:
    from .training import TASKS

    names: list[str] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            names += list(TASKS)
        elif part == "both":  # the two digits models (the option's original meaning)
            names += ["mlp", "cnn"]
        elif part in TASKS:
            names.append(part)
        else:
            raise argparse.ArgumentTypeError(f"unknown task {part!r}; choose from {', '.join(TASKS)}, both, all")
    return tuple(dict.fromkeys(names))


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="train small models with several optimizers and rank them (--tune: at tuned rates)",
        description="Train a small MLP and CNN on scikit-learn's handwritten digits (8x8 images) and a sparse "
                    "logistic regression with each optimizer and several seeds; print a ranked table and write "
                    "loss/accuracy curves (PNG), per-run JSON files, ranking.csv and a self-contained HTML report "
                    "into a new folder runs/compare-<date>-<time> (runs/latest links to it). Default optimizers: "
                    "the MXNet optimizer guide's, with its example hyperparameters. --tune searches each "
                    "optimizer's learning rate on the same budget (see optzoo.cli.tuning).",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", action="extend", metavar="NAME[:K=V,...]",
                        help="optimizers to compare (default: the preset's optimizers that are registered)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="guide",
                        help="the default optimizer set: the MXNet guide's (default) or the modern ones")
    parser.add_argument("--model", type=_tasks, default=None, metavar="TASK[,TASK]",
                        help="tasks: mlp, cnn, sparse, both (mlp,cnn) or all (default: all)")
    parser.add_argument("--tune", action="store_true",
                        help="tune each optimizer's learning rate (log grid, successive halving over seeds) and "
                             "rank by the tuned result")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                        help=f"epochs per run (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS,
                        help=f"runs per optimizer and model, seeds 0..N-1 (default: {DEFAULT_SEEDS})")
    parser.add_argument("--lr", type=lr_list, nargs="+", action="extend", metavar="LR",
                        help="learning rates to sweep: every optimizer runs with each (replaces its learning_rate)")
    parser.add_argument("--target-accuracy", type=fraction, default=None, metavar="FRACTION",
                        help="validation accuracy for the time-to-target columns (default: per task, 0.9 on "
                             "digits, 0.75 on sparse)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="minibatch size (default: 32)")
    parser.add_argument("--eval-every", type=positive_int, default=None, metavar="STEPS",
                        help="evaluate every STEPS updates (default: three times per epoch)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (default: 1; these models are too small to gain from more)")
    parser.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                        help="runs trained at once, in worker processes (default: the usable CPUs; the results "
                             "do not depend on it)")
    parser.add_argument("--out", default=None, metavar="FOLDER",
                        help=f"output folder; must be new or empty unless --resume or --force (default: a new "
                             f"{RUNS_ROOT}/compare-<date>-<time>, linked as {RUNS_ROOT}/latest)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs in OUT/runs with identical settings instead of training again "
                             f"(without --out: the folder {RUNS_ROOT}/latest links to)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out, deleting the results of the comparison there")
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
            raise CLIError(f"none of the {args.preset} preset's optimizers is registered; pass --optimizers",
                           status=1)
    if args.lr and args.tune:
        raise CLIError("--lr and --tune exclude each other: --tune chooses the learning rates itself")
    if args.lr:
        rates = list(dict.fromkeys(lr for group in args.lr for lr in group))
        specs = [spec.with_params(learning_rate=lr) for spec in specs for lr in rates]
    check_specs(specs)
    assign_labels(specs)
    return specs, notes


# ---------------------------------------------------------------------------------------------- output folder
def _new_run_folder(root: Path) -> Path:
    stamp = datetime.datetime.now().strftime("compare-%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as err:
            raise CLIError(f"cannot create a run folder in {str(root)!r}: {err.strerror or err}") from None
    raise CLIError(f"cannot create a run folder in {str(root)!r}: too many comparisons started this second")


def _link_latest(folder: Path) -> None:
    """Points ``<root>/latest`` at ``folder`` (a relative symbolic link, replaced atomically)."""
    latest = folder.parent / "latest"
    if latest.exists() and not latest.is_symlink():
        print(f"optzoo compare: {latest} is not a link; left as it is", file=sys.stderr)
        return
    tmp = folder.parent / f".latest-{os.getpid()}"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(folder.name, target_is_directory=True)
        os.replace(tmp, latest)
    except OSError as err:  # e.g. a file system without links: the folder itself is what matters
        print(f"optzoo compare: could not link {latest} to {folder.name}: {err.strerror or err}", file=sys.stderr)


def _output_dir(args) -> tuple[Path, bool]:
    """The comparison's folder and whether it is new and automatic (then ``latest`` links to it)."""
    if args.out is None:
        root = Path(RUNS_ROOT)
        if args.resume:
            latest = root / "latest"
            if not latest.is_dir():
                raise CLIError(f"--resume without --out continues {latest}, which does not exist; pass --out FOLDER")
            return prepare_output_dir(latest.resolve()), False
        return prepare_output_dir(_new_run_folder(root)), True
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not (args.resume or args.force):
        raise CLIError(f"--out {args.out!r} is not empty: pass --resume to reuse its finished runs or --force to "
                       f"replace its results, or leave out --out for a new folder under {RUNS_ROOT}/")
    out = prepare_output_dir(out)
    if args.force:
        for pattern in OUTPUT_PATTERNS:
            for old in out.glob(pattern):
                old.unlink()
    return out, False


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


class _Runner:
    """The main process's side of the runs (``workers.execute``'s callbacks): reuses finished runs (--resume),
    shows a progress bar per run in progress, saves each finished run at once, prints one line, counts failures."""

    def __init__(self, args, runs_dir: Path, progress, overall, targets: dict, training_sizes: dict):
        self.args, self.runs_dir, self.training_sizes = args, runs_dir, training_sizes
        self.progress, self.overall, self.targets = progress, overall, targets
        self.finished: dict[tuple, dict] = {}  # job key -> record
        self.failures: list[str] = []
        self.bars: dict[tuple, int] = {}  # job key -> progress task of a run in progress
        self.started = 0

    @property
    def records(self) -> list[dict]:
        """The finished runs in a fixed order (plan, then job), whatever order they finished in."""
        return [self.finished[key] for key in sorted(self.finished)]

    @staticmethod
    def name(config) -> str:
        lr = dict(config.params).get("learning_rate") if config.tuning else None
        return f"{config.model} {config.label}{'' if lr is None else f' lr {lr:g}'} seed {config.seed}"

    def start(self, key, config):
        from .workers import Outcome

        self.started += 1
        overall = self.progress.tasks[self.overall]
        if overall.total is not None and self.started > overall.total:  # a search's grid grew at an edge
            self.progress.update(self.overall, total=self.started)
        record = _load_finished(_run_path(self.runs_dir, config), config) if self.args.resume else None
        if record is not None:
            record["reused"] = True
            return Outcome(record=record)
        steps = config.epochs * -(-self.training_sizes[config.dataset] // config.batch_size)
        self.bars[key] = self.progress.add_task(self.name(config), total=steps, info="")
        return None

    def tick(self, key, step, total, accuracy) -> None:
        if key in self.bars:
            info = "" if accuracy is None else f"val acc {accuracy:.3f}"
            self.progress.update(self.bars[key], completed=step, info=info)

    def finish(self, key, config, outcome) -> None:
        from .training import steps_to_target, time_to_target

        if key in self.bars:
            self.progress.remove_task(self.bars.pop(key))
        counter = f"[{len(self.finished) + len(self.failures) + 1}/{self.progress.tasks[self.overall].total:g}]"
        name = self.name(config)
        record = outcome.record
        if record is None:
            # one optimizer failing (e.g. rejecting a gradient) must not cost the other results
            self.failures.append(f"{name} failed: {outcome.error}")
            self.progress.console.print(f"{counter} {self.failures[-1]}", highlight=False, markup=False)
            self.progress.advance(self.overall)
            return
        reused = record.pop("reused", False)
        if not reused:
            target = self.targets[config.model]
            record["target_accuracy"] = target
            record["steps_to_target"] = steps_to_target(record, target)
            record["time_to_target_s"] = time_to_target(record, target)
            record["optzoo_version"] = __version__
        with _sigint_deferred():
            if not reused:
                write_json_atomic(_run_path(self.runs_dir, config), record)
            self.finished[key] = record
        final = record["final"]
        acc = "-" if final["val_accuracy"] is None else f"{final['val_accuracy']:.3f}"
        loss = "-" if final["val_loss"] is None else f"{final['val_loss']:.4f}"
        status = "" if record["status"] == "ok" else f" [{record['status']}]"
        how = "reused" if reused else f"{record['wall_time_s']:.1f} s"
        self.progress.console.print(f"{counter} {name}: val acc {acc}, val loss {loss} ({how}){status}",
                                    highlight=False, markup=False)
        self.progress.advance(self.overall)


def _configs(steps, make):
    """A plan of ``(lr, seed)`` pairs (``tuning.plan``) as a plan of run configurations made by ``make(lr, seed)``;
    failed runs come back as None."""
    try:
        pairs = next(steps)
        while True:
            outcomes = yield [make(lr, seed) for lr, seed in pairs]
            pairs = steps.send([o.record for o in outcomes])
    except StopIteration as stop:
        return stop.value


def _all_at_once(configs):
    """A plan that trains ``configs`` (independent runs)."""
    yield configs


def _reference_lr(spec) -> float:
    from .common import registered_optimizers

    lr = spec.params.get("learning_rate")
    return float(lr) if lr is not None else float(registered_optimizers()[spec.name].default_learning_rate)


def run(args) -> int:
    specs, notes = _plan(args)
    rich_console = require("rich.console", "compare")
    rich_progress = require("rich.progress", "compare")
    require("matplotlib", "compare")
    require("sklearn", "compare")
    out, automatic = _output_dir(args)
    runs_dir = prepare_output_dir(out / "runs", "--out")
    if automatic:
        _link_latest(out)
    import torch

    from . import report, tuning, workers
    from .training import TASKS, RunConfig, load_task_data

    torch.set_num_threads(args.threads)
    models = args.model or tuple(TASKS)
    datasets = {}
    for model in models:
        if TASKS[model].dataset not in datasets:
            datasets[TASKS[model].dataset] = load_task_data(model)
    targets = {m: args.target_accuracy or TASKS[m].target_accuracy for m in models}
    validation_sizes = {m: datasets[TASKS[m].dataset].y_val.shape[0] for m in models}

    def config_for(model, spec, seed, params=None):
        data = datasets[TASKS[model].dataset]
        steps_per_epoch = -(-data.x_train.shape[0] // args.batch_size)
        eval_every = args.eval_every or max(1, -(-steps_per_epoch // 3))
        params = spec.params if params is None else params
        return RunConfig(model, spec.name, tuple(sorted(params.items())), spec.label, seed, args.epochs,
                         args.batch_size, eval_every, TASKS[model].dataset, tuning=args.tune)

    if args.tune:
        per_search = tuning.GRID_POINTS + min(tuning.SURVIVORS, tuning.GRID_POINTS) * (args.seeds - 1)
        planned = per_search * len(specs) * len(models)  # an estimate: the grid may be extended at its edges
        searches = [(model, spec) for model in models for spec in specs]
        plans = [_configs(tuning.plan(_reference_lr(spec), args.seeds, validation_sizes[model]),
                          lambda lr, seed, model=model, spec=spec: config_for(
                              model, spec, seed, {**spec.params, "learning_rate": lr}))
                 for model, spec in searches]
    else:
        # seed-major, as a plain loop would go: an interrupted comparison has every optimizer's first seeds
        plans = [_all_at_once([config_for(model, spec, seed)])
                 for seed in range(args.seeds) for model in models for spec in specs]
        planned = len(specs) * len(models) * args.seeds
    jobs = args.jobs or workers.default_jobs()

    err = rich_console.Console(stderr=True)
    show_bars = err.is_terminal and not args.no_progress
    interrupted = False
    tuned: dict[str, dict[str, float]] = {}  # model -> label -> chosen learning rate
    started = time.perf_counter()
    columns = [rich_progress.TextColumn("{task.description}"), rich_progress.BarColumn(),
               rich_progress.MofNCompleteColumn(), rich_progress.TimeElapsedColumn(),
               rich_progress.TextColumn("{task.fields[info]}")]
    with rich_progress.Progress(*columns, console=err, disable=not show_bars) as progress:
        overall = progress.add_task("all runs", total=planned, info="")
        runner = _Runner(args, runs_dir, progress, overall, targets,
                         {name: data.x_train.shape[0] for name, data in datasets.items()})
        try:
            chosen = workers.execute(plans, jobs, models, datasets, args.threads, runner.start, runner.tick,
                                     runner.finish)
            if args.tune:
                for (model, spec), (lr, _) in zip(searches, chosen):
                    tuned.setdefault(model, {})[spec.label] = lr
                    progress.console.print(f"{model} {spec.label}: chosen learning rate {lr:g}",
                                           highlight=False, markup=False)
        except KeyboardInterrupt:
            interrupted = True
    training_time = time.perf_counter() - started
    records, failures = runner.records, runner.failures

    settings = {
        "command": "optzoo " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["compare"])),
        "tasks": "; ".join(f"{m}: {TASKS[m].description}" for m in models),
        "datasets": "; ".join(f"{d.description} ({d.x_train.shape[0]} training / {d.x_val.shape[0]} validation, "
                              "fixed split)" for d in datasets.values()),
        "learning rates": ("tuned per optimizer and task: successive halving over seeds on a half-decade grid of "
                           f"{tuning.GRID_POINTS} around each optimizer's own learning rate (extended at an edge), "
                           f"the best {tuning.SURVIVORS} with all seeds; chosen by mean final validation accuracy, "
                           "rates within one standard error of the best tied and decided by the lower mean "
                           "validation loss"
                           if args.tune else "as given (no tuning)"),
        "epochs": args.epochs, "seeds": args.seeds, "batch size": args.batch_size,
        "evaluation": "three times per epoch" if args.eval_every is None else f"every {args.eval_every} steps",
        "target accuracy": ", ".join(f"{m}: {t:g}" for m, t in targets.items()), "torch threads": args.threads,
        "optzoo": __version__, "torch": torch.__version__,
        "runs": f"{len(records)} completed" + (" (interrupted)" if interrupted else ""),
        "training time": f"{training_time:.1f} s",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    chance = {m: report.chance_accuracy(datasets[TASKS[m].dataset].y_val) for m in models}
    notes = notes + failures
    try:
        _write_outputs(out, records, specs, notes, settings, models, interrupted, planned, targets, rich_console,
                       report, tuned if args.tune else None, chance,
                       validation_sizes)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        print(f"optzoo compare: interrupted; {len(records)} runs completed and kept in {runs_dir} "
              f"(report: {out / 'report.html'})", file=sys.stderr)
        return 130
    if failures:
        print(f"optzoo compare: {len(failures)} runs failed (listed in the report)", file=sys.stderr)
        return 1
    return 0


def _write_outputs(out, records, specs, notes, settings, models, interrupted, planned, targets, rich_console,
                   report, tuned, chance, validation_sizes) -> None:
    by_model = report.aggregate(records, targets)
    ranking = report.tuned_ranking(by_model, records, validation_sizes) if tuned is not None else by_model
    explanations = report.explain(ranking, chance)
    write_json_atomic(out / "results.json", {
        "settings": settings, "interrupted": interrupted, "planned_runs": planned, "tuned": tuned is not None,
        "optimizers": [{"label": s.label, "name": s.name, "params": s.params} for s in specs], "notes": notes,
        "ranking": ranking, "explanations": explanations, "chance_accuracy": chance,
        "runs": sorted(f"runs/{_run_name(r)}" for r in records)})
    written = [out / "results.json", out / "ranking.csv"]
    report.write_csv(ranking, out / "ranking.csv")
    if tuned is not None:
        report.write_csv(by_model, out / "lr_search.csv")
        written.append(out / "lr_search.csv")
    stdout = rich_console.Console(width=None if sys.stdout.isatty() else 160)
    if ranking:
        report.print_ranking(ranking, targets, stdout, tuned=tuned is not None)
    for line in (f"{m} {label}: {text}" for m, rows in explanations.items() for label, text in rows.items()):
        print(line, file=sys.stderr)
    images: dict[str, list] = {}
    for model in models:
        groups = ranking.get(model)
        if not groups:
            continue
        curves = out / f"curves_{model}.png"
        chosen = [r for r in records if r["config"]["model"] == model and _is_chosen(r, groups)]
        report.plot_curves(chosen, model, [g["label"] for g in groups], curves, targets[model],
                           color_order=[s.label for s in specs])
        images[model] = [(curves, f"{model}: loss and accuracy curves")]
        sweep = out / f"lr_sweep_{model}.png"
        if report.plot_lr_sweep(by_model[model], model, sweep, color_order=[s.label for s in specs],
                                chosen=groups if tuned is not None else None):
            images[model].append((sweep, f"{model}: final validation accuracy against learning rate"))
    written += [p for v in images.values() for p, _ in v]
    report.write_html(out / "report.html", title="optzoo compare: which optimizer should I use?",
                      by_model=ranking, records=records, settings=settings, specs=specs, notes=notes,
                      images=images, interrupted=interrupted, planned_runs=planned, target=targets,
                      explanations=explanations, tuned=tuned is not None)
    written.append(out / "report.html")
    for pattern in OUTPUT_PATTERNS:  # a resumed comparison's figures of tasks it no longer has
        for old in out.glob(pattern):
            if not pattern.startswith("runs/") and old not in written:
                old.unlink()
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)


def _is_chosen(record: dict, groups: list[dict]) -> bool:
    config = record["config"]
    return any(g["label"] == config["label"] and g["learning_rate"] == config["params"].get("learning_rate")
               for g in groups)


def _run_name(record: dict) -> str:
    from .training import RunConfig

    c = dict(record["config"])
    c["params"] = tuple(sorted(c["params"].items()))
    return f"{RunConfig(**c).key()}.json"
