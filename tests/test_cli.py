"""The ``optzoo`` command line, driven as a user drives it: ``python -m optzoo ...`` in a subprocess, real files
in a temporary folder, checked by reading them back (PNG/GIF headers and frames with PIL, the HTML report as
XML and, where Debian's chromium is installed, in a headless browser).

Runs are kept tiny (one epoch, one seed, two optimizers, the MLP) so the module takes well under a minute.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from optzoo.cli import main
from optzoo.cli.common import CLIError, OptimizerSpec, parse_optimizer_specs, parse_value
from optzoo.optimizer import Optimizer

pytest.importorskip("matplotlib")
pytest.importorskip("rich")
pytest.importorskip("sklearn")
PIL_Image = pytest.importorskip("PIL.Image")

TINY = ["--model", "mlp", "--epochs", "1", "--seeds", "1", "--no-progress"]
TWO = ["--optimizers", "sgd:momentum=0.9", "adam:learning_rate=0.01"]


def optzoo(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    if args[:1] == ("compare",) and "--jobs" not in args:  # tiny comparisons: worker start-up would dominate
        args = (*args, "--jobs", "1")
    return subprocess.run([sys.executable, "-m", "optzoo", *args], cwd=cwd, check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def untimed(curves: dict) -> dict:
    """A run's curves without the training clock (the one thing that differs between identical runs)."""
    return {k: v for k, v in curves.items() if k != "time_s"}


def python_c(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, check=False, capture_output=True, text=True,
                          timeout=timeout)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk (and PIL must decode the whole image)."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    with PIL_Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.size == (width, height)
    return width, height


def assert_one_line_error(result: subprocess.CompletedProcess | tuple, status: int | None = 2) -> str:
    rc, stderr = (result.returncode, result.stderr) if hasattr(result, "returncode") else result
    assert rc != 0
    if status is not None:
        assert rc == status, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert "error" in lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- in-process units


def test_optimizer_spec_parsing():
    specs = parse_optimizer_specs(["adam:learning_rate=0.01,beta1=0.8,lazy_update=true", "SGD", "nag,sgd:momentum=.9"])
    assert [(s.name, s.params) for s in specs] == [
        ("adam", {"learning_rate": 0.01, "beta1": 0.8, "lazy_update": True}), ("sgd", {}), ("nag", {}),
        ("sgd", {"momentum": 0.9})]
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("none") is None and parse_value("1e-3") == 1e-3 and math.isnan(parse_value("nan"))
    for bad, words in [(["nosuch"], "unknown optimizer"), (["learning_rate=0.1"], "no optimizer before"),
                       (["adam:beta1"], "expected key=value"), (["adam:beta1=0.1,beta1=0.2"], "twice"),
                       (["sgdd"], "did you mean 'sgd'"), ([","], "no optimizer given")]:
        with pytest.raises(CLIError, match=words):
            parse_optimizer_specs(bad)


def test_training_is_deterministic_given_the_seed(one_thread):
    from optzoo.cli.training import RunConfig, load_digits, train_run

    data = load_digits()
    config = RunConfig("mlp", "adam", (("learning_rate", 0.01),), "adam", 3, 1, 32, 15)
    a, b = train_run(config, data), train_run(config, data)
    assert a["curves"]["time_s"][0] == 0.0 and a["curves"]["time_s"] == sorted(a["curves"]["time_s"])
    assert untimed(a["curves"]) == untimed(b["curves"]) and a["final"] == b["final"]
    other = train_run(RunConfig(**{**config.__dict__, "seed": 4}), data)
    assert other["curves"]["val_loss"] != a["curves"]["val_loss"]
    assert a["status"] == "ok" and a["final"]["val_accuracy"] > 0.5  # it learns something in one epoch


def test_diverging_runs_are_marked_and_ranked_last(one_thread):
    from optzoo.cli.report import aggregate
    from optzoo.cli.training import RunConfig, load_digits, train_run

    data = load_digits()
    blown = train_run(RunConfig("mlp", "sgd", (("learning_rate", 1e30), ("momentum", 0.9)), "sgd", 0, 1, 32, 15), data)
    assert blown["status"] == "diverged" and blown["steps"] < 45 and blown["final"]["val_loss"] is None
    fine = [train_run(RunConfig("mlp", "adam", (("learning_rate", 0.01),), "adam", seed, 1, 32, 15), data)
            for seed in (0, 1, 2)]
    ranking = aggregate([blown, *fine], target=0.5)["mlp"]
    assert [g["label"] for g in ranking] == ["adam", "sgd"] and ranking[1]["diverged"] == 1
    accs = [r["final"]["val_accuracy"] for r in fine]
    adam = ranking[0]
    assert adam["runs"] == 3 and adam["val_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert adam["val_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    hits = adam["steps_to_target"]
    assert hits["reached"] == 3 and hits["median"] == np.median(hits["per_seed"]) and hits["median"] % 15 == 0


def test_unregistered_guide_optimizers_are_skipped_with_a_note(monkeypatch):
    from optzoo.cli.common import GUIDE_OPTIMIZERS, guide_specs

    registry = dict(Optimizer.opt_registry)
    for name in ("sgld", "ftml", "nosuch-guide-entry"):
        registry.pop(name, None)
    monkeypatch.setattr(Optimizer, "opt_registry", registry)
    specs, notes = guide_specs()
    names = [s.name for s in specs]
    assert "sgld" not in names and "ftml" not in names
    assert names == [n for n, _ in GUIDE_OPTIMIZERS if n in registry]
    assert "skipped sgld: not registered in this optzoo build" in notes
    assert notes == [f"skipped {n}: not registered in this optzoo build" for n, _ in GUIDE_OPTIMIZERS
                     if n not in registry]
    sgd = next(s for s in specs if s.name == "sgd")
    assert sgd.params == {"learning_rate": 0.1, "momentum": 0.8}


def test_trajectory_gradients_and_updates_are_exact():
    from optzoo.cli.trajectories import FUNCTIONS, optimize_path

    for fn in FUNCTIONS.values():  # analytic gradients against autograd
        for x, y in [fn.start, (0.3, -0.7), (1.2, 0.4)]:
            p = torch.tensor([x, y], dtype=torch.float64, requires_grad=True)
            (g,) = torch.autograd.grad(fn.f(p[0], p[1]), p)
            np.testing.assert_allclose(fn.grad(x, y), g.numpy(), rtol=1e-12, atol=1e-12)
    fn = FUNCTIONS["saddle"]  # plain gradient descent, by hand in float32
    result = optimize_path(OptimizerSpec("sgd", {"learning_rate": 0.1}), fn, steps=5)
    w = np.array(fn.start, dtype=np.float32)
    for step in range(1, 6):
        g = np.array(fn.grad(*map(float, w)), dtype=np.float32)
        w = w - np.float32(0.1) * g
        np.testing.assert_allclose(result["path"][step], w, rtol=1e-6)
    assert result["status"] == "ok" and len(result["f"]) == 6


@pytest.mark.parametrize("argv,status,words", [
    (["compare", "--optimizers", "nosuch"], 2, "unknown optimizer 'nosuch'"),
    (["compare", "--optimizers", "adam:beta1=1.5"], 2, "beta1"),
    (["compare", "--optimizers", "adam:lr=0.1"], 2, "unexpected keyword argument 'lr'"),
    (["compare", "--optimizers", "sgd:momentum=fast"], 2, "momentum"),
    (["compare", "--optimizers", "sgd:momentum=nan"], 2, "momentum"),
    (["compare", "--lr", "-0.1"], 2, "must be a finite number > 0"),
    (["compare", "--lr", "0.1,abc"], 2, "not a number"),
    (["compare", "--lr", "inf"], 2, "--lr"),
    (["compare", "--epochs", "0"], 2, "--epochs"),
    (["compare", "--seeds", "two"], 2, "--seeds"),
    (["compare", "--jobs", "0"], 2, "--jobs"),
    (["compare", "--model", "rnn"], 2, "--model"),
    (["compare", "--model", "mlp,rnn"], 2, "unknown task 'rnn'"),
    (["compare", "--tune", "--lr", "0.1"], 2, "--lr and --tune exclude each other"),
    (["compare", "--preset", "nosuch"], 2, "--preset"),
    (["compare", "--target-accuracy", "1.5"], 2, "--target-accuracy"),
    (["trajectories", "--functions", "himmelblau"], 2, "unknown function 'himmelblau'"),
    (["trajectories", "--steps", "-3"], 2, "--steps"),
    (["trajectories", "--optimizers", "adam:epsilon=-1"], 2, "epsilon"),
    (["frobnicate"], 2, "invalid choice"),
    ([], 2, None),
])
def test_bad_arguments_give_one_line_and_status(argv, status, words, capsys):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if words is not None:
        assert len(err.strip().splitlines()) == 1 and words in err, err


# ---------------------------------------------------------------------------------------------- help and list
def test_help_everywhere(tmp_path, capsys):
    result = optzoo("--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: optzoo" in result.stdout, result.stderr
    helps = {}
    for command in ("list", "compare", "trajectories"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        helps[command] = capsys.readouterr().out
        assert f"usage: optzoo {command}" in helps[command]
    assert main(["bench", "--help"]) == 0 or "not installed" in capsys.readouterr().err
    compare_help = helps["compare"]
    for option in ("--optimizers", "--epochs", "--seeds", "--lr", "--out", "--target-accuracy", "--model"):
        assert option in compare_help


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).with_name("optzoo")
    if not script.exists():
        pytest.skip("the optzoo console script is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--version"], cwd=tmp_path, check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("optzoo ")


def test_list_shows_every_registered_optimizer(tmp_path, capsys):
    registry = Optimizer.opt_registry
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    for name, klass in registry.items():
        summary = inspect.getdoc(klass).strip().splitlines()[0]
        assert any(line.startswith(f"{name} ") and summary in line for line in lines), name
    assert "clip_gradient=None" in text and "rescale_grad=1" in text

    result = optzoo("list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    rows = {row["name"]: row for row in info["optimizers"]}
    assert set(rows) == set(registry)
    assert rows["sgd"]["hyperparameters"]["momentum"] == 0.0
    assert rows["adam"]["hyperparameters"]["beta1"] == 0.9 and rows["adam"]["hyperparameters"]["epsilon"] == 1e-8
    for name, row in rows.items():  # defaults come from the real signatures
        klass = registry[name]
        assert row["hyperparameters"]["learning_rate"] == klass.default_learning_rate
        for arg, param in inspect.signature(klass.__init__).parameters.items():
            if arg not in ("self", "kwargs", "learning_rate") and param.default is not inspect.Parameter.empty:
                expected = "inf" if param.default == math.inf else param.default
                assert row["hyperparameters"][arg] == expected, (name, arg)
    assert info["common"]["wd"] == 0.0 and info["common"]["clip_gradient"] is None


# ---------------------------------------------------------------------------------------------- compare
@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One tiny comparison shared by the tests that read its outputs."""
    work = tmp_path_factory.mktemp("compare")
    result = optzoo("compare", *TINY, *TWO, "--out", "out", cwd=work)
    assert result.returncode == 0, result.stderr
    return work / "out", result


def test_compare_prints_a_ranked_table(compared):
    _, result = compared
    table = [line for line in result.stdout.splitlines() if "sgd" in line or "adam" in line]
    ranked = [line for line in table if line.strip("│ ").split()[0] in ("1", "2")]
    assert len(ranked) == 2, result.stdout
    assert "steps to target" in result.stdout and "val acc" in result.stdout
    assert "Traceback" not in result.stderr


def test_compare_writes_runs_curves_and_results(compared):
    out, _ = compared
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert runs == ["mlp__adam__seed0.json", "mlp__sgd__seed0.json"]
    for name in runs:
        record = json.loads((out / "runs" / name).read_text())
        assert record["status"] == "ok" and record["steps"] == 45
        assert record["curves"]["step"][0] == 0 and record["curves"]["step"][-1] == 45
        assert 0.0 <= record["final"]["val_accuracy"] <= 1.0
    record = json.loads((out / "runs" / "mlp__adam__seed0.json").read_text())
    assert record["config"]["params"] == {"learning_rate": 0.01}
    assert png_size(out / "curves_mlp.png") == (1200, 900)
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] is False and sorted(results["runs"]) == [f"runs/{r}" for r in runs]
    assert [g["label"] for g in results["ranking"]["mlp"]] and {g["label"] for g in results["ranking"]["mlp"]} == {
        "sgd", "adam"}
    assert (out / "ranking.csv").read_text().count("\n") == 3


def test_compare_report_is_self_contained_html(compared):
    out, _ = compared
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "src=\"data:image/png;base64," in text
    root = ET.fromstring(text.split("\n", 1)[1])  # well-formed (after the doctype line)
    assert root.tag == "html"
    images = root.findall(".//img")
    assert len(images) == 1 and all(img.get("src").startswith("data:image/png;base64,") for img in images)
    cells = {"".join(td.itertext()) for td in root.iter("td")}
    assert {"sgd", "adam"} <= cells
    assert "sgd(momentum=0.9)" in cells and "adam(learning_rate=0.01)" in cells


def test_compare_is_deterministic_and_resumable(compared, tmp_path):
    out, _ = compared
    again = optzoo("compare", *TINY, *TWO, "--out", "again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for name in ("mlp__adam__seed0.json", "mlp__sgd__seed0.json"):
        a = json.loads((out / "runs" / name).read_text())
        b = json.loads((tmp_path / "again" / "runs" / name).read_text())
        assert untimed(a["curves"]) == untimed(b["curves"]) and a["final"] == b["final"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "again" / "runs").glob("*.json")}
    resumed = optzoo("compare", *TINY, *TWO, "--out", "again", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0 and resumed.stderr.count("(reused)") == 2, resumed.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "again" / "runs").glob("*.json")} == before


def test_compare_lr_sweep(tmp_path):
    result = optzoo("compare", *TINY, "--optimizers", "sgd", "--lr", "0.1,0.02", "--out", "sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sgd lr=0.1 " in result.stdout and "sgd lr=0.02 " in result.stdout
    assert png_size(tmp_path / "sweep" / "lr_sweep_mlp.png") == (800, 500)
    lrs = sorted(json.loads(p.read_text())["config"]["params"]["learning_rate"]
                 for p in (tmp_path / "sweep" / "runs").glob("*.json"))
    assert lrs == [0.02, 0.1]


def test_compare_errors_from_the_command_line(tmp_path):
    assert "unknown optimizer 'adamm'; did you mean 'adam'?" in assert_one_line_error(
        optzoo("compare", "--optimizers", "adamm", cwd=tmp_path))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = assert_one_line_error(optzoo("compare", *TINY, "--optimizers", "sgd", "--out", str(blocker / "out"),
                                        cwd=tmp_path))
    assert "not a writable folder" in line


def test_unwritable_output_folder_in_process(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for command in ("compare", "trajectories"):
        assert main([command, "--optimizers", "sgd", "--out", str(blocker / "sub")]) == 2
        assert "not a writable folder" in assert_one_line_error((2, capsys.readouterr().err))


@pytest.mark.parametrize("module,command", [("matplotlib", "compare"), ("rich", "compare"),
                                            ("sklearn", "compare"), ("matplotlib", "trajectories")])
def test_missing_extra_is_named(module, command, tmp_path, monkeypatch, capsys):
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)
    argv = [command, "--optimizers", "sgd", "--out", str(tmp_path / "out")]
    assert main(argv + (["--model", "mlp", "--epochs", "1", "--seeds", "1"] if command == "compare" else
                        ["--steps", "2", "--functions", "saddle"])) == 1
    line = assert_one_line_error((1, capsys.readouterr().err), status=1)
    assert "pip install 'optzoo[cli]'" in line and {"sklearn": "scikit-learn"}.get(module, module) in line


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_a_run_is_handed_to_the_workers_is_delivered_not_lost():
    """Handing a run to the workers holds Ctrl-C back (a worker process started then must not print a traceback);
    one that arrives meanwhile is raised once the hand-over is done. Ignoring it instead lost it: the comparison
    then ran to its end and exited 0."""
    from optzoo.cli.workers import _sigint_held

    with pytest.raises(KeyboardInterrupt):
        with _sigint_held():
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # held, so a child inherits it
            time.sleep(0.05)
        time.sleep(0.5)  # not reached: the held Ctrl-C is raised when the block ends
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigint_keeps_completed_runs(tmp_path, jobs):
    out = tmp_path / "out"
    # the CNN is slow enough (about 0.2-2 s a run) that the interrupt lands while runs remain
    proc = subprocess.Popen([sys.executable, "-m", "optzoo", "compare", "--model", "cnn", "--epochs", "2",
                             "--seeds", "4", "--no-progress", "--optimizers", "sgd", "adam", "--out", str(out),
                             "--jobs", jobs],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "runs").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the comparison ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr.strip().splitlines()[-1]
    files = sorted((out / "runs").glob("*.json"))
    assert 1 <= len(files) < 8
    for path in files:
        assert json.loads(path.read_text())["status"] == "ok"
    assert not list((out / "runs").glob(".*"))  # no temporary file left behind
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] is True and results["planned_runs"] == 8
    assert sorted(results["runs"]) == sorted(f"runs/{p.name}" for p in files)
    report = (out / "report.html").read_text()
    assert f"Interrupted: {len(files)} of 8 runs completed" in report
    ET.fromstring(report.split("\n", 1)[1])


# ---------------------------------------------------------------------------------------------- trajectories
def test_trajectories_png_and_gif(tmp_path):
    from optzoo.cli.trajectories import GIF_DPI, GIF_SIZE, LR_GRID
    from optzoo.cli.trajectories import png_size as expected_png

    result = optzoo("trajectories", "--functions", "rosenbrock,saddle", "--optimizers", "sgd",
                    "adam:learning_rate=0.05", "--steps", "40", "--out", "traj", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "traj"
    gif_size = (round(GIF_SIZE[0] * GIF_DPI), round(GIF_SIZE[1] * GIF_DPI))
    for name in ("rosenbrock", "saddle"):
        assert png_size(out / f"{name}.png") == expected_png(2)
        with PIL_Image.open(out / f"{name}.gif") as gif:
            assert gif.format == "GIF" and gif.size == gif_size
            assert getattr(gif, "n_frames", 1) >= 10
            gif.seek(gif.n_frames - 1)  # every frame decodes
        assert name in result.stdout
    assert not (out / "beale.png").exists()
    info = json.loads((out / "trajectories.json").read_text())
    sgd, adam = info["functions"]["saddle"]["optimizers"]
    assert sgd["tuned"] is True and sgd["learning_rate"] in LR_GRID
    assert adam["tuned"] is False and adam["learning_rate"] == 0.05
    assert len(sgd["path"]) == 41 and sgd["status"] == "ok"
    assert sgd["f"][-1] < sgd["f"][0]  # it went downhill


# ---------------------------------------------------------------------------------------------- bench
def test_bench_without_the_benchmark_says_so(tmp_path):
    code = ("import sys; sys.modules['optzoo.bench'] = None; from optzoo.cli import main; "
            "sys.exit(main(['bench', '--quick']))")
    line = assert_one_line_error(python_c(code, tmp_path), status=1)
    assert "benchmark is not installed" in line


def test_bench_forwards_to_the_benchmark(monkeypatch, capsys):
    module = types.ModuleType("optzoo.bench")
    module.main = lambda argv: print("bench got", argv) or 3
    monkeypatch.setitem(sys.modules, "optzoo.bench", module)
    assert main(["bench", "--optimizers", "adam", "-n", "5"]) == 3
    assert "bench got ['--optimizers', 'adam', '-n', '5']" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "optzoo.bench", types.ModuleType("optzoo.bench"))  # no main()
    assert main(["bench"]) == 1
    assert "no main(argv)" in assert_one_line_error((1, capsys.readouterr().err), status=1)


# ---------------------------------------------------------------------------------------------- browser
@pytest.mark.parametrize("width", [375, 1280])
def test_report_renders_in_headless_chromium(request, width):
    """The report in a real browser at a phone's and a laptop's width: no horizontal overflow (wide tables scroll
    in their own box), every image loads, nothing is fetched, no script error."""
    from browser import chromium, probe

    chromium()
    out, _ = request.getfixturevalue("compared")
    # one image that must fail to decode, so the probe is shown to detect a broken one
    control = '<img id="control" alt="control" src="data:image/png;base64,AAAA"/>'
    check = probe(out / "report.html", width, extra=control)
    assert check["width"] == width
    assert check["broken"] == ["control"] and check["failed"] == ["control"], check
    assert check["images"] == 2 and check["sizes"][0] == [1200, 900]
    assert check["resources"] == [] and check["errors"] == []
    assert check["overflow"] <= 0, check["wide"]
    assert check["tables"] >= 4


def test_the_overflow_probe_sees_a_too_wide_page(request, tmp_path):
    """The control for the test above: a report whose table may not scroll is wider than a phone."""
    from browser import chromium, probe

    chromium()
    out, _ = request.getfixturevalue("compared")
    broken = tmp_path / "report.html"
    text = (out / "report.html").read_text()
    broken.write_text(text.replace(".scroll{overflow-x:auto;max-width:100%}", "").replace(
        "td.wrap{", "td.wrap{white-space:nowrap;"))
    assert probe(broken, 375)["overflow"] > 0


# ---------------------------------------------------------------------------------------------- tuning
def _fake_record(accuracy, loss=0.5, status="ok"):
    return {"status": status, "final": {"val_accuracy": accuracy if status == "ok" else None,
                                        "val_loss": loss if status == "ok" else None}}


def test_lr_grid_is_half_decades_around_the_reference():
    from optzoo.cli.tuning import lr_grid

    assert lr_grid(0.01) == [0.001, 0.00316, 0.01, 0.0316, 0.1]
    assert lr_grid(1.0, 3) == [0.316, 1.0, 3.16]
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="reference learning rate"):
            lr_grid(bad)


def test_search_extends_the_grid_halves_over_seeds_and_picks_the_best_mean():
    """A synthetic accuracy landscape peaking at lr 1e-4, below the grid around 0.01: the grid grows downwards,
    only the survivors get more seeds, and the choice is the best mean over all seeds, not seed 0's best."""
    from optzoo.cli.tuning import SURVIVORS, search

    calls = []

    def accuracy(lr, seed):
        base = 0.9 - 0.1 * abs(math.log10(lr) + 4)
        # seed 0 flatters 3.16e-4; over seeds 1 and 2, 1e-4 is better on average
        return base + (0.06 if (seed == 0 and lr == 0.000316) else 0.0) - (0.02 if seed and lr == 0.000316 else 0)

    def evaluate(lr, seed):
        calls.append((lr, seed))
        return _fake_record(accuracy(lr, seed))

    chosen, runs = search(0.01, 3, evaluate, validation_size=1000)
    grid_and_extensions = sorted(lr for lr, seed in calls if seed == 0)
    assert grid_and_extensions == [0.0001, 0.000316, 0.001, 0.00316, 0.01, 0.0316, 0.1], grid_and_extensions
    assert 3.16e-5 not in runs  # the best is no longer at the edge: the extension stopped
    survivors = sorted({lr for lr, seed in calls if seed > 0})
    assert len(survivors) == SURVIVORS and survivors == [0.0001, 0.000316]
    assert all(len(runs[lr]) == 3 for lr in survivors)
    assert chosen == 0.0001  # seed 0 alone would have picked 3.16e-4


def test_rank_prefers_no_divergence_then_accuracy_then_loss():
    from optzoo.cli.tuning import choose, rank_lrs

    runs = {0.1: [_fake_record(0.95), _fake_record(None, status="diverged")],  # best accuracy, but diverged once
            0.01: [_fake_record(0.90, 0.40), _fake_record(0.90, 0.40)],
            0.001: [_fake_record(0.9004, 0.30), _fake_record(0.8996, 0.30)]}  # same mean (to 1/1000), lower loss
    assert rank_lrs(runs, 1000) == [0.001, 0.01, 0.1]
    assert choose({0.5: [_fake_record(0.9)], 0.2: [_fake_record(0.9)]}, 1000) == 0.2  # full tie: smaller lr
    assert choose({}, 100) is None


def test_choice_breaks_ties_within_the_seed_noise_by_the_validation_loss():
    from optzoo.cli.tuning import choose, tied_with_best

    high = [_fake_record(a, 0.20) for a in (0.95, 0.98, 0.97)]  # mean 96.7%, the higher loss
    # 1 point (3.6 examples) lower on average, but seeds differ by 1.5 points: within one standard error (1.25)
    low_noisy = [_fake_record(a, 0.12) for a in (0.97, 0.94, 0.96)]
    assert tied_with_best(high, low_noisy, 360) and choose({0.01: high, 0.1: low_noisy}, 360) == 0.1
    # the same gap between steady seeds is real: the higher accuracy wins whatever its loss
    steady_high = [_fake_record(0.9667, 0.20)] * 3
    steady_low = [_fake_record(0.9567, 0.12)] * 3
    assert not tied_with_best(steady_high, steady_low, 360)
    assert choose({0.01: steady_high, 0.1: steady_low}, 360) == 0.01
    # one validation example is always a tie; a rate with fewer seeds (not a survivor) is never chosen
    assert choose({0.01: [_fake_record(0.9667, 0.2)], 0.1: [_fake_record(0.9667 - 0.9 / 360, 0.1)]}, 360) == 0.1
    assert choose({0.01: high, 0.1: [_fake_record(1.0, 0.01)]}, 360) == 0.01


def test_compare_tune_chooses_the_best_mean_and_reports_it(tmp_path):
    from optzoo.cli.tuning import choose

    result = optzoo("compare", "--tune", "--model", "mlp", "--epochs", "1", "--seeds", "2", "--no-progress",
                    "--optimizers", "sgd", "adam", "--out", "tuned", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "tuned"
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    results = json.loads((out / "results.json").read_text())
    assert results["tuned"] is True
    for group in results["ranking"]["mlp"]:
        mine = [r for r in records if r["config"]["label"] == group["label"]]
        by_lr: dict[float, list] = {}
        for r in mine:
            by_lr.setdefault(r["config"]["params"]["learning_rate"], []).append(r["final"]["val_accuracy"])
        assert len(by_lr) >= 5 and sorted(len(v) for v in by_lr.values())[-2:] == [2, 2]  # two survivors
        two_seeds = {lr: np.mean(v) for lr, v in by_lr.items() if len(v) == 2}
        runs = {lr: [r for r in mine if r["config"]["params"]["learning_rate"] == lr] for lr in by_lr}
        assert group["learning_rate"] in two_seeds and group["learning_rate"] == choose(runs, 360)
        assert group["runs"] == 2 and group["val_accuracy"]["mean"] == pytest.approx(two_seeds[group["learning_rate"]])
        assert group["lr_tried"] == sorted(by_lr)
        assert f"{group['label']}: chosen learning rate {group['learning_rate']:g}" in result.stderr
    ranking = (out / "ranking.csv").read_text().splitlines()
    search = (out / "lr_search.csv").read_text().splitlines()
    assert len(ranking) == 3 and len(search) == 1 + len({(r["config"]["label"], r["config"]["params"]["learning_rate"])
                                                         for r in records})
    assert png_size(out / "lr_sweep_mlp.png") == (800, 500)
    report = (out / "report.html").read_text()
    assert "each optimizer at its tuned learning rate" in report.lower()
    assert all(name.endswith(".json") and "__lr" in name for name in os.listdir(out / "runs"))


def test_tuned_results_do_not_depend_on_the_number_of_jobs(tmp_path):
    """Two worker processes train the same runs as one process and the search makes the same choices: every run
    file (but its clock) and the results' ranking and run list are identical."""
    common = ("compare", "--tune", "--model", "mlp,sparse", "--epochs", "1", "--seeds", "2", "--no-progress",
              "--optimizers", "sgd", "ftrl")
    one, two = (optzoo(*common, "--jobs", jobs, "--out", f"jobs{jobs}", cwd=tmp_path) for jobs in ("1", "2"))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr

    def untimed_run(path):
        record = json.loads(path.read_text())
        record["curves"] = untimed(record["curves"])
        return {k: v for k, v in record.items() if k not in ("wall_time_s", "train_time_s", "time_to_target_s")}

    runs = [{p.name: untimed_run(p) for p in (tmp_path / f"jobs{j}" / "runs").glob("*.json")} for j in (1, 2)]
    assert len(runs[0]) >= 2 * 2 * 7 and runs[0] == runs[1]
    first, second = (json.loads((tmp_path / f"jobs{j}" / "results.json").read_text()) for j in (1, 2))
    assert first["runs"] == second["runs"]
    chosen = {m: [(g["label"], g["learning_rate"], g["val_accuracy"]["mean"]) for g in groups]
              for m, groups in first["ranking"].items()}
    assert chosen == {m: [(g["label"], g["learning_rate"], g["val_accuracy"]["mean"]) for g in groups]
                      for m, groups in second["ranking"].items()}
    assert [line for line in two.stderr.splitlines() if "chosen learning rate" in line] == [
        line for line in one.stderr.splitlines() if "chosen learning rate" in line]


class _KillsItsWorker:
    """A job whose unpickling ends the worker process at once, as a crash in native code would."""

    def __reduce__(self):
        return os._exit, (3,)


def test_failing_runs_and_dying_workers_are_reported_not_fatal():
    from optzoo.cli.training import RunConfig, load_digits
    from optzoo.cli.workers import execute

    good = RunConfig("mlp", "sgd", (("learning_rate", 0.1),), "sgd", 0, 1, 32, 100)
    bad = RunConfig("mlp", "no_such_optimizer", (), "bad", 0, 1, 32, 100)

    def plan():
        first = yield [good, bad]
        second = yield [_KillsItsWorker()]
        third = yield [good]  # fresh workers after the crash
        return first + second + third

    finished = []
    [outcomes] = execute([plan()], 2, ("mlp",), {"digits": load_digits()}, 1, lambda key, job: None,
                         lambda *tick: None, lambda key, job, outcome: finished.append(key))
    assert sorted(finished) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert outcomes[0].record["status"] == "ok" and outcomes[0].error is None
    assert outcomes[1].record is None and "no_such_optimizer" in outcomes[1].error
    assert outcomes[2].record is None and "worker process died" in outcomes[2].error
    assert outcomes[3].record["final"] == outcomes[0].record["final"]


# ---------------------------------------------------------------------------------------------- run folders
def test_each_compare_gets_a_new_folder_and_latest_follows(tmp_path):
    first = optzoo("compare", *TINY, "--optimizers", "sgd", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    folders = sorted(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("compare-"))
    assert len(folders) == 1 and (tmp_path / "runs" / "latest").resolve() == folders[0].resolve()
    before = {p.name: p.read_bytes() for p in folders[0].rglob("*") if p.is_file()}
    second = optzoo("compare", *TINY, "--optimizers", "adam", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    folders = sorted(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("compare-"))
    assert len(folders) == 2
    assert (tmp_path / "runs" / "latest").is_symlink() and os.readlink(tmp_path / "runs" / "latest") == folders[1].name
    assert {p.name: p.read_bytes() for p in folders[0].rglob("*") if p.is_file()} == before  # untouched
    resumed = optzoo("compare", *TINY, "--optimizers", "adam", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0 and "(reused)" in resumed.stderr, resumed.stderr
    assert len([p for p in (tmp_path / "runs").iterdir() if p.name.startswith("compare-")]) == 2


def test_a_non_empty_out_is_refused_unless_resume_or_force(tmp_path):
    out = tmp_path / "out"
    assert optzoo("compare", *TINY, "--optimizers", "sgd", "--out", "out", cwd=tmp_path).returncode == 0
    report = (out / "report.html").read_bytes()
    line = assert_one_line_error(optzoo("compare", *TINY, "--optimizers", "adam", "--out", "out", cwd=tmp_path))
    assert "is not empty" in line and "--resume" in line and "--force" in line
    assert (out / "report.html").read_bytes() == report and [p.name for p in (out / "runs").iterdir()] == [
        "mlp__sgd__seed0.json"]
    (out / "curves_cnn.png").write_bytes(b"stale")  # a figure of a task this comparison does not have
    forced = optzoo("compare", *TINY, "--optimizers", "adam", "--out", "out", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["mlp__adam__seed0.json"]
    assert not (out / "curves_cnn.png").exists()
    (out / "curves_cnn.png").write_bytes(b"stale")
    resumed = optzoo("compare", *TINY, "--optimizers", "adam", "--out", "out", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0 and "(reused)" in resumed.stderr
    assert not (out / "curves_cnn.png").exists() and (out / "curves_mlp.png").exists()


# ---------------------------------------------------------------------------------------------- tasks
def test_sparse_task_is_deterministic_sparse_and_learnable(one_thread):
    from optzoo.cli.training import SPARSE_FEATURES, RunConfig, load_sparse_logreg, train_run

    a, b = load_sparse_logreg(), load_sparse_logreg()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert a.x_train.shape == (4800, 20) and a.x_val.shape == (1200, 20) and a.classes == 2
    assert 0 <= int(a.x_train.min()) and int(a.x_train.max()) < SPARSE_FEATURES
    assert 0.4 < float(a.y_train.float().mean()) < 0.6
    counts = torch.bincount(a.x_train.flatten(), minlength=SPARSE_FEATURES)
    assert counts[0] > 50 * counts[-1000:].float().mean()  # Zipf-like: a few frequent features, many rare ones
    record = train_run(RunConfig("sparse", "ftrl", (("learning_rate", 1.0),), "ftrl", 0, 2, 32, 150,
                                 "sparse-logreg"), a)
    assert record["status"] == "ok" and record["final"]["val_accuracy"] > 0.72


def test_sgld_runs_report_the_posterior_mean_and_failures_get_reasons(one_thread):
    from optzoo.cli.report import REASONS, aggregate, explain
    from optzoo.cli.training import RunConfig, load_digits, train_run

    data = load_digits()
    sgld = train_run(RunConfig("mlp", "sgld", (("learning_rate", 1e-4),), "sgld", 0, 2, 32, 15), data)
    assert sgld["final"]["posterior_samples"] >= 3
    assert 0.0 <= sgld["final"]["posterior_mean_val_accuracy"] <= 1.0
    ftrl = train_run(RunConfig("mlp", "ftrl", (("learning_rate", 0.01),), "ftrl", 0, 1, 32, 15), data)
    adam = train_run(RunConfig("mlp", "adam", (("learning_rate", 0.01),), "adam", 0, 1, 32, 15), data)
    reasons = explain(aggregate([sgld, ftrl, adam], 0.9), {"mlp": 0.1})["mlp"]
    assert set(reasons) == {"sgld", "ftrl"}  # adam learns; sgld is explained whether or not it learns
    assert reasons["ftrl"].startswith("learned nothing") and REASONS["ftrl"] in reasons["ftrl"]
    assert REASONS["sgld"] in reasons["sgld"] and "Posterior-mean validation accuracy" in reasons["sgld"]


def test_plot_styles_are_colour_blind_safe_and_distinct():
    from optzoo.cli.report import OKABE_ITO, marker, palette

    colours = palette(None, 22)
    assert colours[:8] == list(OKABE_ITO)
    assert len({(c, marker(i)) for i, c in enumerate(colours)}) == 22  # colour and marker never both repeat


def test_trajectories_pick_the_closest_final_point_among_non_diverging_runs():
    from optzoo.cli.trajectories import FUNCTIONS, LR_GRID, _score, best_path, final_distance, optimize_path

    fn = FUNCTIONS["beale"]
    spec = OptimizerSpec("rmsprop", {"rho": 0.9, "momentum": 0.9, "epsilon": 1e-7})  # the guide's RMSProp
    paths = {lr: optimize_path(spec.with_params(learning_rate=lr), fn, 300) for lr in LR_GRID}
    fine = {lr: final_distance(p, fn) for lr, p in paths.items() if p["status"] == "ok"}
    chosen = best_path(spec, fn, 300, 0)
    assert chosen["status"] == "ok" and chosen["tuned"] is True
    assert chosen["final_distance"] == pytest.approx(min(fine.values()), abs=1e-4) and chosen["final_distance"] < 0.1
    # (the mean log gap along the path, the former rule, picks lr 0.3, which ends 0.69 from the minimum)
    assert _score({"status": "diverged", "f": [0.0] * 301, "path": [[1.0, 1.0]]}, fn, 300) > _score(
        paths[chosen["learning_rate"]], fn, 300)
