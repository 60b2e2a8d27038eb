"""``vimc bench``: Vim-Ti against DeiT-Ti across resolutions, the paper's Figure 1 rerun on the
current device. Per (model, resolution): images/s, latency (median, p20, p80) and peak memory.
This module measures; ``vimc.bench_report`` holds the result record and writes the table,
bench.json and the two-panel PNG; ``vimc.deit`` is the DeiT-Ti baseline.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the runs, above what
was allocated before the input was made; on CPU the peak resident set size (Linux VmHWM, reset
through /proc/self/clear_refs) above the RSS before the input was made, after freeing cached
heap memory (malloc_trim). So both count the input, activations and workspace, not weights.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from vimc.bench_report import (  # noqa: F401  (re-exported: vimc.bench's API before the split)
    BenchResult,
    comparisons,
    environment,
    format_table,
    plot,
    write_json,
)
from vimc.cliargs import Formatter, add_threads_arg, positive_float, positive_int, set_threads
from vimc.deit import DeiT, deit_tiny  # noqa: F401  (re-exported, as above)
from vimc.model import create_model
from vimc.timing import time_fn

PAPER_RESOLUTIONS = (512, 640, 738, 1024, 1248)
CUDA_RESOLUTIONS = (224, 512, 640, 738, 1024, 1248)
CPU_RESOLUTIONS = (224, 512, 768, 1248)
BENCH_MODELS = ("vim_tiny", "deit_tiny")


def build_bench_model(name: str, img_size: int, attn_impl: str = "explicit") -> nn.Module:
    """``deit_tiny`` or a registered Vim, randomly initialized: speed does not depend on the
    weights."""
    if name == "deit_tiny":
        return deit_tiny(img_size, attn_impl=attn_impl)
    return create_model(name, img_size=img_size)


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_cpu_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above a baseline, in bytes: CUDA allocator peak, or CPU RSS high-water mark
    (Linux). ``supported`` is False where neither can be read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.supported = True

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _release_cpu_memory()
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
                self.base = _proc_status_kb("VmRSS")
            except OSError:
                self.base = None
            self.supported = self.base is not None
        return self

    def __exit__(self, *exc):
        return False

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if not self.supported:
            return None
        hwm = _proc_status_kb("VmHWM")
        return None if hwm is None else max(0, hwm - self.base) * 1024


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


def measure(
    model: nn.Module,
    resolution: int,
    batch: int,
    device: torch.device,
    max_seconds: float,
    *,
    dtype: torch.dtype = torch.float32,
    max_iters: int = 50,
    warmup: int = 1,
) -> dict:
    """Time ``model`` on a random (batch, 3, res, res) input: ``warmup`` untimed forwards, then
    timed ones until the next is predicted to end past ``max_seconds`` (warm-up included) or
    ``max_iters`` are done; at least one."""

    def autocast():
        return (
            torch.autocast(device.type, dtype=dtype)
            if dtype != torch.float32
            else torch.autocast(device.type, enabled=False)
        )

    # warm-up outside the memory window: one-time costs (lazy kernel loading, compilation,
    # thread pools) are neither timed nor counted as the model's memory
    t_begin = time.perf_counter()
    with torch.inference_mode(), autocast():
        forward = partial(model, torch.randn(batch, 3, resolution, resolution, device=device))
        warm = time_fn(forward, warmup=0, repeats=max(1, warmup), device=device)
        del forward  # frees the input
    with PeakMemory(device) as mem, torch.inference_mode(), autocast():
        forward = partial(model, torch.randn(batch, 3, resolution, resolution, device=device))
        # one timed forward estimates the next; time_fn then stops once the time spent plus
        # that estimate reaches the budget, so a point does not overrun it by a whole forward
        timing = time_fn(forward, warmup=0, repeats=1, device=device)
        left = max_seconds - (time.perf_counter() - t_begin) - timing.times_s[0]
        if left > 0 and max_iters > 1:
            more = time_fn(forward, warmup=0, repeats=max_iters - 1, budget_s=left, device=device)
            timing.times_s += more.times_s
        peak = mem.peak_bytes()
        del forward
    return {
        "iters": timing.n,
        "latency_ms": timing.median_ms,
        "latency_p20_ms": timing.p20_ms,
        "latency_p80_ms": timing.p80_ms,
        "images_per_s": timing.per_second(batch),
        "peak_mem_mb": None if peak is None else peak / 2**20,
        "first_run_s": warm.times_s[0],
    }


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------


def _tokens(name: str, res: int) -> int:
    g = (res - 16) // 16 + 1
    return g * g + 1


def run_bench(
    models=BENCH_MODELS,
    resolutions=None,
    *,
    batch: int = 1,
    max_seconds: float = 10.0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    compile: bool = False,
    attn_impl: str = "explicit",
    skip_factor: float = 3.0,
    log=print,
) -> list[BenchResult]:
    """Measure every (model, resolution). A point whose forward is predicted (from the previous
    resolution: linear in tokens for Vim, quadratic for DeiT's attention) to take longer than
    ``skip_factor * max_seconds`` is skipped and reported as such."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolutions = sorted(
        resolutions or (CUDA_RESOLUTIONS if device.type == "cuda" else CPU_RESOLUTIONS)
    )
    results: list[BenchResult] = []
    for name in models:
        prev: tuple[int, float] | None = None
        for res in resolutions:
            r = BenchResult(name, res, _tokens(name, res), batch)
            results.append(r)
            if prev is not None:
                power = 2.0 if name.startswith("deit") else 1.0
                est = prev[1] * (r.tokens / prev[0]) ** power
                if est > skip_factor * max_seconds:
                    r.status, r.note = (
                        "skipped",
                        (f"estimated {est:.0f} s per forward > {skip_factor:g} x --max-seconds"),
                    )
                    log(f"  {name} @ {res}: skipped ({r.note})")
                    continue
            try:
                model = build_bench_model(name, res, attn_impl).to(device).eval()
                if compile:
                    model = torch.compile(model)
                m = measure(model, res, batch, device, max_seconds, dtype=dtype)
                for k, v in m.items():
                    setattr(r, k, v)
                prev = (r.tokens, r.latency_ms / 1e3)
                mem = "n/a" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f} MB"
                log(
                    f"  {name} @ {res}: {r.images_per_s:.2f} img/s, {r.latency_ms:.1f} ms, "
                    f"peak {mem} ({r.iters} runs)"
                )
            except torch.OutOfMemoryError as exc:  # pragma: no cover (GPU only)
                r.status, r.note = "oom", str(exc).splitlines()[0]
                log(f"  {name} @ {res}: out of memory")
                prev = (r.tokens, float("inf"))
            finally:
                model = None
                _release_cpu_memory()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return results


__all__ = [
    "DeiT",
    "deit_tiny",
    "BenchResult",
    "run_bench",
    "measure",
    "format_table",
    "comparisons",
    "write_json",
    "plot",
    "environment",
    "CPU_RESOLUTIONS",
    "CUDA_RESOLUTIONS",
    "PAPER_RESOLUTIONS",
]


# ---------------------------------------------------------------------------------------------
# the `vimc bench` command (vimc/cli.py adds it; a ValueError is a usage error, exit 2)
# ---------------------------------------------------------------------------------------------


def add_bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        formatter_class=Formatter,
        help="Vim-Ti vs DeiT-Ti speed and memory across resolutions",
        description="Vim-Ti vs DeiT-Ti across resolutions on this device (the paper's Figure "
        "1): images/s, latency, peak memory, as a table, JSON and a PNG plot. Models are "
        "randomly initialized (speed does not depend on weights). CPU default resolutions are "
        "224 512 768 1248; CUDA: 224 512 640 738 1024 1248.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(("vim_tiny", "deit_tiny")),
        help="models to compare (deit_tiny or any registered Vim)",
    )
    p.add_argument(
        "--resolutions",
        nargs="+",
        type=positive_int,
        default=None,
        help="square input sizes, multiples of 16 (default: per device)",
    )
    p.add_argument("--batch", type=positive_int, default=1, help="batch size")
    p.add_argument(
        "--max-seconds",
        type=positive_float,
        default=10.0,
        help="time budget per (model, resolution); points predicted to need more than "
        "3x this per forward are skipped",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="autocast dtype",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both models first")
    p.add_argument(
        "--deit-attn",
        choices=("explicit", "sdpa"),
        default="explicit",
        help="DeiT attention: materialized softmax(QK^T)V as in the paper's baseline, "
        "or torch's fused SDPA",
    )
    p.add_argument(
        "--out", default="bench_results", help="folder for bench.json, bench.md, bench.png"
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    add_threads_arg(p)
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    import torch

    from vimc import bench_report

    set_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available")
    dtype = getattr(torch, args.dtype)  # one of the --dtype choices
    resolutions = args.resolutions or (
        CUDA_RESOLUTIONS if device.type == "cuda" else CPU_RESOLUTIONS
    )
    bad = [r for r in resolutions if r < 16 or r % 16]
    if bad:
        raise ValueError(f"resolutions must be multiples of 16 (patch 16), got {bad}")
    env = bench_report.environment(device)
    settings = {
        "models": args.models,
        "resolutions": list(resolutions),
        "batch": args.batch,
        "max_seconds": args.max_seconds,
        "dtype": args.dtype,
        "compile": args.compile,
        "deit_attention": args.deit_attn,
    }
    print(
        f"vimc bench: batch {args.batch}, {args.dtype}, "
        f"{'torch.compile' if args.compile else 'eager'}, DeiT attention {args.deit_attn}, "
        f"<= {args.max_seconds:g} s per point\n{env['header']}"
    )
    results = run_bench(
        args.models,
        resolutions,
        batch=args.batch,
        max_seconds=args.max_seconds,
        device=device,
        dtype=dtype,
        compile=args.compile,
        attn_impl=args.deit_attn,
    )
    print()
    print(bench_report.format_table(results))
    for line in bench_report.comparisons(results):
        print(line)
    paths, note = bench_report.write_report(
        results, args.out, env, settings, with_plot=not args.no_plot
    )
    print(f"\nwrote {', '.join(map(str, paths))}" + (f" ({note})" if note else ""))
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1
