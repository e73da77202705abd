"""Results of ``optzoo compare``: aggregation across seeds, the ranked table, curve plots and the HTML report.

The HTML report is one self-contained file: inline CSS, images embedded as base64 PNG, no scripts and no
external references, written as well-formed XHTML so that XML parsers read it too.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import statistics
import warnings
from pathlib import Path

from .common import require, write_atomic
from .training import SAMPLERS, steps_to_target, time_to_target

__all__ = [
    "MARKERS",
    "OKABE_ITO",
    "REASONS",
    "palette",
    "FIGURE_DPI",
    "FIGURE_SIZE",
    "aggregate",
    "chance_accuracy",
    "explain",
    "tuned_ranking",
    "plot_curves",
    "plot_lr_sweep",
    "print_ranking",
    "write_csv",
    "write_html",
]

#: curves figure: 12 x 9 inches at 100 dpi = 1200 x 900 pixels
FIGURE_SIZE = (12.0, 9.0)
SWEEP_SIZE = (8.0, 5.0)
FIGURE_DPI = 100

_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")


def _stats(values) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _target(target, model: str) -> float:
    return target[model] if isinstance(target, dict) else target


def aggregate(records: list[dict], target) -> dict[str, list[dict]]:
    """``{model: [group, ...]}`` ranked best first; a group is one optimizer setting (label and learning rate)
    across its seeds. ``target``: the target accuracy, one for all models or ``{model: accuracy}``."""
    groups: dict[tuple, dict] = {}
    for record in records:
        config = record["config"]
        lr = config["params"].get("learning_rate")
        key = (config["model"], config["label"], lr)
        group = groups.setdefault(key, {"model": config["model"], "label": config["label"],
                                        "optimizer": config["optimizer"], "params": config["params"],
                                        "learning_rate": lr, "records": []})
        group["records"].append(record)
    by_model: dict[str, list[dict]] = {}
    for group in groups.values():
        recs = sorted(group.pop("records"), key=lambda r: r["config"]["seed"])
        group["seeds"] = [r["config"]["seed"] for r in recs]
        group["runs"] = len(recs)
        group["diverged"] = sum(r["status"] != "ok" for r in recs)
        for metric in _METRICS:
            group[metric] = _stats([r["final"].get(metric) for r in recs])
        group["wall_time_s"] = _stats([r["wall_time_s"] for r in recs])
        group["nonzero_weights"] = _stats([r["final"].get("nonzero_weights") for r in recs])
        if group["optimizer"] in SAMPLERS:
            group["posterior_mean_val_accuracy"] = _stats([r["final"].get("posterior_mean_val_accuracy")
                                                           for r in recs])
        target_here = _target(target, group["model"])
        reached = [steps_to_target(r, target_here) for r in recs]
        hits = [s for s in reached if s is not None]
        group["steps_to_target"] = {"median": statistics.median(hits) if hits else None, "reached": len(hits),
                                    "runs": len(recs), "per_seed": reached}
        seconds = [t for t in (time_to_target(r, target_here) for r in recs) if t is not None]
        group["time_to_target_s"] = {"median": statistics.median(seconds) if seconds else None}
        by_model.setdefault(group["model"], []).append(group)

    for groups in by_model.values():
        _rank(groups)
    return by_model


def _rank(groups: list[dict]) -> None:
    def rank_key(group):
        acc = group["val_accuracy"]["mean"]
        loss = group["val_loss"]["mean"]
        return (group["diverged"] > 0, -(acc if acc is not None else -1.0), loss if loss is not None else math.inf)

    groups.sort(key=rank_key)
    for rank, group in enumerate(groups, 1):
        group["rank"] = rank


def tuned_ranking(by_model: dict[str, list[dict]], records: list[dict], validation_sizes: dict[str, int],
                  ) -> dict[str, list[dict]]:
    """Each optimizer (label) at the learning rate ``tuning.choose`` picks from its runs, ranked best first; each
    group gains ``lr_tried`` (the learning rates searched) and ``tuned: True``."""
    from .tuning import choose

    runs: dict[tuple, dict[float, list]] = {}
    for record in records:
        config = record["config"]
        lr = config["params"].get("learning_rate")
        runs.setdefault((config["model"], config["label"]), {}).setdefault(lr, []).append(record)
    ranking: dict[str, list[dict]] = {}
    for (model, label), by_lr in runs.items():
        chosen = choose(by_lr, validation_sizes[model])
        group = next(g for g in by_model[model] if g["label"] == label and g["learning_rate"] == chosen)
        ranking.setdefault(model, []).append({**group, "tuned": True, "lr_tried": sorted(by_lr)})
    for groups in ranking.values():
        _rank(groups)
    return ranking


def chance_accuracy(labels) -> float:
    """The validation accuracy of always predicting the most frequent class."""
    counts = labels.bincount()
    return float(counts.max()) / float(counts.sum())


#: why an optimizer may learn nothing on these tasks (shown in the report next to its result)
REASONS = {
    "sgld": ("SGLD is a sampler, not a minimiser: each step adds Gaussian noise of variance lr to every weight, "
             "sized for a loss summed over the whole training set (the negative log posterior). Trained here on "
             "the minibatch mean loss, its drift (lr/2 times the gradient) is smaller by the training-set size, "
             "so the noise wins and the final weights are one noisy sample. Judge it by its posterior-mean "
             "accuracy (the softmax averaged over the samples of the second half of training), or give it the "
             "summed loss: sgld:rescale_grad=<training samples>,learning_rate=1e-4."),
    "ftrl": ("FTRL computes each weight from its accumulated gradient statistics (z, n), which start at zero, and "
             "sets a weight to exactly 0 while |z| <= lamda1: the random initialisation of a network is erased and "
             "hidden units with zero weights get no gradient. FTRL is made for sparse linear models such as "
             "click-through-rate logistic regression: see the sparse task."),
}


def _learns_nothing(group: dict, chance: float) -> bool:
    acc = group["val_accuracy"]["mean"]
    return acc is None or acc < chance + 0.1 * (1.0 - chance)


def explain(by_model: dict[str, list[dict]], chance: dict[str, float]) -> dict[str, dict[str, str]]:
    """``{model: {label: reason}}`` for each optimizer that learned nothing (final validation accuracy within a
    tenth of the way from chance to 100%) and for every sampler (its posterior-mean accuracy)."""
    out: dict[str, dict[str, str]] = {}
    for model, groups in by_model.items():
        for g in groups:
            parts = []
            if _learns_nothing(g, chance[model]):
                acc = g["val_accuracy"]["mean"]
                seen = "diverged" if acc is None else f"reached {100 * acc:.1f}% (chance: {100 * chance[model]:.1f}%)"
                parts.append(f"learned nothing: {seen}." + (" " + REASONS[g["optimizer"]]
                                                             if g["optimizer"] in REASONS else
                                                             " No learning rate tried learns on this task with "
                                                             "these hyperparameters."))
            posterior = g.get("posterior_mean_val_accuracy")
            if posterior and posterior["mean"] is not None:
                if not parts and g["optimizer"] in REASONS:
                    parts.append(REASONS[g["optimizer"]])
                parts.append(f"Posterior-mean validation accuracy: {_pm(posterior, 1, True)} %.")
            if parts:
                out.setdefault(model, {})[g["label"]] = " ".join(parts)
    return out


def _pm(stats: dict, digits: int = 3, percent: bool = False) -> str:
    if stats["mean"] is None:
        return "-"
    scale = 100.0 if percent else 1.0
    text = f"{stats['mean'] * scale:.{digits}f}"
    if stats["n"] > 1:
        text += f" ± {stats['std'] * scale:.{digits}f}"
    return text


def _steps(group: dict) -> str:
    info = group["steps_to_target"]
    if info["median"] is None:
        return f"never (0/{info['runs']})"
    text = f"{info['median']:g}"
    if info["reached"] < info["runs"]:
        text += f" ({info['reached']}/{info['runs']})"
    return text


def _lr(group: dict) -> str:
    return "default" if group["learning_rate"] is None else f"{group['learning_rate']:g}"


def _spread(group: dict) -> str:
    acc = group["val_accuracy"]
    if acc["n"] < 2:
        return "-"
    return f"{100 * acc['min']:.1f}–{100 * acc['max']:.1f}"


def _seconds(group: dict) -> str:
    median = group["time_to_target_s"]["median"]
    return "never" if median is None else f"{median:.2f}"


def _rows(groups: list[dict]) -> list[list[str]]:
    rows = []
    for g in groups:
        name = g["label"] + (" (diverged)" if g["diverged"] else "")
        rows.append([str(g["rank"]), name, _lr(g), _pm(g["val_accuracy"], 1, True), _spread(g), _pm(g["val_loss"]),
                     _pm(g["train_accuracy"], 1, True), _steps(g), _seconds(g), _pm(g["wall_time_s"], 2)])
    return rows


HEADERS = ["#", "optimizer", "lr", "val acc %", "min–max %", "val loss", "train acc %", "steps to target",
           "s to target", "time/run s"]


def _caption(groups: list[dict], target: float, tuned: bool) -> str:
    seeds = max(g["runs"] for g in groups)
    how = ("each optimizer at its tuned learning rate (lr), " if tuned else "")
    return (f"ranked by final validation accuracy, {how}mean ± std over {seeds} seed{'s' if seeds > 1 else ''} "
            f"(min–max: the spread over the seeds); steps and training seconds to {target:.0%} validation "
            "accuracy: median over the seeds that reached it")


def print_ranking(by_model: dict, target, console, tuned: bool = False) -> None:
    """Prints one ranked rich table per model (mean ± standard deviation over the seeds)."""
    table_mod = require("rich.table", "compare")
    box = require("rich.box", "compare")
    for model, groups in by_model.items():
        table = table_mod.Table(title=f"{model}: {_caption(groups, _target(target, model), tuned)}",
                                title_justify="left", box=box.SIMPLE_HEAD)
        for i, header in enumerate(HEADERS):  # on a narrow terminal the numbers wrap, never the names
            table.add_column(header, justify="left" if i == 1 else "right", no_wrap=i < 2)
        for row in _rows(groups):
            table.add_row(*row)
        console.print(table)


def write_csv(by_model: dict, path: Path) -> None:
    """One row per group: ``ranking.csv`` (the ranking) and, with --tune, ``lr_search.csv`` (every lr tried)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "rank", "optimizer", "label", "learning_rate", "runs", "diverged", "val_accuracy_mean",
                     "val_accuracy_std", "val_accuracy_min", "val_accuracy_max", "val_loss_mean", "val_loss_std",
                     "train_accuracy_mean", "train_loss_mean", "steps_to_target_median", "reached_target",
                     "time_to_target_s_median", "wall_time_s_mean", "nonzero_weights_mean",
                     "posterior_mean_val_accuracy_mean"])
    for model, groups in by_model.items():
        for g in groups:
            posterior = g.get("posterior_mean_val_accuracy", {}).get("mean")
            writer.writerow([model, g["rank"], g["optimizer"], g["label"], g["learning_rate"], g["runs"],
                             g["diverged"], g["val_accuracy"]["mean"], g["val_accuracy"]["std"],
                             g["val_accuracy"]["min"], g["val_accuracy"]["max"], g["val_loss"]["mean"],
                             g["val_loss"]["std"], g["train_accuracy"]["mean"], g["train_loss"]["mean"],
                             g["steps_to_target"]["median"], g["steps_to_target"]["reached"],
                             g["time_to_target_s"]["median"], g["wall_time_s"]["mean"], g["nonzero_weights"]["mean"],
                             posterior])
    write_atomic(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------- plots
def _pyplot():
    matplotlib = require("matplotlib", "compare")
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot", "compare")


#: Okabe & Ito's colour-blind-safe palette (black last: it is the colour of reference lines elsewhere)
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
#: one marker per line, so that lines differ by shape as well as colour (and in grey print)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h", "8", "d")


def palette(plt, n: int) -> list[str]:
    """``n`` colours from the Okabe–Ito palette, repeated past eight (pair each with ``MARKERS``, which then
    tell repeated colours apart)."""
    return [OKABE_ITO[i % len(OKABE_ITO)] for i in range(n)]


def marker(i: int) -> str:
    return MARKERS[i % len(MARKERS)]


def _save_png(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    write_atomic(path, buffer.getvalue())


def plot_curves(records: list[dict], model: str, order: list[str], path: Path, target: float,
                color_order: list[str] | None = None) -> None:
    """Training/validation loss and accuracy against epochs: the mean over seeds, shaded from min to max.

    Lines (and the legend) follow ``order``; colours and markers follow ``color_order`` (default: ``order``), so
    one optimizer keeps its colour and marker in every figure.
    """
    plt = _pyplot()
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    panels = [("train_loss", "training loss (minibatch mean)", True), ("val_loss", "validation loss", True),
              ("train_accuracy", "training accuracy (minibatch mean)", False),
              ("val_accuracy", "validation accuracy", False)]
    color_order = color_order or order
    style_of = {label: (color, marker(i)) for i, (label, color) in
                enumerate(zip(color_order, palette(plt, len(color_order))))}
    for label in order:
        color, mark = style_of.get(label, ("black", "."))
        runs = [r for r in records if r["config"]["label"] == label and r["config"]["model"] == model]
        if not runs:
            continue
        length = min(len(r["curves"]["step"]) for r in runs)
        x = np.asarray(runs[0]["curves"]["epoch"][:length])
        for ax, (metric, _, _) in zip(axes.flat, panels):
            ys = np.asarray([[np.nan if v is None else v for v in r["curves"][metric][:length]] for r in runs],
                            dtype=float)
            with warnings.catch_warnings():  # all-NaN columns (diverged runs) simply draw nothing
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(ys, axis=0)
                ax.plot(x, mean, color=color, label=label, linewidth=1.5, marker=mark, markersize=5,
                        markevery=max(1, length // 8), markeredgecolor="black", markeredgewidth=0.5)
                if len(runs) > 1:
                    ax.fill_between(x, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=color, alpha=0.15,
                                    linewidth=0)
    for ax, (_, title, log) in zip(axes.flat, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0.0, 1.0)
    axes[1, 1].axhline(target, color="grey", linestyle=":", linewidth=1)
    handles, labels = axes[1, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7) or 1, fontsize="small")
    fig.suptitle(f"{model}: mean over seeds (band: min to max)")
    _save_png(fig, path)
    plt.close(fig)


def plot_lr_sweep(groups: list[dict], model: str, path: Path, color_order: list[str] | None = None,
                  chosen: list[dict] | None = None) -> bool:
    """Final validation accuracy against the learning rate, one line per optimizer (mean ± std over the seeds
    each learning rate ran); with ``chosen`` (a tuned ranking) lines follow labels and each chosen learning rate
    is ringed. False if there is nothing to draw."""
    key = "label" if chosen is not None else "optimizer"
    lines: dict[str, list] = {}
    for g in groups:
        lr = g["learning_rate"]
        if lr is not None and g["val_accuracy"]["mean"] is not None:
            lines.setdefault(g[key], []).append((lr, g["val_accuracy"]["mean"], g["val_accuracy"]["std"]))
    lines = {k: sorted(v) for k, v in lines.items() if len(v) > 1}
    if not lines:
        return False
    plt = _pyplot()
    order = list(dict.fromkeys([*(color_order or []), *sorted(lines)]))
    style_of = {k: (c, marker(i)) for i, (k, c) in enumerate(zip(order, palette(plt, len(order))))}
    fig, ax = plt.subplots(figsize=SWEEP_SIZE, dpi=FIGURE_DPI, layout="constrained")
    picked = {g[key]: g for g in chosen or []}
    for name in (k for k in order if k in lines):
        color, mark = style_of[name]
        lrs, accs, stds = zip(*lines[name])
        ax.errorbar(lrs, accs, yerr=stds, color=color, marker=mark, capsize=3, label=name, markeredgecolor="black",
                    markeredgewidth=0.5)
        best = picked.get(name)
        if best is not None and best["val_accuracy"]["mean"] is not None:
            ax.plot(best["learning_rate"], best["val_accuracy"]["mean"], marker="o", markersize=14,
                    markerfacecolor="none", markeredgecolor=color, markeredgewidth=2)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation accuracy")
    lowest = min(acc for points in lines.values() for _, acc, _ in points)
    ax.set_ylim(max(0.0, math.floor(10 * lowest - 0.5) / 10), 1.0)  # room below the lowest point, not below 0
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=2, loc="best")
    ringed = "; ring: the chosen learning rate" if chosen is not None else ""
    ax.set_title(f"{model}: learning-rate sensitivity (mean ± std over seeds{ringed})", fontsize="medium")
    _save_png(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1250px;color:#222;
padding:0 1em;overflow-wrap:break-word}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.92em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td.name,th.name{text-align:left}
td.wrap{text-align:left;overflow-wrap:anywhere;min-width:12em}
tr.best td{background:#eaf6ea}
.note{background:#fff6e0;border-left:4px solid #f0b000;padding:0.5em 1em}
.muted{color:#666;font-size:0.9em}
img{max-width:100%;height:auto;border:1px solid #eee}
code{background:#f5f5f5;padding:1px 4px;overflow-wrap:anywhere}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], name_col: int | None = 1, best: bool = False,
           wrap_col: int | None = None) -> str:
    """A table in a horizontally scrolling box (a narrow screen scrolls the table, never the page)."""
    def cell(tag, i, value):
        cls = ' class="name"' if i == name_col else ' class="wrap"' if i == wrap_col else ""
        return f"<{tag}{cls}>{_e(value)}</{tag}>"

    out = ['<div class="scroll"><table>', "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers)) + "</tr>"]
    for n, row in enumerate(rows):
        cls = ' class="best"' if best and n == 0 else ""
        out.append(f"<tr{cls}>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"/></p>'


def write_html(path: Path, *, title: str, by_model: dict, records: list[dict], settings: dict, specs: list,
               notes: list[str], images: dict[str, list[tuple[Path, str]]], interrupted: bool,
               planned_runs: int, target, explanations: dict | None = None, tuned: bool = False) -> None:
    """Writes the self-contained report (atomically). ``target``: one accuracy or ``{model: accuracy}``."""
    explanations = explanations or {}
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>",
             '<meta charset="utf-8"/>', '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
             f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>", "</head>",
             "<body>", f"<h1>{_e(title)}</h1>"]
    if interrupted:
        parts.append(f'<p class="note">Interrupted: {len(records)} of {planned_runs} runs completed. This report '
                     "covers the completed runs only.</p>")
    summary = []
    for model, groups in by_model.items():
        best = groups[0]
        fastest = [g for g in groups if g["steps_to_target"]["median"] is not None]
        fastest.sort(key=lambda g: (-g["steps_to_target"]["reached"], g["steps_to_target"]["median"]))
        at = f" at lr {_lr(best)}" if tuned else ""
        line = (f"<b>{_e(model)}</b>: best final validation accuracy: <b>{_e(best['label'])}</b>{_e(at)} "
                f"({_e(_pm(best['val_accuracy'], 1, True))} %)")
        if fastest:
            line += (f"; first to {_target(target, model):.0%} validation accuracy: <b>{_e(fastest[0]['label'])}</b> "
                     f"(median {fastest[0]['steps_to_target']['median']:g} steps)")
        summary.append(f"<li>{line}.</li>")
    if summary:
        caveat = ("each optimizer at the learning rate its own search chose on the same budget (the other "
                  "hyperparameters as listed below)" if tuned else
                  "each optimizer at the hyperparameters listed below, untuned (compare --tune tunes the learning "
                  "rates)")
        parts += ["<h2>What should I use?</h2>", "<ul>", *summary, "</ul>",
                  (f'<p class="muted">Small models, small data sets and few epochs, {_e(caveat)}: read the ranking '
                   "as a hint for this setting, not as a verdict.</p>")]
    else:
        parts.append("<p>No run completed.</p>")
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *[f"<li>{_e(n)}</li>" for n in notes], "</ul>"]
    for model, groups in by_model.items():
        parts.append(f"<h2>{_e(model)}</h2>")
        parts.append(f'<p class="muted">{_e(_caption(groups, _target(target, model), tuned).capitalize())}.</p>')
        parts.append(_table(HEADERS, _rows(groups), best=True))
        if explanations.get(model):
            parts += ["<p>Why some optimizers learn nothing here:</p>", "<ul>",
                      *[f"<li><b>{_e(label)}</b>: {_e(text)}</li>" for label, text in explanations[model].items()],
                      "</ul>"]
        for image_path, alt in images.get(model, []):
            parts.append(_img(image_path, alt))
    parts += ["<h2>Optimizers</h2>",
              _table(["optimizer", "constructor call"], [[s.label, s.describe()] for s in specs], name_col=0,
                     wrap_col=1)]
    parts += ["<h2>Settings</h2>", _table(["setting", "value"], [[k, v] for k, v in settings.items()], name_col=0,
                                          wrap_col=1)]
    run_rows = []
    for r in sorted(records, key=lambda r: (r["config"]["model"], r["config"]["label"],
                                            r["config"]["params"].get("learning_rate") or 0, r["config"]["seed"])):
        c, f = r["config"], r["final"]
        hit = steps_to_target(r, _target(target, c["model"]))
        lr = c["params"].get("learning_rate")
        run_rows.append([c["model"], c["label"], "default" if lr is None else f"{lr:g}", c["seed"], r["status"],
                         "-" if f["val_accuracy"] is None else f"{100 * f['val_accuracy']:.1f}",
                         "-" if f["val_loss"] is None else f"{f['val_loss']:.4f}",
                         "never" if hit is None else hit, r["steps"], f"{r['wall_time_s']:.2f}"])
    parts += ["<h2>Every run</h2>",
              _table(["model", "optimizer", "lr", "seed", "status", "val acc %", "val loss", "steps to target",
                      "steps", "time s"], run_rows),
              '<p class="muted">Each run\'s curves and settings: <code>runs/*.json</code> beside this report.</p>',
              "</body>", "</html>", ""]
    write_atomic(path, "\n".join(parts))
