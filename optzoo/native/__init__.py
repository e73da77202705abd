"""optzoo's native optimizer kernels: one C++/OpenMP call per optimizer step.

The sources in ``optzoo/native/src`` are compiled with the system C++ compiler the first time a process needs them
(about 20 s on two cores, announced on stderr) and cached in ``$OPTZOO_CACHE`` (default ``~/.cache/optzoo``) under
a key made of the sources, the compiler flags, the torch and Python versions and the CPU, so later processes load
the cached module at once. Each ``.cpp`` becomes its own cached object file; only ``core.cpp`` includes the torch
and pybind headers. Concurrent processes wait on a lock file instead of building twice.

Without a compiler (or with ``OPTZOO_NATIVE=0``) :func:`load` returns ``None`` after one warning line, and every
optimizer runs its ``torch._foreach`` path instead.

Python API of the loaded module (``load()``):

* ``rule_id(name) -> int`` (-1 if there is no such rule) and ``rule_names()``;
* ``step(rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux) -> bool``: one update of every
  tensor (lists); ``lrs``/``wds``/``ts`` are one number for all tensors or one per tensor; ``aux`` is ``None`` or
  a flat sequence with the same number of extra values for each tensor. Returns False, having written nothing,
  when some tensor is not one the kernels take (then the caller uses the torch path);
* ``step_rows(rule, weight, rows, values, state, lr, wd, t, hyper, multi_precision, aux) -> bool``: the same on
  the rows of a row-sparse gradient only (lazy update).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import torch

__all__ = ["CXXFLAGS", "NativeUnavailable", "build", "cache_dir", "load", "rule_id", "unavailable_reason"]

CXXFLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
            "-w")

_module = None
_failure: str | None = None


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here."""


def cache_dir() -> Path:
    return Path(os.environ.get("OPTZOO_CACHE") or Path.home() / ".cache" / "optzoo")


def _sources() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("src")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.name.endswith((".cpp", ".h"))}


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine()


def _torch_flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    flags = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    for name in ("COMPILER_TYPE", "STDLIB", "BUILD_ABI"):
        value = getattr(torch._C, f"_PYBIND11_{name}", None)
        if value is not None:
            flags.append(f'-DPYBIND11_{name}="{value}"')
    return flags


def _compile(cxx: str, source: Path, obj: Path, extra: list[str]) -> None:
    proc = subprocess.run([cxx, *CXXFLAGS, *extra, "-c", str(source), "-o", str(obj)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise NativeUnavailable(f"{source.name} failed to compile: {proc.stderr.strip()[-600:]}")


def _object(cxx: str, folder: Path, name: str, sources: dict[str, bytes], extra: list[str]) -> Path:
    """The cached object file of one translation unit (rebuilt only when it, a header or the flags change)."""
    digest = hashlib.sha256("\n".join([cxx, *CXXFLAGS, *extra, sys.version]).encode())
    for header in sorted(n for n in sources if n.endswith(".h")):
        digest.update(header.encode() + b"\0" + sources[header])
    digest.update(name.encode() + b"\0" + sources[name])
    obj = folder / "obj" / f"{name}.{digest.hexdigest()[:16]}.o"
    if not obj.exists():
        obj.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=obj.parent) as tmp:
            for src_name, text in sources.items():
                (Path(tmp) / src_name).write_bytes(text)
            out = Path(tmp) / obj.name
            _compile(cxx, Path(tmp) / name, out, extra)
            os.replace(out, obj)
    return obj


def build(verbose: bool = True) -> Path:
    """Compiles the kernels if the cache lacks them; returns the shared library's path."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++") or shutil.which("c++")
    sources = _sources()
    key_parts = [" ".join(CXXFLAGS), torch.__version__, sys.version, _cpu_id()]
    digest = hashlib.sha256("\n".join(key_parts).encode())
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name])
    key = digest.hexdigest()[:16]
    folder = cache_dir()
    target = folder / f"optzoo_native_{key}.so"
    if target.exists():
        return target
    if cxx is None:
        raise NativeUnavailable("no C++ compiler (g++) found")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"optzoo_native_{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same kernels
        if target.exists():
            return target
        started = time.perf_counter()
        if verbose:
            print(f"optzoo: compiling the native optimizer kernels (first use, cached in {folder}; 20 s to a few "
                  "minutes, by the free cores)", file=sys.stderr, flush=True)
        torch_lib = Path(torch.__file__).parent / "lib"
        units = sorted((n for n in sources if n.endswith(".cpp")), key=lambda n: n != "core.cpp")  # slowest first
        torch_flags = [*_torch_flags(), f"-D_OPTZOO_TORCH={torch.__version__}"]
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            jobs = [pool.submit(_object, cxx, folder, n, sources, torch_flags if n == "core.cpp" else [])
                    for n in units]
            objects = [job.result() for job in jobs]
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / target.name
            link = [cxx, "-shared", "-fopenmp", *map(str, objects), "-o", str(out), f"-L{torch_lib}", "-lc10",
                    "-ltorch_cpu", "-ltorch", "-ltorch_python", f"-Wl,-rpath,{torch_lib}"]
            proc = subprocess.run(link, capture_output=True, text=True)
            if proc.returncode != 0:
                raise NativeUnavailable(f"linking failed: {proc.stderr.strip()[-600:]}")
            os.replace(out, target)  # atomic: a concurrent reader never sees half a file
        if verbose:
            print(f"optzoo: native kernels ready ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return target


def load():
    """The native module, built on first use; ``None`` (after one warning) where it cannot be built."""
    global _module, _failure
    if _module is not None or _failure is not None:
        return _module
    if os.environ.get("OPTZOO_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _failure = "disabled by OPTZOO_NATIVE=0"
        return None
    try:
        path = build()
        spec = importlib.util.spec_from_file_location("_optzoo_native", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _module = module
    except (NativeUnavailable, OSError, ImportError, subprocess.SubprocessError) as err:
        _failure = str(err).splitlines()[0] if str(err) else type(err).__name__
        warnings.warn(f"optzoo: native kernels unavailable ({_failure}); using the torch._foreach path",
                      RuntimeWarning, stacklevel=2)
    return _module


def unavailable_reason() -> str | None:
    """Why :func:`load` gave ``None`` (``None`` while the kernels are loaded or not yet tried)."""
    return _failure


def rule_id(name: str) -> int:
    """The id of native rule ``name``, or -1 when the kernels or the rule are missing."""
    module = load()
    return -1 if module is None else module.rule_id(name)
