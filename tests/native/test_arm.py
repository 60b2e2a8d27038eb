"""The CPU scan kernel on every instruction set it is built for, against harness.c's scalar
double-precision reference (every option, odd sizes, three memory layouts, forward and
backward): generic x86-64, x86-64-v3 (AVX2+FMA) and x86-64-v4 (AVX-512) natively where the CPU
runs them, and aarch64 cross-compiled with ``aarch64-linux-gnu-gcc`` and run under
``qemu-aarch64`` (Debian: ``apt-get install qemu-user gcc-aarch64-linux-gnu``), or natively on
an ARM machine. A variant this machine cannot run is skipped with the reason.

    pytest -rs tests/native/test_arm.py    # prints the ISA each variant tested; -rs the skips
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from vimc.ops.selective_scan import _cbuild

HARNESS = Path(__file__).resolve().parent / "harness.c"
KERNEL_DIR = Path(_cbuild.__file__).resolve().parent
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"

# the kernel's own float flags (no fast-math, contraction on), as a program instead of a library
FLAGS = _cbuild.PROGRAM_FLAGS

X86 = platform.machine() in ("x86_64", "AMD64")
ARM = platform.machine() in ("aarch64", "arm64")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _variant(name: str) -> tuple[list[str], list[str]]:
    """(compile command prefix, run command prefix) of a variant, or pytest.skip saying why."""
    cpu = _cpu_flags()
    if name.startswith("x86-64"):
        if not X86:
            pytest.skip(f"{name}: this machine is {platform.machine()}, not x86-64")
        need = {"x86-64": set(), "x86-64-v3": {"avx2", "fma"}, "x86-64-v4": {"avx512f"}}[name]
        missing = need - cpu
        if missing:
            pytest.skip(f"{name}: this CPU lacks {', '.join(sorted(missing))}")
        cc = _cbuild.compiler()
        return [cc, f"-march={name}"], []
    if ARM:  # aarch64 on an ARM machine: native build and run
        return [_cbuild.compiler(), "-march=armv8-a"], []
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not cross or not qemu:
        absent = [n for n, p in (("aarch64-linux-gnu-gcc", cross), ("qemu-aarch64", qemu)) if not p]
        pytest.skip(
            f"aarch64: {' and '.join(absent)} not found "
            "(apt-get install qemu-user gcc-aarch64-linux-gnu)"
        )
    return [cross, "-march=armv8-a"], [qemu, "-L", AARCH64_SYSROOT]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["x86-64", "x86-64-v3", "x86-64-v4", "aarch64"])
def test_kernel_matches_reference(name, tmp_path, capsys):
    build, run = _variant(name)
    exe = tmp_path / f"harness-{name}"
    cmd = [*build, *FLAGS, "-Wno-psabi", f"-I{KERNEL_DIR}", str(HARNESS), "-o", str(exe), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    proc = subprocess.run([*run, str(exe)], capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    with capsys.disabled():  # the CI log says which ISA each variant tested, without -s
        print(f"\n[{name}] " + "\n  ".join(lines[:1] + lines[-1:]))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert lines and lines[0].startswith("ISA: ") and "0 failed" in lines[-1]
