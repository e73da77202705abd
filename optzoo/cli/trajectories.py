"""``optzoo trajectories``: each optimizer's path on 2-D test functions, on contour plots (PNG) and animated
(GIF through matplotlib's PillowWriter): the diagrams the MXNet optimizer guide refers to.

Every optimizer moves one float32 point ``(x, y)`` with its own ``get_updater``. The test functions' scales
have nothing in common with a neural network's, so unless a learning rate is given (``name:learning_rate=..``
or ``--lr``) each optimizer is shown with the learning rate from a grid whose path ends closest to a minimum,
among the paths that do not diverge (ties, such as two converged paths: the one that got there sooner). A
diverged path is marked as such in the legend and the JSON summary.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import (
    GUIDE_OPTIMIZERS,
    CLIError,
    OptimizerSpec,
    assign_labels,
    check_specs,
    parse_optimizer_specs,
    positive_float,
    positive_int,
    prepare_output_dir,
    registered_optimizers,
    require,
    write_atomic,
    write_json_atomic,
)
from .report import marker, palette

__all__ = ["FUNCTIONS", "GIF_DPI", "GIF_SIZE", "LR_GRID", "TestFunction", "add_parser", "optimize_path", "png_size",
           "run"]

#: learning rates tried for an optimizer that is given none (half decades)
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
#: (width, height) in inches and dots per inch of the still image and of the animation
PNG_PANEL, PNG_COLUMNS, PNG_DPI = (4.0, 3.4), 4, 100
GIF_SIZE, GIF_DPI = (7.0, 5.5), 80
GIF_FRAMES = 50
DEFAULT_STEPS = 300
DEFAULT_OUT = "runs/trajectories"


@dataclass(frozen=True)
class TestFunction:
    name: str
    formula: str
    f: Callable  # f(x, y) on floats or numpy arrays (arithmetic only)
    grad: Callable  # (df/dx, df/dy) at floats
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]
    f_min: float
    xlim: tuple[float, float]
    ylim: tuple[float, float]


def _rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


def _rosenbrock_grad(x, y):
    return -2 * (1 - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)


def _beale(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2


def _beale_grad(x, y):
    a, b, c = 1.5 - x + x * y, 2.25 - x + x * y ** 2, 2.625 - x + x * y ** 3
    return (2 * a * (y - 1) + 2 * b * (y ** 2 - 1) + 2 * c * (y ** 3 - 1),
            2 * a * x + 4 * b * x * y + 6 * c * x * y ** 2)


def _saddle(x, y):
    return x ** 2 - y ** 2 + 0.25 * y ** 4


def _saddle_grad(x, y):
    return 2 * x, -2 * y + y ** 3


FUNCTIONS: dict[str, TestFunction] = {
    "rosenbrock": TestFunction(
        "rosenbrock", "(1 - x)² + 100 (y - x²)²", _rosenbrock, _rosenbrock_grad, start=(-1.5, 2.0),
        minima=((1.0, 1.0),), f_min=0.0, xlim=(-2.0, 2.0), ylim=(-1.0, 3.0)),
    "beale": TestFunction(
        "beale", "(1.5 - x + xy)² + (2.25 - x + xy²)² + (2.625 - x + xy³)²", _beale, _beale_grad, start=(1.0, 1.5),
        minima=((3.0, 0.5),), f_min=0.0, xlim=(-4.5, 4.5), ylim=(-4.5, 4.5)),
    "saddle": TestFunction(
        "saddle", "x² - y² + y⁴/4 (saddle point at the origin)", _saddle, _saddle_grad, start=(-1.5, 1e-3),
        minima=((0.0, math.sqrt(2.0)), (0.0, -math.sqrt(2.0))), f_min=-1.0, xlim=(-2.0, 2.0), ylim=(-2.5, 2.5)),
}

_EXAMPLES = """\
examples:
  optzoo trajectories                                  the guide's optimizers on every function
  optzoo trajectories --functions rosenbrock --optimizers sgd adam nag --steps 500
  optzoo trajectories --optimizers adam:learning_rate=0.05 sgd:learning_rate=0.001,momentum=0.9
  optzoo trajectories --functions saddle --lr 0.01

Functions: rosenbrock (minimum at (1, 1)), beale (minimum at (3, 0.5)) and saddle (x² - y² + y⁴/4: a saddle
point at the origin, minima at (0, ±√2)).
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "trajectories", help="draw each optimizer's path on 2-D test functions (PNG and animated GIF)",
        description="Run each optimizer from the same start on 2-D test functions (Rosenbrock, Beale, a saddle "
                    "point) and draw the paths on contour plots, as a PNG (with f against the step) and an "
                    "animated GIF per function. Without a given learning rate, each optimizer uses the best "
                    f"of {', '.join(f'{v:g}' for v in LR_GRID)} for each function.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", action="extend", metavar="NAME[:K=V,...]",
                        help="optimizers to draw (default: the guide's optimizers that are registered)")
    parser.add_argument("--functions", nargs="+", action="extend", metavar="NAME",
                        help=f"test functions (default: all of {', '.join(FUNCTIONS)}); commas work too")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help=f"updates per path (default: {DEFAULT_STEPS})")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="one learning rate for every optimizer (default: tuned per function from a grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed for optimizers that draw noise (SGLD)")
    parser.add_argument("--no-gif", action="store_true", help="only the PNG images")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="FOLDER", help=f"output folder (default: {DEFAULT_OUT})")
    parser.set_defaults(run=run)


def _functions(tokens) -> list[TestFunction]:
    if not tokens:
        return list(FUNCTIONS.values())
    names = [part.strip().lower() for token in tokens for part in token.split(",") if part.strip()]
    unknown = [n for n in names if n not in FUNCTIONS]
    if unknown or not names:
        raise CLIError(f"--functions: unknown function {unknown[0] if unknown else ''!r}; choose from "
                       f"{', '.join(FUNCTIONS)}")
    return [FUNCTIONS[n] for n in dict.fromkeys(names)]


def _specs(args) -> tuple[list[OptimizerSpec], list[str]]:
    if args.optimizers:
        specs, notes = parse_optimizer_specs(args.optimizers), []
    else:
        registry = registered_optimizers()
        specs, notes = [], []
        for name, params in GUIDE_OPTIMIZERS:
            if name in registry:  # the guide's hyperparameters, except its (neural network) learning rates
                specs.append(OptimizerSpec(name, {k: v for k, v in params.items() if k != "learning_rate"}))
            else:
                notes.append(f"skipped {name}: not registered in this optzoo build")
        for note in notes:
            print(f"optzoo trajectories: {note}", file=sys.stderr)
        if not specs:
            raise CLIError("none of the guide's optimizers is registered; pass --optimizers", status=1)
    if args.lr is not None:
        specs = [spec.with_params(learning_rate=args.lr) for spec in specs]
    check_specs(specs)
    if len({s.name for s in specs}) < len(specs):
        assign_labels(specs)
    return specs, notes


# ---------------------------------------------------------------------------------------------- optimisation
def optimize_path(spec: OptimizerSpec, fn: TestFunction, steps: int, seed: int = 0) -> dict:
    """Runs one optimizer from ``fn.start``; returns the path (a list of [x, y]), f along it and its status."""
    from ..optimizer import create, get_updater

    torch.manual_seed(seed)
    updater = get_updater(create(spec.name, **spec.params))
    # the point as 2 rows of 1: identical for element-wise and whole-tensor (trust-ratio) rules, and row-wise rules
    # such as GroupAdaGrad keep one history per coordinate
    point = torch.tensor(fn.start, dtype=torch.float32).reshape(2, 1)
    path, values = [list(fn.start)], [float(fn.f(*fn.start))]
    # a path that leaves the plotted window by more than half its size has diverged (it left the region where
    # the function's minimum lies, or is thrashing across it)
    width, height = fn.xlim[1] - fn.xlim[0], fn.ylim[1] - fn.ylim[0]
    x_low, x_high = fn.xlim[0] - width / 2, fn.xlim[1] + width / 2
    y_low, y_high = fn.ylim[0] - height / 2, fn.ylim[1] + height / 2
    status = "ok"
    for _ in range(steps):
        # the gradient in float64 at the float32 point, rounded to float32 (the optimizer's arithmetic is float32)
        grad = torch.tensor(fn.grad(*map(float, point.flatten().tolist())), dtype=torch.float32).reshape(2, 1)
        if not torch.isfinite(grad).all():
            status = "diverged"
            break
        updater(0, grad, point)
        x, y = float(point[0]), float(point[1])
        if not (math.isfinite(x) and math.isfinite(y) and x_low <= x <= x_high and y_low <= y <= y_high):
            status = "diverged"
            break
        path.append([x, y])
        values.append(float(fn.f(x, y)))
    return {"path": path, "f": values, "status": status}


def final_distance(result: dict, fn: TestFunction) -> float:
    """Euclidean distance from the path's last point to the nearest minimum."""
    x, y = result["path"][-1]
    return min(math.hypot(x - mx, y - my) for mx, my in fn.minima)


def _score(result: dict, fn: TestFunction, steps: int) -> tuple[float, float]:
    """Sort key of a path (smaller is better): the final distance to the nearest minimum (distances below 1e-4,
    converged, count as equal), then the mean log10 gap to the minimum value along the path (sooner); a path
    that diverged or stopped early is never better than one that did not."""
    if result["status"] != "ok" or len(result["f"]) < steps + 1:
        return (math.inf, math.inf)
    distance = final_distance(result, fn)
    speed = sum(math.log10(max(v - fn.f_min, 0.0) + 1e-12) for v in result["f"]) / len(result["f"])
    return (0.0 if distance < 1e-4 else distance, speed)


def best_path(spec: OptimizerSpec, fn: TestFunction, steps: int, seed: int) -> dict:
    """The path at the spec's learning rate, or, when the spec gives none, at the grid's learning rate whose path
    ends closest to a minimum among the paths that do not diverge (all diverged: the largest rate's, marked so)."""
    if "learning_rate" in spec.params:
        result = optimize_path(spec, fn, steps, seed)
        result.update(learning_rate=spec.params["learning_rate"], tuned=False)
    else:
        best, best_score = None, None
        for lr in LR_GRID:
            candidate = optimize_path(spec.with_params(learning_rate=lr), fn, steps, seed)
            score = _score(candidate, fn, steps)
            if best is None or score < best_score:
                best, best_score = candidate, score
                best.update(learning_rate=lr, tuned=True)
        result = best
    result["final_distance"] = final_distance(result, fn)
    return result


# ---------------------------------------------------------------------------------------------- drawing
def _pyplot():
    matplotlib = require("matplotlib", "trajectories")
    matplotlib.use("Agg", force=True)
    require("PIL", "trajectories")
    return require("matplotlib.pyplot", "trajectories")


def _contour(ax, fn: TestFunction, np) -> None:
    """log10(f - f_min) as a shaded image with contour lines (one image draws much faster than filled contours,
    which matters for the animation: every frame redraws the figure)."""
    xs = np.linspace(*fn.xlim, 240)
    ys = np.linspace(*fn.ylim, 240)
    gx, gy = np.meshgrid(xs, ys)
    gz = np.log10(np.maximum(fn.f(gx, gy) - fn.f_min, 1e-12) + 1e-3)
    ax.imshow(gz, extent=(*fn.xlim, *fn.ylim), origin="lower", cmap="Greys_r", alpha=0.6, aspect="auto",
              interpolation="bilinear")
    levels = np.linspace(gz.min(), gz.max(), 22)[1:-1]
    step = 3  # contour lines on a coarser grid: the same picture, a third of the drawing
    ax.contour(gx[::step, ::step], gy[::step, ::step], gz[::step, ::step], levels=levels, colors="grey",
               linewidths=0.4)
    for mx, my in fn.minima:
        ax.plot(mx, my, marker="*", color="gold", markersize=16, markeredgecolor="black", zorder=5)
    ax.plot(*fn.start, marker="o", color="black", markersize=6, zorder=5)
    ax.set_xlim(*fn.xlim)
    ax.set_ylim(*fn.ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")


def _legend_label(spec: OptimizerSpec, result: dict) -> str:
    lr = f"lr={result['learning_rate']:g}" + ("*" if result["tuned"] else "")
    return f"{spec.label} ({lr})" + (" DIVERGED" if result["status"] != "ok" else "")


def png_size(n_optimizers: int) -> tuple[int, int]:
    """Pixel size of the still image: one panel per optimizer plus the f-against-step panel, 4 per row."""
    rows = -(-(n_optimizers + 1) // PNG_COLUMNS)
    return round(PNG_PANEL[0] * PNG_COLUMNS * PNG_DPI), round((PNG_PANEL[1] * rows + 0.6) * PNG_DPI)


def draw_png(fn: TestFunction, specs, results, path: Path) -> None:
    """Small multiples: each optimizer's path on the contour plot, and f - f_min against the step for all."""
    plt = _pyplot()
    import numpy as np

    width, height = png_size(len(specs))
    rows = -(-(len(specs) + 1) // PNG_COLUMNS)
    fig, axes = plt.subplots(rows, PNG_COLUMNS, figsize=(width / PNG_DPI, height / PNG_DPI), dpi=PNG_DPI,
                             squeeze=False)
    inches = height / PNG_DPI  # fixed margins: a layout engine costs more than all the drawing here
    fig.subplots_adjust(left=0.035, right=0.99, bottom=0.6 / inches, top=1 - 0.95 / inches, wspace=0.2,
                        hspace=0.75 / PNG_PANEL[1] * 1.6)
    colors = palette(plt, len(specs))
    panels = list(axes.flat)
    ax_f = panels[len(specs)]
    for i, (ax, spec, result, color) in enumerate(zip(panels, specs, results, colors)):
        _contour(ax, fn, np)
        xy = np.asarray(result["path"])
        ax.plot(xy[:, 0], xy[:, 1], color=color, linewidth=1.4)
        ax.plot(xy[-1, 0], xy[-1, 1], marker=marker(i), color=color, markersize=5, markeredgecolor="black")
        if result["status"] != "ok":
            line = f"diverged: left the plot or overflowed at step {len(xy)}"
        else:
            line = f"{len(xy) - 1} steps: {result['final_distance']:.2g} from the minimum"
        ax.set_title(f"{_legend_label(spec, result)}\n{line}", fontsize="small")
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax_f.plot(np.arange(len(result["f"])), np.maximum(np.asarray(result["f"]) - fn.f_min, 1e-12),
                  color=color, linewidth=1.2, label=spec.label, marker=marker(i), markersize=4,
                  markevery=max(1, len(result["f"]) // 6), markeredgecolor="black", markeredgewidth=0.4)
    ax_f.set_yscale("log")
    ax_f.set_xlabel("step")
    ax_f.set_title("f - f_min against the step", fontsize="small")
    ax_f.grid(True, alpha=0.3)
    spare = panels[len(specs) + 1:]
    for ax in spare:
        ax.set_axis_off()
    if spare:  # the legend in the empty panel beside, where it hides no line
        spare[0].legend(*ax_f.get_legend_handles_labels(), loc="center left", fontsize="small", ncol=2)
    else:
        ax_f.legend(fontsize="x-small", ncol=2)
    tuned = (" (lr*: the grid's learning rate ending closest to the minimum without diverging)"
             if any(r["tuned"] for r in results) else "")
    fig.suptitle(f"{fn.name}: f = {fn.formula}; start ● minimum ★{tuned}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def draw_gif(fn: TestFunction, specs, results, steps: int, path: Path) -> int:
    """The paths growing step by step (matplotlib's PillowWriter); returns the number of frames.

    The static part (contours, axes, legend) is drawn once into a bitmap placed unscaled behind a transparent
    axes that holds only the moving paths, so each frame draws a few lines instead of the whole figure.
    """
    plt = _pyplot()
    import numpy as np

    animation = require("matplotlib.animation", "trajectories")
    position = (0.1, 0.1, 0.87, 0.83)
    static = plt.figure(figsize=GIF_SIZE, dpi=GIF_DPI)
    ax = static.add_axes(position)
    _contour(ax, fn, np)
    colors = palette(plt, len(specs))
    for i, (spec, result, color) in enumerate(zip(specs, results, colors)):
        ax.plot([], [], color=color, linewidth=1.6, label=_legend_label(spec, result), marker=marker(i),
                markeredgecolor="black", markeredgewidth=0.4)
    ax.legend(loc="upper left", fontsize="x-small", framealpha=0.8)
    static.canvas.draw()
    background = np.asarray(static.canvas.buffer_rgba()).copy()
    plt.close(static)

    fig = plt.figure(figsize=GIF_SIZE, dpi=GIF_DPI)
    fig.figimage(background, origin="upper", zorder=-1)  # behind the axes
    moving = fig.add_axes(position)
    moving.set_xlim(*fn.xlim)
    moving.set_ylim(*fn.ylim)
    moving.set_axis_off()
    moving.patch.set_alpha(0.0)
    lines, heads, paths = [], [], []
    for i, (result, color) in enumerate(zip(results, colors)):
        paths.append(np.asarray(result["path"]))
        lines.append(moving.plot([], [], color=color, linewidth=1.6)[0])
        heads.append(moving.plot([], [], marker=marker(i), color=color, markersize=6, markeredgecolor="black",
                                 markeredgewidth=0.4)[0])
    title = fig.text(0.5, 0.995, "", ha="center", va="top", fontsize="medium")
    frames = sorted({round(i * steps / (GIF_FRAMES - 1)) for i in range(GIF_FRAMES)})
    writer = animation.PillowWriter(fps=10)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".gif")
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        with writer.saving(fig, tmp, dpi=GIF_DPI):
            for step in frames:
                for xy, line, head in zip(paths, lines, heads):
                    upto = xy[:step + 1]
                    line.set_data(upto[:, 0], upto[:, 1])
                    head.set_data(upto[-1:, 0], upto[-1:, 1])
                title.set_text(f"{fn.name}: step {step}")
                writer.grab_frame()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return len(frames)


# ---------------------------------------------------------------------------------------------- command
def run(args) -> int:
    functions = _functions(args.functions)
    specs, notes = _specs(args)
    out = prepare_output_dir(args.out)
    _pyplot()
    torch.set_num_threads(1)
    summary = {"steps": args.steps, "seed": args.seed, "notes": notes, "lr_grid": list(LR_GRID), "functions": {}}
    for fn in functions:
        started = time.perf_counter()
        results = [best_path(spec, fn, args.steps, args.seed) for spec in specs]
        files = [out / f"{fn.name}.png"]
        draw_png(fn, specs, results, files[0])
        if not args.no_gif:
            files.append(out / f"{fn.name}.gif")
            draw_gif(fn, specs, results, args.steps, files[1])
        summary["functions"][fn.name] = {
            "formula": fn.formula, "start": list(fn.start), "minima": [list(m) for m in fn.minima],
            "f_min": fn.f_min,
            "optimizers": [{"label": s.label, "name": s.name, "params": s.params, **r}
                           for s, r in zip(specs, results)]}
        ranking = sorted(zip(specs, results), key=lambda sr: (sr[1]["status"] != "ok", sr[1]["final_distance"]))
        best = ", ".join(f"{s.label} {r['final_distance']:.2g}" for s, r in ranking[:3])
        diverged = [s.label for s, r in ranking if r["status"] != "ok"]
        best += f"; diverged: {', '.join(diverged)}" if diverged else ""
        print(f"{fn.name}: distance to the minimum after {args.steps} steps, best: {best}; wrote "
              f"{', '.join(str(f) for f in files)} ({time.perf_counter() - started:.1f} s)")
    write_json_atomic(out / "trajectories.json", summary)
    return 0
