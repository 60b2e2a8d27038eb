"""The wheel carries the native kernels: built with ``pip wheel .``, installed into a fresh
venv, run with no C compiler on PATH and empty caches, an eager Vim-Ti forward takes the
prebuilt fused kernel (no first-use build, no torch fallback) and runs within WHEEL_SLOWDOWN
of the usual environment's time (this checkout, its first-use build for this CPU).

The fresh venv gets torch and the other dependencies from the project's venv through a .pth
line (no network here), but vimc only from the wheel: the script checks which vimc it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEEL_SLOWDOWN = 1.25  # the bound: fresh-venv time / usual time
ROUNDS_MAX = 4  # alternations of the two environments at most (2 at least)

# times an eager Vim-Ti forward and says which kernel ran and which vimc was imported
SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("error", RuntimeWarning)  # a kernel that fails to load fails here
    import torch
    import vimc
    from vimc.ops.selective_scan import cpu
    from vimc.timing import time_fn
    torch.manual_seed(0)
    model = vimc.create_model("vim_tiny").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        t = time_fn(lambda: model(x), warmup=3, repeats=int(sys.argv[1]))
    print(json.dumps({"vimc": vimc.__file__, "kernel": cpu.kernel_info(),
                      "median_ms": t.median_ms, "p20_ms": t.p20_ms}))
    """
)


def _run(python: str, env: dict, repeats: int) -> dict:
    proc = subprocess.run(
        [python, "-c", SCRIPT, str(repeats)], capture_output=True, text=True, env=env, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_wheel_runs_prebuilt_kernel_without_compiler(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(wheels)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-4000:]
    (wheel,) = wheels.glob("vimc-*.whl")
    assert "none-any" not in wheel.name, (
        f"{wheel.name}: a wheel with native code needs a platform tag"
    )

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-4000:]
    # torch and friends from the project's venv, after the wheel's vimc on sys.path
    (site / "_project_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    empty_bin = tmp_path / "bin"  # PATH: nothing, so no cc, gcc or clang
    empty_bin.mkdir()
    fresh_env = {
        k: v for k, v in os.environ.items() if k not in ("CC", "PYTHONPATH", "VIMC_CPU_KERNEL")
    }
    fresh_env.update(
        PATH=str(empty_bin),
        HOME=str(tmp_path / "home"),
        VIMC_CACHE_DIR=str(tmp_path / "vimc-cache"),
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor-cache"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
    )
    usual_env = {k: v for k, v in os.environ.items() if k != "VIMC_CPU_KERNEL"}

    # alternate the two environments, twice each, so that a load change hits both alike; on
    # a shared 2-core machine one slow spell can still land on one side only (a run read 1.29
    # once, then 1.00), so up to two more rounds follow while the best times are out of bound
    runs = {"fresh": [], "usual": []}

    def ratio_of_best() -> float:
        best = {k: min(r["p20_ms"] for r in v) for k, v in runs.items()}
        return best["fresh"] / best["usual"]

    for round_ in range(ROUNDS_MAX):
        runs["usual"].append(_run(sys.executable, usual_env, 6))
        runs["fresh"].append(_run(str(venv / "bin" / "python"), fresh_env, 6))
        if round_ + 1 >= 2 and ratio_of_best() <= WHEEL_SLOWDOWN:
            break
    fresh, usual = runs["fresh"][-1], runs["usual"][-1]
    assert fresh["vimc"].startswith(str(site)), f"imported vimc from {fresh['vimc']}"
    # what `vimc info --kernels` prints
    kernel = fresh["kernel"]["scan kernel"]
    assert kernel.startswith("C (fused") and "prebuilt" in kernel, fresh["kernel"]
    assert fresh["kernel"]["onnxruntime plugin"].startswith("prebuilt"), fresh["kernel"]
    assert not any((tmp_path / "vimc-cache").glob("*.so")), "the fresh venv built a kernel"
    best = {k: min(r["p20_ms"] for r in v) for k, v in runs.items()}
    ratio = ratio_of_best()
    print(
        f"\nfresh venv: {fresh['kernel']['scan kernel']}, {best['fresh']:.1f} ms; usual: "
        f"{usual['kernel']['scan kernel']}, {best['usual']:.1f} ms; ratio {ratio:.2f} "
        f"(bound {WHEEL_SLOWDOWN}, {len(runs['fresh'])} rounds)"
    )
    assert ratio <= WHEEL_SLOWDOWN
