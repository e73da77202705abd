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
from .training import steps_to_target

__all__ = [
    "palette",
    "FIGURE_DPI",
    "FIGURE_SIZE",
    "aggregate",
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


def aggregate(records: list[dict], target: float) -> dict[str, list[dict]]:
    """``{model: [group, ...]}`` ranked best first; a group is one optimizer setting across its seeds."""
    groups: dict[tuple, dict] = {}
    for record in records:
        config = record["config"]
        key = (config["model"], config["label"])
        group = groups.setdefault(key, {"model": config["model"], "label": config["label"],
                                        "optimizer": config["optimizer"], "params": config["params"],
                                        "records": []})
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
        reached = [steps_to_target(r, target) for r in recs]
        hits = [s for s in reached if s is not None]
        group["steps_to_target"] = {"median": statistics.median(hits) if hits else None, "reached": len(hits),
                                    "runs": len(recs), "per_seed": reached}
        by_model.setdefault(group["model"], []).append(group)

    def rank_key(group):
        acc = group["val_accuracy"]["mean"]
        loss = group["val_loss"]["mean"]
        return (group["diverged"] > 0, -(acc if acc is not None else -1.0), loss if loss is not None else math.inf)

    for groups in by_model.values():
        groups.sort(key=rank_key)
        for rank, group in enumerate(groups, 1):
            group["rank"] = rank
    return by_model


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


def _rows(groups: list[dict]) -> list[list[str]]:
    rows = []
    for g in groups:
        name = g["label"] + (" (diverged)" if g["diverged"] else "")
        rows.append([str(g["rank"]), name, _pm(g["val_accuracy"], 1, True), _pm(g["val_loss"]),
                     _pm(g["train_accuracy"], 1, True), _pm(g["train_loss"]), _steps(g),
                     _pm(g["wall_time_s"], 2)])
    return rows


HEADERS = ["#", "optimizer", "val acc %", "val loss", "train acc %", "train loss", "steps to target", "time/run s"]


def print_ranking(by_model: dict, target: float, console) -> None:
    """Prints one ranked rich table per model (mean ± standard deviation over the seeds)."""
    table_mod = require("rich.table", "compare")
    box = require("rich.box", "compare")
    for model, groups in by_model.items():
        seeds = max(g["runs"] for g in groups)
        table = table_mod.Table(title=f"{model}: ranked by final validation accuracy (mean ± std over {seeds} "
                                      f"seed{'s' if seeds > 1 else ''}); steps to {target:.0%} validation "
                                      "accuracy: median over the seeds that reached it",
                                title_justify="left", box=box.SIMPLE_HEAD)
        for i, header in enumerate(HEADERS):  # on a narrow terminal the numbers wrap, never the names
            table.add_column(header, justify="left" if i == 1 else "right", no_wrap=i < 2)
        for row in _rows(groups):
            table.add_row(*row)
        console.print(table)


def write_csv(by_model: dict, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "rank", "optimizer", "label", "runs", "diverged", "val_accuracy_mean",
                     "val_accuracy_std", "val_loss_mean", "val_loss_std", "train_accuracy_mean", "train_loss_mean",
                     "steps_to_target_median", "reached_target", "wall_time_s_mean"])
    for model, groups in by_model.items():
        for g in groups:
            writer.writerow([model, g["rank"], g["optimizer"], g["label"], g["runs"], g["diverged"],
                             g["val_accuracy"]["mean"], g["val_accuracy"]["std"], g["val_loss"]["mean"],
                             g["val_loss"]["std"], g["train_accuracy"]["mean"], g["train_loss"]["mean"],
                             g["steps_to_target"]["median"], g["steps_to_target"]["reached"],
                             g["wall_time_s"]["mean"]])
    write_atomic(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------- plots
def _pyplot():
    matplotlib = require("matplotlib", "compare")
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot", "compare")


def palette(plt, n: int):
    """Distinct colours: tab10, or tab20's dark shades before its light ones (neighbours never look alike)."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    cmap = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [cmap(order[i % 20]) for i in range(n)]


def _save_png(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    write_atomic(path, buffer.getvalue())


def plot_curves(records: list[dict], model: str, order: list[str], path: Path, target: float,
                color_order: list[str] | None = None) -> None:
    """Training/validation loss and accuracy against epochs: the mean over seeds, shaded from min to max.

    Lines (and the legend) follow ``order``; colours follow ``color_order`` (default: ``order``), so one
    optimizer keeps its colour in every model's figure.
    """
    plt = _pyplot()
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    panels = [("train_loss", "training loss (minibatch mean)", True), ("val_loss", "validation loss", True),
              ("train_accuracy", "training accuracy (minibatch mean)", False),
              ("val_accuracy", "validation accuracy", False)]
    color_order = color_order or order
    color_of = dict(zip(color_order, palette(plt, len(color_order))))
    for label in order:
        color = color_of.get(label, "black")
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
                ax.plot(x, mean, color=color, label=label, linewidth=1.5)
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
    fig.suptitle(f"{model} on scikit-learn digits: mean over seeds (band: min to max)")
    _save_png(fig, path)
    plt.close(fig)


def plot_lr_sweep(groups: list[dict], model: str, path: Path) -> bool:
    """Final validation accuracy against the learning rate, one line per optimizer; False if nothing to draw."""
    lines: dict[str, list] = {}
    for g in groups:
        lr = g["params"].get("learning_rate")
        if lr is not None and g["val_accuracy"]["mean"] is not None:
            lines.setdefault(g["optimizer"], []).append((lr, g["val_accuracy"]["mean"], g["val_accuracy"]["std"]))
    lines = {k: sorted(v) for k, v in lines.items() if len(v) > 1}
    if not lines:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SWEEP_SIZE, dpi=FIGURE_DPI, layout="constrained")
    for (name, points), color in zip(sorted(lines.items()), palette(plt, len(lines))):
        lrs, accs, stds = zip(*points)
        ax.errorbar(lrs, accs, yerr=stds, color=color, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title(f"{model}: learning-rate sensitivity (mean ± std over seeds)")
    _save_png(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1250px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.92em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td.name,th.name{text-align:left}
tr.best td{background:#eaf6ea}
.note{background:#fff6e0;border-left:4px solid #f0b000;padding:0.5em 1em}
.muted{color:#666;font-size:0.9em}
img{max-width:100%;height:auto;border:1px solid #eee}
code{background:#f5f5f5;padding:1px 4px}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], name_col: int | None = 1, best: bool = False) -> str:
    out = ["<table>", "<tr>" + "".join(f'<th class="name">{_e(h)}</th>' if i == name_col else f"<th>{_e(h)}</th>"
                                       for i, h in enumerate(headers)) + "</tr>"]
    for n, row in enumerate(rows):
        cls = ' class="best"' if best and n == 0 else ""
        out.append(f"<tr{cls}>" + "".join(f'<td class="name">{_e(c)}</td>' if i == name_col else f"<td>{_e(c)}</td>"
                                          for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"/></p>'


def write_html(path: Path, *, title: str, by_model: dict, records: list[dict], settings: dict, specs: list,
               notes: list[str], images: dict[str, list[tuple[Path, str]]], interrupted: bool,
               planned_runs: int, target: float) -> None:
    """Writes the self-contained report (atomically)."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>",
             '<meta charset="utf-8"/>', f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>", "</head>",
             "<body>", f"<h1>{_e(title)}</h1>"]
    if interrupted:
        parts.append(f'<p class="note">Interrupted: {len(records)} of {planned_runs} runs completed. This report '
                     "covers the completed runs only.</p>")
    summary = []
    for model, groups in by_model.items():
        best = groups[0]
        fastest = [g for g in groups if g["steps_to_target"]["median"] is not None]
        fastest.sort(key=lambda g: (-g["steps_to_target"]["reached"], g["steps_to_target"]["median"]))
        line = (f"<b>{_e(model)}</b>: best final validation accuracy: <b>{_e(best['label'])}</b> "
                f"({_e(_pm(best['val_accuracy'], 1, True))} %)")
        if fastest:
            line += (f"; first to {target:.0%} validation accuracy: <b>{_e(fastest[0]['label'])}</b> "
                     f"(median {fastest[0]['steps_to_target']['median']:g} steps)")
        summary.append(f"<li>{line}.</li>")
    if summary:
        parts += ["<h2>What should I use?</h2>", "<ul>", *summary, "</ul>",
                  ('<p class="muted">Small models, a small data set and few epochs: read the ranking as a hint for '
                   "this setting, with each optimizer at the hyperparameters listed below, not as a verdict.</p>")]
    else:
        parts.append("<p>No run completed.</p>")
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *[f"<li>{_e(n)}</li>" for n in notes], "</ul>"]
    for model, groups in by_model.items():
        parts.append(f"<h2>{_e(model)}</h2>")
        parts.append(f'<p class="muted">Ranked by final validation accuracy, mean ± standard deviation over the '
                     f'seeds; steps to target: median over the seeds that reached {target:.0%} validation '
                     "accuracy (checked at each evaluation point).</p>")
        parts.append(_table(HEADERS, _rows(groups), best=True))
        for image_path, alt in images.get(model, []):
            parts.append(_img(image_path, alt))
    parts += ["<h2>Optimizers</h2>",
              _table(["optimizer", "constructor call"], [[s.label, s.describe()] for s in specs], name_col=0)]
    parts += ["<h2>Settings</h2>", _table(["setting", "value"], [[k, v] for k, v in settings.items()], name_col=0)]
    run_rows = []
    for r in sorted(records, key=lambda r: (r["config"]["model"], r["config"]["label"], r["config"]["seed"])):
        c, f = r["config"], r["final"]
        hit = steps_to_target(r, target)
        run_rows.append([c["model"], c["label"], c["seed"], r["status"],
                         "-" if f["val_accuracy"] is None else f"{100 * f['val_accuracy']:.1f}",
                         "-" if f["val_loss"] is None else f"{f['val_loss']:.4f}",
                         "never" if hit is None else hit, r["steps"], f"{r['wall_time_s']:.2f}"])
    parts += ["<h2>Every run</h2>",
              _table(["model", "optimizer", "seed", "status", "val acc %", "val loss", "steps to target", "steps",
                      "time s"], run_rows),
              '<p class="muted">Each run\'s curves and settings: <code>runs/*.json</code> beside this report.</p>',
              "</body>", "</html>", ""]
    write_atomic(path, "\n".join(parts))
