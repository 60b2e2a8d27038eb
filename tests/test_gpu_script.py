"""benchmarks/gpu.py, the GPU proof, cannot rot before a GPU runs it: its dry run (every step on
the CPU at tiny sizes, the Triton kernels under the interpreter) runs here end to end, as
documented, and every step must run and record a result."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def gpu_bench():
    return importlib.import_module("benchmarks.gpu")


@pytest.mark.slow  # compiles a tiny Vim with Inductor and packages it with AOTInductor
@pytest.mark.triton
def test_dry_run_runs_every_step_and_records_it(tmp_path, gpu_bench):
    env = os.environ | {"TRITON_INTERPRET": "1"}
    r = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    (json_path,) = tmp_path.glob("gpu-*.json")
    p = json.loads(json_path.read_text())
    md = json_path.with_suffix(".md").read_text()
    for step in gpu_bench.STEPS:  # printed as it ran, recorded, and in the markdown
        assert f"== {step}: ok" in r.stdout
        assert p["steps"][step]["status"] == "ok", p["steps"][step]
        assert p["steps"][step]["seconds"] >= 0
        assert f"## {step}" in md
    for key in ("device", "driver", "date", "header"):
        assert p[key]
    assert p["versions"]["torch"] and p["versions"]["triton"] and p["dry_run"] is True

    plan, s = gpu_bench.dry_plan(), p["steps"]
    kernels = s["kernels"]["rows"]
    assert len(kernels) == len(plan.ref_Ls) * len(gpu_bench.OPTIONS) * 3 * 2
    assert {r["kernel"] for r in kernels} == {"sequential", "chunked"}
    assert all(r["fwd_err"] <= r["fwd_tol"] and r["grad_err"] <= r["grad_tol"] for r in kernels)
    speed = s["speed"]["rows"]
    assert len(speed) == len(plan.speed_shapes) * 2 * 2 and s["speed"]["copy_gbps"] > 0
    assert all(r["ms"] > 0 and r["gbps"] > 0 and r["copy_fraction"] > 0 for r in speed)
    assert s["compile"]["graph_breaks"] == 0 and not s["compile"]["grads_outside_tolerance"]
    assert s["aoti"]["max_abs"] <= 1e-4
    throughput = s["throughput"]["rows"]
    assert len(throughput) == 2 * 2 * len(plan.batches)
    assert all(r["images_per_s"] > 0 for r in throughput)
    duel = s["vim_vs_deit"]["rows"]
    assert len(duel) == 2 * len(plan.resolutions) and all(r["latency_ms"] > 0 for r in duel)
    plot = Path(s["vim_vs_deit"]["plot"])
    assert plot.is_file() or s["vim_vs_deit"]["plot"].startswith("not drawn")


def test_a_failing_step_is_recorded_and_the_run_goes_on(tmp_path, gpu_bench, monkeypatch):
    def broken(plan):
        raise RuntimeError("no such kernel")

    monkeypatch.setitem(gpu_bench.STEP_FUNCTIONS, "speed", broken)
    monkeypatch.setitem(
        gpu_bench.STEP_FUNCTIONS, "throughput", lambda plan: {"rows": [], "ok": True}
    )
    p = gpu_bench.run(gpu_bench.dry_plan(), tmp_path, steps=["speed", "throughput"])
    assert p["steps"]["speed"]["status"] == "error"
    assert "RuntimeError: no such kernel" in p["steps"]["speed"]["error"]
    assert p["steps"]["throughput"]["status"] == "ok"
    (json_path,) = tmp_path.glob("gpu-*.json")
    assert json.loads(json_path.read_text())["steps"]["speed"]["status"] == "error"
    assert "no such kernel" in json_path.with_suffix(".md").read_text()


def test_no_cuda_without_dry_run_is_a_usage_error(gpu_bench, monkeypatch):
    monkeypatch.setattr(gpu_bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        gpu_bench.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        gpu_bench.main(["--dry-run", "--steps", "nope"])
