"""Builds the guide's per-optimizer trajectory pictures in ``docs/_static/trajectories/``.

Each picture is cut from the output of ``optzoo trajectories`` (one run per optimizer, PNG only): the
optimizer's path on the contour plot and its ``f - f_min`` curve, for each test function, stacked and
stored as a small palette PNG.

Run through ``scripts/docs.sh --refresh-images``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

FUNCTIONS = ("rosenbrock", "beale", "saddle")
#: fraction of the command's PNG width holding the first two panels (path and f against the step) of 4
KEEP_WIDTH = 0.5
COLORS = 64


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
            subprocess.run([*optzoo_cmd, "--optimizers", name, "--out", str(run_dir)], check=True)
            _shrink([run_dir / f"{f}.png" for f in FUNCTIONS], out / f"{name}.png")
            print(f"wrote {out / (name + '.png')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
