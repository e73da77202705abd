"""Builds the guide's per-optimizer trajectory pictures in ``docs/_static/trajectories/``.

Each picture is cut from the output of ``optzoo trajectories`` (one run per optimizer, PNG only): the
optimizer's path on the contour plot and its ``f - f_min`` curve, for each test function, stacked and
stored as a small palette PNG. GroupAdaGrad only accepts 2-D weights, which the command's 2-element point is
not; its path is computed here with the command's own functions on the point reshaped to 2 rows of 1
feature (so each coordinate has its own history, as the rows of an embedding do).

Run through ``scripts/docs.sh --refresh-images``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

FUNCTIONS = ("rosenbrock", "beale", "saddle")
#: fraction of the command's PNG width holding the first two panels (path and f against the step) of 4
KEEP_WIDTH = 0.5
COLORS = 64


def _groupadagrad(out: Path, steps: int) -> None:
    import torch

    from optzoo.cli import trajectories as tr
    from optzoo.cli.common import OptimizerSpec
    from optzoo.optimizer import create, get_updater

    def path_for(lr: float, fn) -> dict:
        updater = get_updater(create("groupadagrad", learning_rate=lr))
        point = torch.tensor(fn.start, dtype=torch.float32).reshape(2, 1)
        path, values, status = [list(fn.start)], [float(fn.f(*fn.start))], "ok"
        for _ in range(steps):
            x, y = map(float, point.flatten().tolist())
            grad = torch.tensor(fn.grad(x, y), dtype=torch.float32).reshape(2, 1)
            updater(0, grad, point)
            x, y = map(float, point.flatten().tolist())
            if not (math.isfinite(x) and math.isfinite(y)) or max(abs(x), abs(y)) > 1e3:
                status = "diverged"
                break
            path.append([x, y])
            values.append(float(fn.f(x, y)))
        return {"path": path, "f": values, "status": status, "learning_rate": lr, "tuned": True}

    def score(result, fn) -> float:
        if result["status"] != "ok":
            return math.inf
        return sum(math.log10(max(v - fn.f_min, 0.0) + 1e-12) for v in result["f"]) / len(result["f"])

    out.mkdir(parents=True, exist_ok=True)
    spec = OptimizerSpec("groupadagrad", {})
    spec.label = "groupadagrad"
    for name in FUNCTIONS:
        fn = tr.FUNCTIONS[name]
        best = min((path_for(lr, fn) for lr in tr.LR_GRID), key=lambda r: score(r, fn))
        tr.draw_png(fn, [spec], [best], out / f"{name}.png")


def _shrink(pngs: list[Path], target: Path) -> None:
    from PIL import Image

    parts = []
    for png in pngs:
        with Image.open(png) as image:
            image = image.convert("RGB")
            width, height = image.size
            # drop the figure title (it is the page's caption) and keep the first two panels
            parts.append(image.crop((0, round(0.11 * height), round(KEEP_WIDTH * width), height)))
    sheet = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), "white")
    top = 0
    for part in parts:
        sheet.paste(part, (0, top))
        top += part.height
    sheet = sheet.quantize(colors=COLORS, method=Image.Quantize.FASTOCTREE)
    sheet.save(target, optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "_static" / "trajectories"))
    parser.add_argument("--optimizers", nargs="*", help="default: every registered optimizer")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    from optzoo.optimizer import Optimizer

    names = args.optimizers or sorted(Optimizer.opt_registry)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    optzoo_cmd = [sys.executable, "-m", "optzoo", "trajectories", "--no-gif", "--steps", str(args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            run_dir = Path(tmp) / name
            if name == "groupadagrad":
                _groupadagrad(run_dir, args.steps)
            else:
                subprocess.run([*optzoo_cmd, "--optimizers", name, "--out", str(run_dir)], check=True)
            _shrink([run_dir / f"{f}.png" for f in FUNCTIONS], out / f"{name}.png")
            print(f"wrote {out / (name + '.png')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
