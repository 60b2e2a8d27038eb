"""Whole-model speed on CPU: Vim-Ti at 224, eager and torch.compile, against an eager model that
uses the python-loop reference scan.

    python benchmarks/model.py                # batch 1 and 8, float32
    python benchmarks/model.py --quick        # fewer repetitions
    python benchmarks/model.py --batches 1 --modes eager compiled
    python benchmarks/model.py --modes --no-reference --cpu-levels x86-64-v4 x86-64-v3

Every configuration runs in its own subprocess, so that its peak memory is its own: memory is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that process (the whole process: python,
torch, weights, and for compiled rows the compile), plus the growth of that high-water mark
over the timed runs measured from the RSS right before the first forward ("run delta").
Compiled rows are measured twice: a cold process (empty Inductor caches: the compile time a
first user sees) and a warm one (the FX graph cache filled: what a later process pays), whose
latency and memory are the ones reported. Latency: median and p20/p80 of single forwards
under ``torch.no_grad()``, threads at torch's default.

Vim-Ti against DeiT-Ti (the transformer of its size: timm's ``deit_tiny_patch16_224``
architecture, vimc/deit.py, with SDPA attention): both compiled, in ONE process per batch,
``--threads`` threads (2 by default), timed round robin (each round runs both, the starting
model rotating) so that a busy machine slows both alike. Reported: Vim/DeiT latency ratio at
batch 1 and time-per-image ratio at batch 8 (the ratio of the two medians, which the targets
are judged on, and beside it the median and p20-p80 of the ratios within each round: how far
the verdict moves with the machine's spells), and where compiled Vim-Ti's time goes: a
torch.profiler trace of the compiled model, each top-level op put in one bucket (scan: the
``vimc::selective_scan*`` ops, which apply each direction's dt_proj too, or the
``vimc::mixer_core_fwd`` op, which runs the conv, x_proj and dt_proj too; matmul: aten
mm/addmm/bmm/linear and oneDNN linears), "other"
being the rest of the profiled wall time (Inductor's fused elementwise kernels, the conv,
layer norms, Python and dispatch).

Every worker keeps the memory it frees for its next forward (``vimc.heap``, glibc's trim and
mmap thresholds raised; ``--heap default`` leaves them), both models alike; the tables say
which, and the vs-DeiT rows count the minor page faults per forward over their timed rounds.
Results: benchmarks/results/model-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from vimc.ops.selective_scan import cpu as cpu_scan
from vimc.ops.selective_scan import cpu_plans

import vimc
from vimc.cliargs import positive_int
from vimc.deit import deit_tiny
from vimc.heap import heap_policy, keep_freed_memory
from vimc.machine import header, machine_tag, save_results
from vimc.timing import round_ratios, time_fn, time_round_robin

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MS = 43.0  # the target for compiled Vim-Ti, batch 1, on this CPU


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _set_heap(cfg: dict) -> None:
    if cfg.get("heap", "kept") == "kept":
        keep_freed_memory()


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def worker(cfg: dict) -> dict:
    """One configuration, in this process: build, (compile), warm up, time."""
    _set_heap(cfg)
    torch.manual_seed(0)
    model = vimc.create_model(cfg["model"], scan_impl=cfg["scan"]).eval()
    dtype = getattr(torch, cfg["dtype"])
    model = model.to(dtype)
    x = torch.randn(cfg["batch"], 3, 224, 224, dtype=dtype)
    compiled = cfg["mode"] == "compiled"
    with torch.no_grad():
        rss0 = _rss_kib()
        fn = model
        if compiled:
            if cfg.get("freezing"):
                torch._inductor.config.freezing = True
            fn = torch.compile(model, fullgraph=True)
        # a compiled model compiles in its first call: one more warm-up call, timed as compile_s
        t = time_fn(
            lambda: fn(x), warmup=cfg["warmup"] + (1 if compiled else 0), repeats=cfg["reps"]
        )
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        **cfg,
        "median_ms": t.median_ms,
        "p20_ms": t.p20_ms,
        "p80_ms": t.p80_ms,
        "images_per_s": t.per_second(cfg["batch"]),
        "compile_s": t.first_s if compiled else None,
        "peak_rss_mib": maxrss / 1024,
        "run_delta_mib": max(0, maxrss - rss0) / 1024,
        "threads": torch.get_num_threads(),
        "heap": heap_policy(),
    }


# Ops counted as matmul in the breakdown; the scan is every op whose name has "selective_scan".
MATMUL_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::linear",
    "aten::matmul",
    "aten::_mkl_linear",
    "mkldnn::_linear_pointwise",
    "onednn::qlinear_pointwise",
}


def _bucket(name: str) -> str | None:
    if "selective_scan" in name or "mixer_core" in name:
        return "scan"
    if name in MATMUL_OPS:
        return "matmul"
    return None


def breakdown(fn, calls: int) -> dict:
    """Profile ``calls`` forwards of ``fn``: milliseconds per forward in scan / matmul / other.
    Only the outermost op of a bucket counts (aten::linear's inner addmm is not counted twice)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        wall_ms = (time.perf_counter() - t0) * 1e3
    ms = {"scan": 0.0, "matmul": 0.0}
    for ev in prof.events():
        b = _bucket(ev.name)
        if b is None:
            continue
        parent, nested = ev.cpu_parent, False
        while parent is not None:
            if _bucket(parent.name) is not None:
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            ms[b] += ev.cpu_time_total / 1e3  # microseconds -> ms
    out = {k: v / calls for k, v in ms.items()}
    out["total"] = wall_ms / calls
    out["other"] = max(0.0, out["total"] - out["scan"] - out["matmul"])
    return out


def worker_vs_deit(cfg: dict) -> dict:
    """Vim-Ti and DeiT-Ti compiled in this process, timed round robin, then Vim-Ti profiled.
    A third row runs the same compiled Vim-Ti with every vimc op call on its full path (checks,
    and packing for the scan ops, per call; ``cpu_plans.bypassed()``): what the plans and
    checked layouts save. A fourth,
    Vim-Ti with ``scan_form="bidirectional"`` (its conv, x_proj and scan as separate ops): what
    the default "core" form's one call per layer saves."""
    _set_heap(cfg)
    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    x = torch.randn(cfg["batch"], 3, 224, 224)
    vim = vimc.create_model("vim_tiny").eval()
    deit = deit_tiny(attn_impl="sdpa").eval()
    vim_c, deit_c = torch.compile(vim, fullgraph=True), torch.compile(deit, fullgraph=True)
    composed = copy.deepcopy(vim)
    for layer in composed.layers:
        layer.mixer.scan_form = "bidirectional"
    composed_c = torch.compile(composed, fullgraph=True)
    with torch.no_grad():

        def vim_unplanned():
            with cpu_plans.bypassed():
                return vim_c(x)

        fns = {"vim_tiny": lambda: vim_c(x), "deit_tiny": lambda: deit_c(x)}
        fns["vim_tiny_unplanned"] = vim_unplanned
        fns["vim_tiny_bidirectional"] = lambda: composed_c(x)
        for fn in fns.values():  # the first call compiles: its page faults are not a forward's
            fn()
        faults = _minor_faults()
        # one more warm-up call each: it runs what later calls run
        t = time_round_robin(fns, rounds=cfg["rounds"], warmup=1, rotate=True)
        faults = (_minor_faults() - faults) / (len(fns) * (cfg["rounds"] + 1))
        prof = breakdown(fns["vim_tiny"], cfg["profile_calls"])
    ratio = t["vim_tiny"].median_ms / t["deit_tiny"].median_ms
    return {
        **cfg,
        "vim_ms": t["vim_tiny"].summary(),
        "deit_ms": t["deit_tiny"].summary(),
        "vim_median_ms": t["vim_tiny"].median_ms,
        "deit_median_ms": t["deit_tiny"].median_ms,
        "vim_unplanned_median_ms": t["vim_tiny_unplanned"].median_ms,
        "vim_bidirectional_median_ms": t["vim_tiny_bidirectional"].median_ms,
        "core_vs_bidirectional_round": round_ratios(t["vim_tiny"], t["vim_tiny_bidirectional"]),
        "ratio": ratio,
        "round_ratio": round_ratios(t["vim_tiny"], t["deit_tiny"]),
        "vim_breakdown_ms": prof,
        "threads_used": torch.get_num_threads(),
        "heap": heap_policy(),
        "minor_faults_per_forward": faults,
        "scan_kernel": cpu_scan.kernel_info()["scan kernel"],
        "scan_lanes": cpu_scan.LANES if cpu_scan.c_kernel_available() else None,
    }


def run_config(cfg: dict, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"config {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# the targets for Vim-Ti / DeiT-Ti, both compiled, 2 threads, 224 px, by batch
DEIT_TARGETS = {1: 1.6, 8: 1.4}


def _kernel_label(r: dict) -> str:
    """The scan kernel a vs-DeiT row ran: how its level was chosen and its vector width."""
    lanes = r.get("scan_lanes")
    return f"{r['cpu_level']}, {lanes} lanes" if lanes else "torch fallback"


def _round_ratio(r: dict) -> str:
    """The median of the per-round Vim/DeiT ratios and their p20-p80, or - where a row (an
    older results file) has none."""
    q = r.get("round_ratio")
    return f"{q['median']:.2f}x ({q['p20']:.2f}-{q['p80']:.2f})" if q else "-"


def deit_markdown(vs_deit: list[dict]) -> list[str]:
    if not vs_deit:
        return []
    md = [
        "",
        "## Vim-Ti vs DeiT-Ti (both compiled, SDPA attention, 224 px, one process, round robin)",
        "",
        "| scan kernel | batch | threads | Vim-Ti ms (p20-p80) | DeiT-Ti ms (p20-p80) | "
        "Vim-Ti ms/img | DeiT-Ti ms/img | Vim / DeiT | target | Vim / DeiT per round (p20-p80) | "
        "Vim-Ti unplanned ms | Vim-Ti vs unplanned |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in vs_deit:
        v, d, b = r["vim_ms"], r["deit_ms"], r["batch"]
        target = DEIT_TARGETS.get(b)
        verdict = (
            f"<= {target}x ({'met' if r['ratio'] <= target else 'not met'})" if target else "-"
        )
        md.append(
            f"| {_kernel_label(r)} | {b} | {r['threads_used']} | {v['median_ms']:.1f} "
            f"({v['p20_ms']:.1f}-"
            f"{v['p80_ms']:.1f}) | {d['median_ms']:.1f} ({d['p20_ms']:.1f}-{d['p80_ms']:.1f}) | "
            f"{v['median_ms'] / b:.1f} | {d['median_ms'] / b:.1f} | {r['ratio']:.2f}x | {verdict} |"
            f" {_round_ratio(r)} | {r['vim_unplanned_median_ms']:.1f} | "
            f"{r['vim_median_ms'] / r['vim_unplanned_median_ms']:.3f} |"
        )
    if all("vim_bidirectional_median_ms" in r for r in vs_deit):
        rows = [
            f"{r['vim_bidirectional_median_ms']:.1f} ms at batch {r['batch']} (Vim-Ti / it "
            f"{r['vim_median_ms'] / r['vim_bidirectional_median_ms']:.3f}x, per round "
            f"{r['core_vs_bidirectional_round']['median']:.3f}x)"
            for r in vs_deit
        ]
        md += [
            "",
            'Vim-Ti with `scan_form="bidirectional"` (conv, x_proj and scan as separate ops per '
            "layer) in the same round robin: " + "; ".join(rows) + ".",
        ]
    if all("minor_faults_per_forward" in r for r in vs_deit):
        faults = ", ".join(
            f"{r['minor_faults_per_forward']:.0f} at batch {r['batch']}" for r in vs_deit
        )
        md += [
            "",
            "Minor page faults per forward over the timed rounds (all models' together): "
            f"{faults}.",
        ]
    md += [
        "",
        "Where compiled Vim-Ti's time goes (torch.profiler over the compiled model, ms per "
        "forward; the profiler's own overhead is in the total; the scan ops apply dt_proj, and "
        "the mixer core op, where it runs, the conv and x_proj too):",
        "",
        "| scan kernel | batch | scan | matmul | other | total (profiled) |",
        "|---|---|---|---|---|---|",
    ]
    for r in vs_deit:
        p = r["vim_breakdown_ms"]
        md.append(
            f"| {_kernel_label(r)} | {r['batch']} | "
            + " | ".join(
                f"{p[k]:.1f} ({100 * p[k] / p['total']:.0f}%)" for k in ("scan", "matmul", "other")
            )
            + f" | {p['total']:.1f} |"
        )
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument(
        "--modes",
        nargs="*",
        default=["eager", "compiled", "compiled-freezing"],
        choices=["eager", "compiled", "compiled-freezing"],
    )
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the eager reference-scan baseline (slow: a Python loop over every scan step)",
    )
    ap.add_argument(
        "--no-deit", action="store_true", help="skip the side-by-side run against DeiT-Ti"
    )
    ap.add_argument(
        "--threads",
        type=positive_int,
        default=2,
        help="torch threads of the Vim-Ti vs DeiT-Ti run (default 2)",
    )
    ap.add_argument(
        "--cpu-levels",
        nargs="+",
        metavar="LEVEL",
        help="run the Vim-Ti vs DeiT-Ti rows once per scan-kernel instruction-set level "
        "(VIMC_CPU_LEVEL, e.g. x86-64-v4 x86-64-v3; default: the best this CPU runs)",
    )
    ap.add_argument(
        "--heap",
        choices=["kept", "default"],
        default="kept",
        help="kept: every worker keeps freed memory for its next forward (vimc.heap); "
        "default: glibc's own thresholds",
    )
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.worker:
        cfg = json.loads(args.worker)
        print(json.dumps(worker_vs_deit(cfg) if cfg.get("kind") == "vs_deit" else worker(cfg)))
        return

    print(header())
    reps = {1: 10 if args.quick else 30, 8: 4 if args.quick else 10}
    rows = []
    cache = tempfile.mkdtemp(prefix="vimc-bench-inductor-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}  # cold for the first compile
    for batch in args.batches:
        base = {
            "model": "vim_tiny",
            "batch": batch,
            "dtype": args.dtype,
            "reps": reps.get(batch, 5),
            "warmup": 2,
            "heap": args.heap,
        }
        ref = None
        if not args.no_reference:
            ref = run_config({**base, "mode": "eager", "scan": "reference", "reps": 3, "warmup": 1})
            ref["label"] = "eager, reference scan"
            rows.append(ref)
        for mode in args.modes:
            cfg = {
                **base,
                "mode": "compiled" if mode.startswith("compiled") else "eager",
                "scan": "fast",
                "freezing": mode == "compiled-freezing",
            }
            if cfg["mode"] == "compiled":
                cold = run_config(cfg, env)
                row = run_config(cfg, env)  # warm FX graph cache
                row["compile_cold_s"], row["compile_warm_s"] = cold["compile_s"], row["compile_s"]
            else:
                row = run_config(cfg, env)
            row["label"] = mode
            row["speedup_vs_reference"] = (ref["median_ms"] / row["median_ms"]) if ref else None
            rows.append(row)
            print(f"  batch {batch} {mode}: {row['median_ms']:.1f} ms", flush=True)
    vs_deit = []
    for level in [] if args.no_deit else args.cpu_levels or [None]:
        for batch in args.batches:
            cfg = {
                "kind": "vs_deit",
                "batch": batch,
                "threads": args.threads,
                "rounds": (10 if args.quick else 30) if batch == 1 else (4 if args.quick else 20),
                "profile_calls": 3 if args.quick else 10,
                "cpu_level": level or "best",
                "heap": args.heap,
            }
            r = run_config(cfg, {**env, "VIMC_CPU_LEVEL": level} if level else env)
            vs_deit.append(r)
            print(
                f"  batch {batch} ({r['scan_kernel'][:40]}) Vim-Ti {r['vim_median_ms']:.1f} ms, "
                f"DeiT-Ti {r['deit_median_ms']:.1f} ms: {r['ratio']:.2f}x (Vim-Ti unplanned "
                f"{r['vim_unplanned_median_ms']:.1f} ms)",
                flush=True,
            )

    heaps = sorted({r["heap"] for r in rows + vs_deit})
    md = [
        "# Vim-Ti whole-model CPU benchmark\n",
        header(),
        "",
        f"Heap of every worker: {'; '.join(heaps)} (`vimc.heap`).",
        "",
        "Memory: getrusage ru_maxrss of a fresh subprocess per row (whole process, incl. "
        "weights and, for compiled rows, loading the compiled graph from a warm cache); "
        "run delta: growth of the high-water mark over the RSS right before the first "
        "forward. Compile: cold = empty Inductor cache, warm = FX graph cache filled.",
        "",
        "| batch | mode | median ms | p20 | p80 | img/s | compile s (cold / warm) | "
        "peak RSS MiB | run delta MiB | speedup vs eager reference scan |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        comp = (
            f"{r['compile_cold_s']:.1f} / {r['compile_warm_s']:.1f}"
            if r.get("compile_cold_s") is not None
            else "-"
        )
        sp = f"{r['speedup_vs_reference']:.1f}x" if r.get("speedup_vs_reference") else "-"
        md.append(
            f"| {r['batch']} | {r['label']} | {r['median_ms']:.1f} | {r['p20_ms']:.1f} | "
            f"{r['p80_ms']:.1f} | {r['images_per_s']:.1f} | {comp} | "
            f"{r['peak_rss_mib']:.0f} | {r['run_delta_mib']:.0f} | {sp} |"
        )
    b1 = [r for r in rows if r["batch"] == 1 and r["mode"] == "compiled"]
    if b1:
        best = min(r["median_ms"] for r in b1)
        md += [
            "",
            f"Target (issue): compiled batch 1 <= {TARGET_MS:.0f} ms; measured best "
            f"{best:.1f} ms ({'met' if best <= TARGET_MS else 'not met'}).",
        ]
    md += deit_markdown(vs_deit)
    try:
        load = os.getloadavg()
        md += [
            "",
            f"Load average at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
            f"(a shared machine: other processes inflate the numbers).",
        ]
    except OSError:
        pass
    shutil.rmtree(cache, ignore_errors=True)
    text = "\n".join(md) + "\n"
    print(text)
    if not args.no_save:
        payload = {"header": header(), "rows": rows, "vs_deit": vs_deit}
        save_results(RESULTS / f"model-{machine_tag()}", payload, text)


if __name__ == "__main__":
    main()
