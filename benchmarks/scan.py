"""Selective-scan speed: vimc's kernels against the per-step PyTorch loop, side by side.

    python benchmarks/scan.py                 # Vim shapes, CPU (and CUDA when present)
    python benchmarks/scan.py --quick         # fewer repetitions
    VIMC_CPU_LEVEL=x86-64-v3 python benchmarks/scan.py --shapes 0   # another kernel variant

Prints a machine header and one row per (shape, direction, mode, implementation): median time
with p20/p80, exp throughput (Gexp/s: Bt*E*L*N exps), memory traffic (GB/s: u, delta, z, B, C
read once, out written once) and the speedup over the reference loop, timed round robin with
it (the ratio of the medians, and the median of the per-round ratios). Also measures the
forward's peak extra memory at the longest shape in a subprocess.
The header names the scan kernel (its instruction-set level and vector width). Results go to
benchmarks/results/scan-<machine>.{json,md}, or scan-<machine>-<level>.* under VIMC_CPU_LEVEL.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch
from vimc.ops import selective_scan, selective_scan_reference
from vimc.ops.selective_scan import cpu

from vimc.machine import header, machine_tag, save_results
from vimc.timing import round_ratios, time_round_robin

SHAPES = [(1, 384, 197, 16), (8, 384, 197, 16), (1, 384, 6085, 16)]
RESULTS = Path(__file__).resolve().parent / "results"


def inputs(Bt, E, L, N, device, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    t = dict(
        u=torch.randn(Bt, E, L, generator=g),
        delta=torch.randn(Bt, E, L, generator=g) * 0.5 - 2,
        A=-torch.exp(torch.log(torch.arange(1, N + 1.0)).repeat(E, 1)),
        B=torch.randn(Bt, N, L, generator=g),
        C=torch.randn(Bt, N, L, generator=g),
        D=torch.ones(E),
        z=torch.randn(Bt, E, L, generator=g),
        delta_bias=torch.randn(E, generator=g) * 0.3,
    )
    return {k: v.to(device).requires_grad_(requires_grad) for k, v in t.items()}


def implementations(device):
    impls = {"reference loop": selective_scan_reference}
    if device == "cpu":
        if cpu.c_kernel_available():
            impls["vimc C kernel"] = selective_scan

        def chunked(*a, **k):
            saved = cpu.c_kernel_available
            cpu.c_kernel_available = lambda: False
            try:
                return selective_scan(*a, **k)
            finally:
                cpu.c_kernel_available = saved

        impls["vimc torch chunked"] = chunked
    else:
        impls["vimc triton"] = selective_scan
    return impls


def bench(device: str, quick: bool, shapes=SHAPES) -> list[dict]:
    """One row per (shape, direction, mode, implementation). The implementations of a (shape,
    direction, mode) are timed round robin, each timed call right after an untimed one of the
    same implementation (warm, as the rows of one implementation timed back to back were), so
    a slow spell of a shared machine falls on all of them alike; ``vs loop`` is the ratio of
    the medians, ``per round`` the median of the ratios within each round (the loop's time over
    the implementation's, the same round)."""
    rows = []
    for Bt, E, L, N in shapes:
        long = L > 1000
        for reverse in (False, True):
            for mode in ("fwd", "fwd+bwd"):
                steps = {}
                for name, fn in implementations(device).items():
                    if name == "vimc torch chunked" and (long or Bt > 1):
                        continue  # the fallback is a correctness path: timed at Vim-Ti's shape only
                    if name == "reference loop" and long and mode == "fwd+bwd":
                        print(
                            f"| ({Bt}, {E}, {L}, {N}) | {mode}: reference loop not run (autograd "
                            f"through {L} Python steps takes minutes per call) |"
                        )
                        continue
                    x = inputs(Bt, E, L, N, device, requires_grad=mode == "fwd+bwd")
                    g = torch.randn(Bt, E, L, device=device)

                    def step(fn=fn, x=x, g=g, reverse=reverse, mode=mode):
                        # "fwd" is inference: grad mode off, for the loop and the kernels alike
                        with torch.set_grad_enabled(mode == "fwd+bwd"):
                            out = fn(**x, delta_softplus=True, reverse=reverse)
                        if mode == "fwd+bwd":
                            out.backward(g)

                    steps[name] = step
                slow_ref = "reference loop" in steps and (long or mode == "fwd+bwd")
                t = time_round_robin(
                    steps, rounds=3 if slow_ref or quick else 15, warmup=1 if long else 2,
                    device=device, rotate=True, settle=1,
                )  # fmt: skip
                loop = t.get("reference loop")
                exps = Bt * E * L * N * (3 if mode == "fwd+bwd" else 1)
                nbytes = 4 * (4 * Bt * E * L + 2 * Bt * N * L)
                for name, tn in t.items():
                    med = tn.median_ms / 1e3
                    rows.append(
                        dict(
                            shape=f"({Bt}, {E}, {L}, {N})",
                            direction="reverse" if reverse else "forward",
                            mode=mode,
                            impl=name,
                            median_ms=tn.median_ms,
                            p20_ms=tn.p20_ms,
                            p80_ms=tn.p80_ms,
                            gexp_s=exps / med / 1e9,
                            gb_s=nbytes / med / 1e9 if mode == "fwd" else None,
                            speedup_vs_loop=loop.median_ms / tn.median_ms if loop else None,
                            speedup_per_round=round_ratios(loop, tn)["median"] if loop else None,
                        )
                    )
                    print(format_row(rows[-1]), flush=True)
    return rows


_MEM_PROBE = r"""
import sys, torch, vimc
from vimc.ops import selective_scan
Bt, E, L, N = map(int, sys.argv[1:5])
def status(key):  # kB fields of /proc/self/status
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def filled(*shape):
    return torch.empty(*shape).normal_()
u, d, z = filled(Bt, E, L), filled(Bt, E, L).mul_(0.5).sub_(2), filled(Bt, E, L)
B, C = filled(Bt, N, L), filled(Bt, N, L)
A = -torch.arange(1, N + 1.0).repeat(E, 1)
small = [t[..., :8].contiguous() for t in (u, d)] + [A] + [t[..., :8].contiguous() for t in (B, C)]
selective_scan(*small, delta_softplus=True)  # builds / loads the kernel outside the measurement
open('/proc/self/clear_refs', 'w').write('5')  # reset the peak-RSS high-water mark (Linux)
base = status('VmRSS:')
out = selective_scan(u, d, A, B, C, None, z, None, True)
print(status('VmHWM:') - base, 4 * (3 * Bt * E * L + 2 * Bt * N * L))
"""


def memory(Bt, E, L, N) -> dict | None:
    """Peak extra resident memory of one CPU forward, measured in a fresh process (Linux: the
    peak-RSS mark is reset right before the call, so only the call's own growth counts)."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEM_PROBE, str(Bt), str(E), str(L), str(N)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print("memory probe failed:", proc.stderr[-500:])
        return None
    extra, inp = map(int, proc.stdout.split()[-2:])
    return dict(
        shape=f"({Bt}, {E}, {L}, {N})",
        peak_extra_mb=extra / 2**20,
        input_mb=inp / 2**20,
        ratio_to_input=extra / inp,
    )


def format_row(r: dict) -> str:
    gb = f"{r['gb_s']:7.2f}" if r["gb_s"] is not None else "      -"
    sp = f"{r['speedup_vs_loop']:8.1f}x" if r["speedup_vs_loop"] else "        -"
    rr = r.get("speedup_per_round")
    pr = f"{rr:8.1f}x" if rr else "        -"
    return (
        f"| {r['shape']:<19} | {r['direction']:<7} | {r['mode']:<7} | {r['impl']:<19} | "
        f"{r['median_ms']:9.3f} | {r['p20_ms']:9.3f} | {r['p80_ms']:9.3f} | {r['gexp_s']:6.3f} | "
        f"{gb} | {sp} | {pr} |"
    )


TABLE_HEAD = (
    "| shape (Bt,E,L,N)    | dir     | mode    | implementation      | median ms |   p20 ms  |"
    "   p80 ms  | Gexp/s |  GB/s   | vs loop   | per round |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions per row")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument(
        "--shapes", type=int, nargs="+", metavar="I", help=f"indices into {SHAPES} (default: all)"
    )
    args = ap.parse_args(argv)
    head = header(args.device)
    level = os.environ.get("VIMC_CPU_LEVEL")  # a chosen kernel variant: its own results file
    if args.device == "cpu" and cpu.c_kernel_available():
        head += f"\nscan kernel: {cpu.kernel_info()['scan kernel']}"
    print(head)
    print(TABLE_HEAD)
    shapes = [SHAPES[i] for i in args.shapes] if args.shapes else SHAPES
    rows = bench(args.device, args.quick, shapes)
    mem = memory(*SHAPES[-1]) if args.device == "cpu" and SHAPES[-1] in shapes else None
    if mem:
        print(
            f"\npeak extra memory of one forward at {mem['shape']}: {mem['peak_extra_mb']:.1f} MiB "
            f"= {mem['ratio_to_input']:.2f}x the inputs ({mem['input_mb']:.1f} MiB)"
        )
    if not args.no_save:
        tag = machine_tag(args.device) + (f"-{level}" if level else "")
        md = [f"# Selective scan, {tag}", "", "```", head, "```", "", TABLE_HEAD]
        md += [format_row(r) for r in rows]
        if mem:
            md += [
                "",
                f"Peak extra memory of one forward at {mem['shape']}: "
                f"{mem['peak_extra_mb']:.1f} MiB = {mem['ratio_to_input']:.2f}x the inputs.",
            ]
        payload = dict(header=head, rows=rows, memory=mem)
        save_results(RESULTS / f"scan-{tag}", payload, "\n".join(md))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
