"""Builds the native kernels into the wheel: ``pip wheel .`` / ``pip install .``.

Everything else about the package is in pyproject.toml; this file only adds a build step.
The CPU scan kernel (cpu_kernel.c) and the ONNX Runtime plugin (ort_plugin.c) are compiled
once per instruction-set level of the build machine's architecture (x86-64: generic,
x86-64-v3 = AVX2+FMA, x86-64-v4 = AVX-512; aarch64: armv8-a, NEON being its baseline) into
``vimc/ops/selective_scan/_prebuilt/``. At run time ``_cbuild.prebuilt`` loads the best one
the CPU supports, so a process with no C compiler runs the fast path. Never ``-march=native``:
the wheel must run on other machines than the one that built it.

A level the build machine's compiler cannot build is left out with a warning (the run-time
first-use build and then the torch path remain); ``VIMC_NO_PREBUILT=1`` builds no kernels, nor
does an editable install (``pip install -e .``: the sources run in place, built at first use).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _load_cbuild():
    """ops/selective_scan/_cbuild.py by path: importing the package would import torch, which
    an isolated build environment does not have (the module itself needs only the stdlib)."""
    path = HERE / "ops" / "selective_scan" / "_cbuild.py"
    spec = importlib.util.spec_from_file_location("_vimc_cbuild", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithKernels(build_py):
    def run(self):
        super().run()
        # an editable install runs the sources in place, which build at first use
        if os.environ.get("VIMC_NO_PREBUILT") == "1" or getattr(self, "editable_mode", False):
            return
        cbuild = _load_cbuild()
        out_dir = Path(self.build_lib) / "vimc" / "ops" / "selective_scan" / cbuild.PREBUILT_DIR
        built = cbuild.build_prebuilt(out_dir)
        for name, error in built.items():
            status = "built" if error is None else f"SKIPPED: {error}"
            print(f"vimc: prebuilt kernel {name}: {status}", file=sys.stderr)


class BinaryDistribution(Distribution):
    """A wheel tagged for this platform (it carries native libraries), not py3-none-any."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPyWithKernels}, distclass=BinaryDistribution)
