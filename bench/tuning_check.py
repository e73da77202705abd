"""Checks ``optzoo compare --tune``'s chosen learning rates against an independent sweep.

    python bench/tuning_check.py runs/latest/results.json [--tasks mlp,sparse] [--seeds 3,4,5,6,7] [--points 9]

For every optimizer of the tuned comparison it trains a full half-decade grid of ``--points`` learning rates
around the optimizer's own (wider than the search's five) with seeds the search never saw, and prints, per task
and optimizer: the search's choice, the sweep's best learning rate, and the mean final validation accuracy of
both on the new seeds. The choice agrees when it is the sweep's best, or when its mean lies within one standard
error of the difference (the sweep's seed noise) of the best; a choice within two standard errors (a 95% interval)
is reported as within the noise: the sweep cannot tell it from the best. Writes the sweep as JSON beside the
results. Exit status 1 when a choice is further from the sweep's best than that.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from optzoo.cli.common import registered_optimizers
from optzoo.cli.training import TASKS, RunConfig, load_task_data, train_run
from optzoo.cli.tuning import lr_grid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of an `optzoo compare --tune` run")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: those of the results)")
    parser.add_argument("--seeds", default="3,4,5,6,7", help="seeds of the sweep (default: 3..7)")
    parser.add_argument("--points", type=int, default=9, help="grid points, half a decade apart (default: 9)")
    parser.add_argument("--optimizers", default=None, help="comma-separated labels (default: all)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    if not results.get("tuned"):
        print(f"{args.results} is not from `optzoo compare --tune`", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    registry = registered_optimizers()
    tasks = args.tasks.split(",") if args.tasks else list(results["ranking"])
    wanted = set(args.optimizers.split(",")) if args.optimizers else None
    specs = {o["label"]: o for o in results["optimizers"]}
    report, agree, near, total = {}, 0, 0, 0
    epochs, batch = results["settings"]["epochs"], results["settings"]["batch size"]
    for task in tasks:
        data = load_task_data(task)
        eval_every = max(1, math.ceil(math.ceil(data.x_train.shape[0] / batch) / 3))  # as compare: 3 per epoch

        def run(spec, lr, seed, task=task, data=data, eval_every=eval_every):
            params = tuple(sorted({**spec["params"], "learning_rate": lr}.items()))
            config = RunConfig(task, spec["name"], params, spec["label"], seed, epochs, batch, eval_every,
                               TASKS[task].dataset)
            return train_run(config, data)["final"]["val_accuracy"] or 0.0

        for group in results["ranking"][task]:
            label = group["label"]
            if wanted and label not in wanted:
                continue
            spec = specs[label]
            reference = spec["params"].get("learning_rate", registry[spec["name"]].default_learning_rate)
            sweep = {}
            for lr in lr_grid(reference, args.points):
                sweep[lr] = [run(spec, lr, seed) for seed in seeds]
            best = max(sweep, key=lambda lr: (statistics.fmean(sweep[lr]), -lr))
            chosen = group["learning_rate"]
            if chosen not in sweep:  # the search extended its grid past the sweep's: train it too
                sweep[chosen] = [run(spec, chosen, seed) for seed in seeds]
            a, b = sweep[best], sweep[chosen]
            gap = statistics.fmean(a) - statistics.fmean(b)
            noise = math.sqrt((statistics.variance(a) + statistics.variance(b)) / len(seeds)) if len(seeds) > 1 else 0
            floor = 0.5 / data.y_val.shape[0]
            ok = best == chosen or gap <= max(noise, floor)
            within = ok or gap <= max(2 * noise, floor)
            agree += ok
            near += within and not ok
            total += 1
            verdict = "agrees" if ok else "within the noise (2 SE)" if within else "DISAGREES"
            report.setdefault(task, {})[label] = {"chosen": chosen, "sweep_best": best, "gap": gap, "noise": noise,
                                                  "agrees": ok, "within_noise": within,
                                                  "sweep": {str(k): v for k, v in sorted(sweep.items())}}
            print(f"{task:6s} {label:10s} chosen {chosen:<8g} sweep best {best:<8g} "
                  f"acc {100 * statistics.fmean(b):5.1f} vs {100 * statistics.fmean(a):5.1f} "
                  f"(gap {100 * gap:4.1f} ± {100 * noise:3.1f} points) {verdict}", flush=True)
    out = args.results.with_name("tuning_check.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{agree} of {total} choices agree with the independent sweep (within one standard error), {near} more "
          f"within two; wrote {out}")
    return 0 if agree + near == total else 1


if __name__ == "__main__":
    sys.exit(main())
