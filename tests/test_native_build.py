"""The native build cache: objects and library keyed by everything that changes machine code.

Builds a tiny stand-in source set with the real compiler (a second each), so that the keys, not the kernels, are
under test: a shared cache (an NFS home seen by a login node and compute nodes with other CPUs) must never hand
one CPU's ``-march=native`` objects to another (SIGILL).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from optzoo import native

SOURCES = {
    "api.h": b"#pragma once\nint optzoo_rule();\n",
    "core.cpp": b'#include "api.h"\nint optzoo_core() { return optzoo_rule() + 1; }\n',
    "rules_x.cpp": b'#include "api.h"\nint optzoo_rule() { return 41; }\n',
}


@pytest.fixture
def tiny_build(tmp_path, monkeypatch):
    """Points the cache at an empty folder and the builder at SOURCES; yields the list of compiled objects."""
    if native._find_compiler() is None:
        if os.environ.get("OPTZOO_REQUIRE_NATIVE") == "1":
            pytest.fail("OPTZOO_REQUIRE_NATIVE=1 but no C++ compiler found")
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("OPTZOO_CACHE", str(tmp_path))
    monkeypatch.delenv("OPTZOO_NATIVE_ARCH", raising=False)
    monkeypatch.setattr(native, "_sources", lambda: dict(SOURCES))
    compiled: list[tuple[str, list[str]]] = []
    real_run = subprocess.run

    def recording_run(cmd, *args, **kwargs):
        if "-c" in cmd:
            compiled.append((Path(cmd[cmd.index("-o") + 1]).name, list(cmd)))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(native.subprocess, "run", recording_run)
    return compiled


def _objects(tmp_path) -> set[str]:
    return {p.name for p in (tmp_path / "obj").glob("*.o")}


def test_a_different_cpu_reuses_no_object(tiny_build, tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_cpu_id", lambda: "flags: fpu sse2 avx2 avx512f")
    lib_a = native.build(verbose=False)
    objects_a = _objects(tmp_path)
    assert len(tiny_build) == 2 and len(objects_a) == 2
    assert all("-march=native" in cmd for _, cmd in tiny_build)

    monkeypatch.setattr(native, "_cpu_id", lambda: "flags: fpu sse2")  # a compute node without AVX
    lib_b = native.build(verbose=False)
    objects_b = _objects(tmp_path) - objects_a
    assert lib_b != lib_a
    assert len(tiny_build) == 4, "every unit must be compiled again for the other CPU"
    assert len(objects_b) == 2 and {name for name, _ in tiny_build[2:]} == objects_b

    monkeypatch.setattr(native, "_cpu_id", lambda: "flags: fpu sse2 avx2 avx512f")  # back on the first CPU
    assert native.build(verbose=False) == lib_a
    assert len(tiny_build) == 4, "the first CPU's cached build is reused as is"


def test_a_different_compiler_version_reuses_no_object(tiny_build, tmp_path, monkeypatch):
    lib_a = native.build(verbose=False)
    monkeypatch.setattr(native, "_compiler_id", lambda cxx: "/usr/bin/g++\ng++ (fake) 99.1")
    lib_b = native.build(verbose=False)
    assert lib_b != lib_a and len(tiny_build) == 4 and len(_objects(tmp_path)) == 4


def test_portable_build_is_keyed_apart_and_uses_portable_flags(tiny_build, tmp_path, monkeypatch):
    lib_native = native.build(verbose=False)
    monkeypatch.setenv("OPTZOO_NATIVE_ARCH", "portable")
    lib_portable = native.build(verbose=False)
    assert lib_portable != lib_native and len(tiny_build) == 4
    for _, cmd in tiny_build[2:]:
        assert "-march=native" not in cmd
        assert [f for f in cmd if f.startswith("-march")] == list(native.portable_arch())


def test_unknown_cpu_builds_portable(tiny_build, monkeypatch):
    monkeypatch.setattr(native, "_cpu_id", lambda: "")
    native.build(verbose=False)
    assert all("-march=native" not in cmd for _, cmd in tiny_build)


def test_failed_tuned_build_falls_back_to_portable(tiny_build, monkeypatch, capfd):
    monkeypatch.setattr(native, "NATIVE_ARCH", ("-march=no-such-cpu",))
    lib = native.build(verbose=False)
    assert lib.exists()
    assert "building portable kernels instead" in capfd.readouterr().err
    assert all("-march=no-such-cpu" not in cmd for _, cmd in tiny_build[-2:])


def test_bad_arch_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OPTZOO_NATIVE_ARCH", "fastest")
    with pytest.raises(native.NativeUnavailable, match="OPTZOO_NATIVE_ARCH"):
        native.build(verbose=False)
