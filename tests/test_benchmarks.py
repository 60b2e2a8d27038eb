"""The benchmark scripts' argument helpers and timing plumbing (the timings themselves are not
unit-tested), imported as the package ``benchmarks`` from the repository root, and each script
run as the README runs it, ``python benchmarks/<name>.py``."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from .tolerances import ORT_CONTRIB_VS_OP

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.fixture(scope="module")
def export_bench():
    return importlib.import_module("benchmarks.export")


@pytest.fixture(scope="module")
def onnx_scan_bench():
    pytest.importorskip("onnxruntime")
    return importlib.import_module("benchmarks.onnx_scan")


@pytest.fixture(scope="module")
def contrib_bench():
    pytest.importorskip("onnxruntime")
    return importlib.import_module("benchmarks.ort_contrib")


def test_one_onnxruntime_backend_per_lowering_and_thread_count(export_bench):
    scans = export_bench.parse_onnx_scans("paired,step:2")
    assert scans == [("paired", None), ("step", 2)]
    got = export_bench.expand_backends(["compiled", "onnxruntime"], scans, [2, 1])
    assert got == [
        "compiled",
        "onnxruntime:paired@2t",
        "onnxruntime:paired@1t",
        "onnxruntime:step:2@2t",
        "onnxruntime:step:2@1t",
    ]
    # one lowering and one thread count: the plain name
    one = export_bench.parse_onnx_scans("paired")
    assert export_bench.expand_backends(["onnxruntime"], one, [1]) == ["onnxruntime"]


def test_plugin_backend_and_spinning_variants(export_bench):
    one = export_bench.parse_onnx_scans("paired")
    spin = export_bench.parse_spinning("off,on")
    assert spin == [False, True]
    got = export_bench.expand_backends(["compiled", "onnxruntime-plugin"], one, [], spin)
    assert got == ["compiled", "onnxruntime-plugin", "onnxruntime-plugin+spin"]
    # the plugin route has one lowering: --onnx-scan does not multiply it
    two = export_bench.parse_onnx_scans("paired,step")
    assert export_bench.expand_backends(["onnxruntime-plugin"], two) == ["onnxruntime-plugin"]
    with pytest.raises(ValueError, match="--ort-spinning"):
        export_bench.parse_spinning("fast")


@pytest.mark.parametrize("spec", ["nope", "step:0", "custom", "plugin", "scan", "unrolled:8"])
def test_bad_onnx_scan_is_named(export_bench, spec):
    """Unknown names, bad step counts, the plugin route (its own backend) and the removed
    lowerings are refused, naming the option."""
    with pytest.raises(ValueError, match="--onnx-scan"):
        export_bench.parse_onnx_scans(spec)


def test_old_onnx_scan_spelling_warns_and_gives_the_new_name(export_bench):
    with pytest.warns(FutureWarning, match="paired"):
        assert export_bench.parse_onnx_scans("bidir,step") == [("paired", None), ("step", None)]


def test_onnx_scan_bench_parses_the_standard_lowerings(onnx_scan_bench):
    parse = onnx_scan_bench.parse_lowerings
    assert parse(onnx_scan_bench.DEFAULT_LOWERINGS) == [
        ("step", None),
        ("step", 2),
        ("step", 4),
        ("paired", None),
        ("paired", 2),
    ]
    assert onnx_scan_bench.BASELINE in {name for name, _ in parse("step,paired")}
    with pytest.warns(FutureWarning, match="paired"):
        assert parse("bidir:2") == [("paired", 2)]
    for bad in ("scan", "unrolled:8", "custom", "step:x", ","):
        with pytest.raises(ValueError, match="--lowerings"):
            parse(bad)


def test_onnx_scan_bench_old_option_name_warns(onnx_scan_bench, monkeypatch):
    """--formulations, the old name of --lowerings, still works for one release, warning."""
    seen = {}

    def stop(lowerings):  # the point past option handling: stop before any measuring
        seen["lowerings"] = lowerings
        raise SystemExit(0)

    monkeypatch.setattr(onnx_scan_bench, "parse_lowerings", stop)
    with pytest.warns(FutureWarning, match="--lowerings"), pytest.raises(SystemExit):
        onnx_scan_bench.main(["--formulations", "step"])
    assert seen["lowerings"] == "step"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SystemExit):
            onnx_scan_bench.main(["--lowerings", "paired"])
    assert seen["lowerings"] == "paired"


def test_bidirectional_bench_times_one_call_of_a_repeated_sample():
    """A sample of ``inner`` calls is reported per call."""
    bench = importlib.import_module("benchmarks.bidirectional")
    calls = []
    bench.repeated(lambda: calls.append(1), 5)()
    assert len(calls) == 5
    res = bench.interleaved({"x": lambda: None}, repeats=3, inner=10)
    p20, med, p80 = res["x"]
    assert 0 <= p20 <= med <= p80


def test_bidirectional_bench_full_path_rows_compute_what_the_planned_ones_do(monkeypatch):
    """Each ``full path`` dispatch row calls the op its planned twin calls with no plan
    serving it (the twin's calls are served); both give the same output to the bit."""
    import torch
    from vimc.ops.selective_scan import cpu, cpu_plans

    if not cpu.c_kernel_available():
        pytest.skip("needs the C scan kernel")
    bench = importlib.import_module("benchmarks.bidirectional")
    cases = bench.dispatch_cases()
    served = []  # per op call: whether a plan gave the result
    real_run = cpu_plans.PlannedOp.run

    def run(self, args):
        result = real_run(self, args)
        served.append(result is not None)
        return result

    monkeypatch.setattr(cpu_plans.PlannedOp, "run", run)
    with torch.no_grad():
        for name in [k for k in cases if k.endswith(", full path")]:
            served.clear()
            want = cases[name.removesuffix(", full path")]()
            assert served == [True], name
            served.clear()
            got = cases[name]()
            assert served == [False], name
            for g, w in zip(
                torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
            ):
                torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_model_bench_tables_the_unplanned_row():
    bench = importlib.import_module("benchmarks.model")
    row = {
        "batch": 1,
        "threads_used": 2,
        "cpu_level": "best",
        "scan_lanes": 16,
        "ratio": 1.5,
        "vim_median_ms": 30.0,
        "deit_median_ms": 20.0,
        "vim_unplanned_median_ms": 33.0,
        "vim_breakdown_ms": {"scan": 10.0, "matmul": 10.0, "other": 10.0, "total": 30.0},
    }
    row["vim_ms"] = row["deit_ms"] = {"median_ms": 30.0, "p20_ms": 29.0, "p80_ms": 31.0}
    md = "\n".join(bench.deit_markdown([row]))
    assert "| - | 33.0 | 0.909 |" in md  # a row from before the per-round ratios
    assert "page faults" not in md  # a row from before they were counted
    row["round_ratio"] = {"p20": 1.38, "median": 1.45, "p80": 1.52}
    row["minor_faults_per_forward"] = 41.6
    md = "\n".join(bench.deit_markdown([row]))
    assert "| 1.45x (1.38-1.52) | 33.0 | 0.909 |" in md
    assert "(all models' together): 42 at batch 1." in md
    assert "bidirectional" not in md  # a row from before the core form
    row["vim_bidirectional_median_ms"] = 32.0
    row["core_vs_bidirectional_round"] = {"p20": 0.9, "median": 0.95, "p80": 1.0}
    md = "\n".join(bench.deit_markdown([row]))
    assert "32.0 ms at batch 1 (Vim-Ti / it 0.938x, per round 0.950x)." in md


def test_conv_bench_times_the_three_forms_and_the_model():
    """benchmarks/conv.py: one layer's pair through the fused op, the shifted form eager and
    compiled, all agreeing; and the model with either conv form, eager and compiled, the same
    logits."""
    bench = importlib.import_module("benchmarks.conv")
    with torch.no_grad():
        rows = bench.layer_rows(1, rounds=1)
        models = [bench.model_row(1, rounds=1, compiled=c) for c in (False, True)]
    assert [r["form"] for r in rows] == ["fused op (C)", "shifted, eager", "shifted, compiled"]
    assert all(r["median_ms"] > 0 and r["max_abs_diff"] < 1e-4 for r in rows)
    assert [m["mode"] for m in models] == ["eager", "compiled"]
    for m in models:
        assert m["fused_ms"] > 0 and m["shifted_ms"] > 0 and m["max_abs_diff"] < 1e-4


def test_decay_forms_bench_times_every_form_of_the_build(capsys):
    """benchmarks/decay_forms.py: the captured layer call in each decay form the loaded kernel
    has, exp2 the 1.000x row, every form within float32 rounding of it, the default restored."""
    from vimc.ops.selective_scan import cpu

    if not cpu.c_kernel_available():
        pytest.skip(f"C kernel unavailable: {cpu.c_kernel_error()}")
    bench = importlib.import_module("benchmarks.decay_forms")
    forms = cpu.decay_forms(cpu._lib)
    argv = ["--batches", "1", "--rounds", "1", "--no-model", "--no-save"]
    assert bench.main(argv) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| op")]
    assert [r.split("|")[3].strip().removesuffix(" (default)") for r in rows] == forms
    assert "(default)" in rows[0] and " 1.000x " in rows[forms.index("exp2")]
    assert all(float(r.split("|")[6]) < 1e-5 for r in rows)
    assert cpu.decay_forms(cpu._lib) == forms


def test_decay_forms_bench_runs_a_process_per_level(capfd):
    """benchmarks/decay_forms.py --cpu-levels: one child process per level, each naming its
    kernel's level and lane count."""
    from vimc.ops.selective_scan import _cbuild, cpu

    if not cpu.c_kernel_available():
        pytest.skip(f"C kernel unavailable: {cpu.c_kernel_error()}")
    levels = _cbuild.runnable_levels()[:2]
    if not levels:
        pytest.skip(f"no instruction-set level listed for {_cbuild.arch()}")
    bench = importlib.import_module("benchmarks.decay_forms")
    argv = ["--batches", "1", "--rounds", "1", "--no-model", "--no-save", "--cpu-levels", *levels]
    assert bench.main(argv) == 0
    said = [ln for ln in capfd.readouterr().out.splitlines() if ln.startswith("scan kernel: ")]
    assert [ln.split(",")[0].removeprefix("scan kernel: ") for ln in said] == levels


def test_linears_bench_reads_each_models_linears():
    """benchmarks/linears.py times the shapes the two models have: Vim-Ti's x_proj stored and
    padded as the mixer pads it, DeiT-Ti's four block linears with their bias; and one round of
    its timing gives a row per shape with the calls of one forward."""
    import vimc
    from vimc.deit import deit_tiny

    bench = importlib.import_module("benchmarks.linears")
    shapes = bench.gemm_shapes(vimc.create_model("vim_tiny"), deit_tiny())
    got = {(m, name): (K, N, calls, bias) for m, name, K, N, calls, bias in shapes}
    assert got[("Vim-Ti", "in_proj")] == (192, 768, 24, False)
    assert got[("Vim-Ti", "x_proj, 44 columns")] == (384, 44, 48, False)
    assert got[("Vim-Ti", "x_proj, padded to 48")] == (384, 48, 48, False)
    assert got[("DeiT-Ti", "fc2")] == (768, 192, 12, True)
    assert len(shapes) == 8
    with torch.no_grad():
        rows = bench.gemm_rows([("Vim-Ti", "x_proj", 8, 5, 3, False)], batch=1, rounds=1)
    assert [(r["M"], r["calls"]) for r in rows] == [(197, 3)]
    assert rows[0]["per_call_us"] > 0


@pytest.mark.parametrize("op", ["GatedDeltaNet", "LinearAttention"])
def test_contrib_op_runs_the_selective_scan(contrib_bench, op):
    """The mapping ort_contrib.py times (E heads, d_k N, d_v 1, shared query and key) computes
    vimc's scan, output and final state, at Vim-Ti's shape."""
    if op not in contrib_bench.available_contrib_ops():
        pytest.skip(f"this onnxruntime has no com.microsoft.{op}")
    _, _, err = contrib_bench.contrib_session(op, Bt=2, threads=1)
    assert err < ORT_CONTRIB_VS_OP


def test_contrib_bench_compares_vimcs_standard_lowerings(contrib_bench):
    from vimc.export.onnx.names import STANDARD_LOWERINGS

    assert set(contrib_bench.STANDARD) == set(STANDARD_LOWERINGS)
    assert contrib_bench.BASELINE in contrib_bench.STANDARD


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmarks_leave_sys_path_alone(script):
    """Benchmarks import vimc as an installed package and each other through the package:
    no script edits sys.path."""
    tree = ast.parse((ROOT / "benchmarks" / f"{script}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), script


@pytest.mark.slow  # one subprocess per script: importing torch takes seconds on shared cores
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_runs_as_documented(script):
    """``python benchmarks/<name>.py --help`` from the repository root: the imports a script
    run needs resolve (the script's folder is on sys.path, the repository root is not)."""
    if script in ("onnx_scan", "onnx_conv", "ort_contrib", "export"):
        pytest.importorskip("onnxruntime")
    r = subprocess.run(
        [sys.executable, f"benchmarks/{script}.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout


@pytest.fixture
def scan_builds():
    """benchmarks/scan_builds.py, where it can build and load kernels."""
    from vimc.ops.selective_scan import _cbuild, cpu

    try:
        _cbuild.compiler()
    except RuntimeError:
        pytest.skip("needs a C compiler")
    if not cpu.c_kernel_available():
        pytest.skip("needs the C scan kernel")
    return importlib.import_module("benchmarks.scan_builds")


@pytest.mark.slow  # compiles the kernel twice
def test_scan_builds_times_two_builds_of_one_kernel_alike(scan_builds, capsys):
    """Two builds of the same cpu_kernel.c give the same output to the bit, each row says so,
    and a state sweep prints its fit."""
    kernel = str(ROOT / scan_builds.KERNEL)
    usual = scan_builds.cpu._lib
    args = [kernel, kernel, "--batches", "1", "--states", "2", "1", "--rounds", "2", "--no-save"]
    assert scan_builds.main(args) == 0
    assert scan_builds.cpu._lib is usual  # the process's kernel is back
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(f"| {kernel} #")]
    assert len(rows) == 4  # two builds x two state sizes
    assert all(row.split("|")[-2].strip() == "0.00e+00" for row in rows)
    assert out.count("ms per state component") == 2


@pytest.mark.slow  # compiles the kernel
def test_scan_builds_refuses_a_build_whose_argument_struct_differs(scan_builds, tmp_path):
    """A revision with another ScanArgs layout would read the packed words wrongly: refused
    before any call (cpu.bind's check, the one the package's own loader makes)."""
    text = (ROOT / scan_builds.KERNEL).read_text()
    old = "return (int64_t)sizeof(ScanArgs) * 1000 + LANES;"
    assert old in text
    other = tmp_path / "other_struct.c"
    other.write_text(text.replace(old, "return (int64_t)(sizeof(ScanArgs) + 8) * 1000 + LANES;"))
    with pytest.raises(SystemExit, match="disagree on the argument struct"):
        scan_builds.build(str(other), "native", tmp_path, 0)


@pytest.mark.slow  # compiles the kernel
def test_scan_builds_takes_one_march_per_build(scan_builds, capsys):
    """--march with one level per build: each build is compiled for its own (a level no
    compiler knows fails that build), rows are named by level; a count that is neither one
    nor one per build is refused."""
    kernel = str(ROOT / scan_builds.KERNEL)
    common = ["--batches", "1", "--rounds", "2", "--no-save"]
    with pytest.raises(SystemExit, match="failed"):  # the first build: nothing compiled before
        scan_builds.main([kernel, kernel, "--march", "no-such-cpu", "native", *common])
    with pytest.raises(SystemExit):
        scan_builds.main([kernel, kernel, "--march", "native", "native", "native", *common])
    assert "one per build (2)" in capsys.readouterr().err
    level = scan_builds._cbuild.cpu_level()  # what a wheel loads here: native build's lanes
    if level is None:
        return
    assert scan_builds.main([kernel, kernel, "--march", "native", level, *common]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert any(r.startswith(f"| {kernel} (native) |") for r in rows)
    assert any(r.startswith(f"| {kernel} ({level}) |") for r in rows)


def test_scan_bench_times_each_group_round_robin():
    """benchmarks/scan.py on a tiny shape: every implementation of a (direction, mode) timed,
    each with its speedup over the loop as a ratio of medians and per round (the loop's own
    rows at 1)."""
    bench = importlib.import_module("benchmarks.scan")
    rows = bench.bench("cpu", quick=True, shapes=[(1, 8, 5, 2)])
    groups = {(r["direction"], r["mode"]) for r in rows}
    assert groups == {(d, m) for d in ("forward", "reverse") for m in ("fwd", "fwd+bwd")}
    for r in rows:
        assert r["median_ms"] > 0 and r["speedup_vs_loop"] > 0 and r["speedup_per_round"] > 0
        if r["impl"] == "reference loop":
            assert r["speedup_vs_loop"] == r["speedup_per_round"] == 1.0
    impls = {r["impl"] for r in rows}
    assert {"reference loop", "vimc torch chunked"} <= impls
    # the table's header and its rows have the same number of columns
    assert bench.TABLE_HEAD.count("|---") == bench.format_row(rows[0]).count(" | ") + 1
