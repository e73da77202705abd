"""Times MXNet 2.0's optimizers inside MXNet's own virtualenv (run as a script there; it imports neither torch
nor optzoo).

Usage: ``<mxnet-venv>/bin/python mxnet_runner.py spec.json out.json``. ``spec.json`` holds ``shapes`` (lists),
``optimizers`` ({name: keyword arguments}), ``repeats``, ``target_s``. Each optimizer runs MXNet's default path:
``mx.optimizer.create(name, **kwargs)`` (``use_fused_step`` at its default) driven by
``mx.optimizer.get_updater(opt)`` called once per step with the lists of all indices, gradients and weights
(the Updater aggregates ``aggregate_num`` tensors per call as MXNet does), then ``mx.nd.waitall()`` inside the
timed region. Peak extra memory is the rise of the process's RSS high-water mark over one steady-state step
(``/proc/self/clear_refs`` resets it); MXNet's pooled allocator keeps temporaries from the warm-up step, so this
counts only memory newly taken from the OS and is a lower bound.
"""

import json
import sys

from timing import set_statistic, time_step  # beside this file; standard library only


def _rss_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _peak_extra_mb(step):
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    before = _rss_kb("VmRSS")
    step()
    return max(0, _rss_kb("VmHWM") - before) / 1024.0


def main(spec_path, out_path):
    import mxnet as mx

    with open(spec_path) as fh:
        spec = json.load(fh)
    shapes = [tuple(s) for s in spec["shapes"]]
    set_statistic(spec.get("statistic", "median"))
    mx.random.seed(0)
    grads = [mx.nd.random.normal(0, 0.1, shape=s) for s in shapes]
    results = {"mxnet_version": mx.__version__}
    for name, kwargs in spec["optimizers"].items():
        try:
            weights = [mx.nd.random.normal(0, 0.1, shape=s) for s in shapes]
            opt = mx.optimizer.create(name, **kwargs)
            updater = mx.optimizer.get_updater(opt)
            indices = list(range(len(shapes)))

            def step(updater=updater, weights=weights, indices=indices):
                updater(indices, grads, weights)
                mx.nd.waitall()

            step()  # warm-up: creates the state
            peak = _peak_extra_mb(step)
            seconds, samples = time_step(step, spec["repeats"], spec["target_s"])
            results[name] = {"ms": seconds * 1e3, "samples_ms": [s * 1e3 for s in samples], "peak_extra_mb": peak,
                             "aggregate_num": getattr(opt, "aggregate_num", None),
                             "use_fused_step": getattr(opt, "use_fused_step", None)}
            del weights, opt, updater
        except Exception as err:  # one optimizer failing must not lose the others' numbers
            results[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
    with open(out_path, "w") as fh:
        json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
