"""optzoo's native optimizer kernels: one C++/OpenMP call per optimizer step.

The sources in ``optzoo/native/src`` are compiled with the system C++ compiler the first time a process needs them
(about 20 s on two cores, announced on stderr) and cached in ``$OPTZOO_CACHE`` (default ``~/.cache/optzoo``). Each
object file is keyed by everything that changes its machine code (compiler path and ``--version``, flags, the CPU
the flags tune for, torch and Python versions, the source and headers) and the library by its objects' keys, so a
cache shared by machines with different CPUs never mixes their ``-march=native`` code. ``OPTZOO_NATIVE_ARCH=portable``
(or an unknown CPU, or a failing tuned build) builds with portable flags instead. Each ``.cpp`` becomes its own
cached object file; only ``core.cpp`` includes the torch and pybind headers. Concurrent processes wait on a lock
file instead of building twice. See docs/native.md.

Without a compiler (or with ``OPTZOO_NATIVE=0``) :func:`load` returns ``None`` after one warning line, and every
optimizer runs its ``torch._foreach`` path instead.

Python API of the loaded module (``load()``):

* ``rule_id(name) -> int`` (-1 if there is no such rule) and ``rule_names()``;
* ``step(rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux) -> bool``: one update of every
  tensor (lists); ``lrs``/``wds``/``ts`` are one number for all tensors or one per tensor; ``aux`` is ``None`` or
  a flat sequence with the same number of extra values for each tensor. Returns False, having written nothing,
  when some tensor is not one the kernels take (then the caller uses the torch path); raises ValueError, having
  written nothing, for shared memory or a misshapen state (tensors named ``@<position>``, see core.cpp);
* ``step_rows(rule, weight, rows, values, state, lr, wd, t, hyper, multi_precision, aux) -> bool``: the same on
  the rows of a row-sparse gradient only (lazy update).
* ``norm_sums(rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux, prior) -> Tensor | None``:
  one norm stage of a two-pass rule (LARS, LAMB, LANS): float64 ``[n_tensors, k]`` per-tensor sums of squares
  (``prior``: the first stage's sums, for LANS's second stage); ``step`` with ``aux = (aux, *stage_sums)`` then runs
  the update pass only (docs/native.md, "Two-pass rules").
* ``step_into(rule, weights, grads, states, lrs, wds, ts, hyper, multi_precision, aux, results) -> bool``: ``step``
  for a rule that reports values of the step (Prodigy's new d), written into ``results``, a float64 tensor of the
  rule's size that the caller keeps.
* ``usual_inputs(weights, grads, states, known) -> True | bytes | None``: the torch paths' check of a step's lists in
  one pass (``Optimizer._inputs_usual``): None when something needs a closer look (shared memory, a tensor on
  another device, a sparse gradient...), True when the states' layout signature is one of ``known`` (bytes the
  caller found to match ``create_state``), else that signature (see core.cpp).
"""

from __future__ import annotations

import fcntl
import functools
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

__all__ = ["BASE_CXXFLAGS", "CXXFLAGS", "NATIVE_ARCH", "NativeUnavailable", "build", "built", "cache_dir", "load",
           "portable_arch", "rule_id", "unavailable_reason"]

#: flags of every build; the CPU-specific part (:data:`NATIVE_ARCH` or :func:`portable_arch`) is added to them.
BASE_CXXFLAGS = ("-O3", "-std=c++17", "-fPIC", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-w")
#: x86-64: 512-bit vectors where the CPU has them (GCC prefers 256 by default): the memory-bound element-wise loops
#: stream ~5% faster from cache with them (measured on the project's Xeon), as torch's own AVX-512 kernels do
NATIVE_ARCH = ("-march=native",) + (
    ("-mprefer-vector-width=512",) if platform.machine().lower() in ("x86_64", "amd64") else ())
CXXFLAGS = BASE_CXXFLAGS[:1] + NATIVE_ARCH + BASE_CXXFLAGS[1:]  # the default build's flags (kept for callers)

_module = None
_failure: str | None = None
_probed = False  # whether built() has looked for the library


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here."""


def cache_dir() -> Path:
    return Path(os.environ.get("OPTZOO_CACHE") or Path.home() / ".cache" / "optzoo")


def _sources() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("src")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.name.endswith((".cpp", ".h"))}


def _cpu_id() -> str:
    """The CPU's model and instruction-set flags from /proc/cpuinfo ("" where they cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part")
    found = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() in keys:
            found.setdefault(name.strip(), value.strip())
    return "\n".join(f"{k}: {found[k]}" for k in sorted(found)) if any(
        k in found for k in ("flags", "Features")) else ""


@functools.lru_cache(maxsize=8)
def _compiler_id(cxx: str) -> str:
    """The compiler's resolved path and its ``--version`` text: a compiler upgrade changes the machine code."""
    try:
        proc = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
        version = proc.stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeUnavailable(f"the C++ compiler {cxx} does not run: {err}") from None
    return f"{os.path.realpath(cxx)}\n{version}"


def portable_arch() -> tuple[str, ...]:
    """Architecture flags that run on every CPU of this kind (x86-64: x86-64-v2, SSE4.2 without AVX)."""
    return ("-march=x86-64-v2",) if platform.machine().lower() in ("x86_64", "amd64") else ()


def _arch_choice() -> str:
    """``"native"`` (tuned for this CPU, the default) or ``"portable"`` (``OPTZOO_NATIVE_ARCH=portable``, or a CPU
    that cannot be identified: objects tuned for an unknown CPU could not be keyed by it)."""
    choice = os.environ.get("OPTZOO_NATIVE_ARCH", "native").strip().lower() or "native"
    if choice not in ("native", "portable"):
        raise NativeUnavailable(f"OPTZOO_NATIVE_ARCH must be 'native' or 'portable', got {choice!r}")
    return "portable" if choice == "native" and not _cpu_id() else choice


def _torch_flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    flags = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    for name in ("COMPILER_TYPE", "STDLIB", "BUILD_ABI"):
        value = getattr(torch._C, f"_PYBIND11_{name}", None)
        if value is not None:
            flags.append(f'-DPYBIND11_{name}="{value}"')
    return flags


def _object_key(cxx: str, flags: list[str], cpu: str, name: str, sources: dict[str, bytes]) -> str:
    """Everything that changes one object's machine code: compiler (path and version), flags, the CPU the flags
    tune for, torch and Python versions, the unit and every header."""
    digest = hashlib.sha256("\n".join([_compiler_id(cxx), *flags, cpu, torch.__version__, sys.version]).encode())
    for header in sorted(n for n in sources if n.endswith(".h")):
        digest.update(header.encode() + b"\0" + sources[header])
    digest.update(name.encode() + b"\0" + sources[name])
    return digest.hexdigest()[:20]


def _object(cxx: str, folder: Path, name: str, key: str, sources: dict[str, bytes], flags: list[str]) -> Path:
    """The cached object file of one translation unit, compiled unless an object of the same key exists."""
    obj = folder / "obj" / f"{name}.{key}.o"
    if not obj.exists():
        obj.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=obj.parent) as tmp:
            for src_name, text in sources.items():
                (Path(tmp) / src_name).write_bytes(text)
            out = Path(tmp) / obj.name
            proc = subprocess.run([cxx, *flags, "-c", str(Path(tmp) / name), "-o", str(out)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise NativeUnavailable(f"{name} failed to compile: {proc.stderr.strip()[-600:]}")
            os.replace(out, obj)
    return obj


def _find_compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++") or shutil.which("c++")


def build(verbose: bool = True) -> Path:
    """Compiles the kernels if the cache lacks them; returns the shared library's path.

    Tuned for this CPU (``-march=native``) unless ``OPTZOO_NATIVE_ARCH=portable`` or the CPU is unknown; a tuned
    build that fails is retried once with :func:`portable_arch` flags."""
    cxx = _find_compiler()
    if cxx is None:
        raise NativeUnavailable("no C++ compiler (g++) found")
    sources = _sources()
    *tuned, portable = _arch_targets()
    for arch, cpu in tuned:
        try:
            return _build(cxx, sources, arch, cpu, verbose)
        except NativeUnavailable as err:
            print(f"optzoo: the -march=native build failed ({str(err).splitlines()[0]}); building portable "
                  "kernels instead", file=sys.stderr, flush=True)
    return _build(cxx, sources, *portable, verbose)


def _arch_targets() -> list[tuple[tuple[str, ...], str]]:
    """``(arch flags, CPU key)`` of the builds :func:`build` tries, in order: tuned for this CPU (unless
    ``OPTZOO_NATIVE_ARCH=portable`` or the CPU is unknown), then portable."""
    portable = (portable_arch(), f"portable:{platform.machine()}")
    return [(NATIVE_ARCH, f"native:{_cpu_id()}"), portable] if _arch_choice() == "native" else [portable]


def _plan(cxx: str, sources: dict[str, bytes], arch: tuple[str, ...], cpu: str):
    """``(units, unit_flags, keys, link_flags, target)``: what a build compiles and links, and the library's path."""
    units = sorted((n for n in sources if n.endswith(".cpp")), key=lambda n: n != "core.cpp")  # slowest first
    base = [BASE_CXXFLAGS[0], *arch, *BASE_CXXFLAGS[1:]]
    torch_flags = [*base, *_torch_flags(), f"-D_OPTZOO_TORCH={torch.__version__}"]
    unit_flags = {n: torch_flags if n == "core.cpp" else base for n in units}
    keys = {n: _object_key(cxx, unit_flags[n], cpu, n, sources) for n in units}
    torch_lib = Path(torch.__file__).parent / "lib"
    link_flags = ["-shared", "-fopenmp", f"-L{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python",
                  f"-Wl,-rpath,{torch_lib}"]
    digest = hashlib.sha256("\n".join([*link_flags, *(f"{n}={keys[n]}" for n in units)]).encode())
    key = digest.hexdigest()[:16]  # the library changes whenever any of its objects does
    return units, unit_flags, keys, link_flags, cache_dir() / f"optzoo_native_{key}.so"


def _build(cxx: str, sources: dict[str, bytes], arch: tuple[str, ...], cpu: str, verbose: bool) -> Path:
    units, unit_flags, keys, link_flags, target = _plan(cxx, sources, arch, cpu)
    folder = target.parent
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same kernels
        if target.exists():
            return target
        started = time.perf_counter()
        if verbose:
            print(f"optzoo: compiling the native optimizer kernels (first use, cached in {folder}; 20 s to a few "
                  "minutes, by the free cores)", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            jobs = [pool.submit(_object, cxx, folder, n, keys[n], sources, unit_flags[n]) for n in units]
            objects = [job.result() for job in jobs]
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / target.name
            proc = subprocess.run([cxx, *map(str, objects), "-o", str(out), *link_flags], capture_output=True,
                                  text=True)
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
    if _disabled():
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


def _disabled() -> bool:
    return os.environ.get("OPTZOO_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def built():
    """The native module when it is loaded, or when the library :func:`load` would load first is already built
    (it is loaded then); ``None`` otherwise. Never compiles and never warns: for work the torch path does as well
    (the input checks of ``impl="foreach"`` steps, see ``Optimizer._inputs_usual``), where a first-use compile
    would surprise. Looks for the library once per process; a later :func:`load` makes it available here too."""
    global _probed
    if _module is not None or _failure is not None or _probed:
        return _module
    _probed = True
    if _disabled():
        return None
    try:
        cxx = _find_compiler()
        if cxx is None:
            return None
        if not _plan(cxx, _sources(), *_arch_targets()[0])[-1].exists():  # the library load() would build first
            return None
    except (NativeUnavailable, OSError, subprocess.SubprocessError):
        return None
    return load()


def unavailable_reason() -> str | None:
    """Why :func:`load` gave ``None`` (``None`` while the kernels are loaded or not yet tried)."""
    return _failure


def rule_id(name: str) -> int:
    """The id of native rule ``name``, or -1 when the kernels or the rule are missing."""
    module = load()
    return -1 if module is None else module.rule_id(name)
