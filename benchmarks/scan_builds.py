"""Builds of the CPU scan kernel side by side in one process, one Vim-Ti layer's forward pair.

    python benchmarks/scan_builds.py HEAD~1 HEAD             # cpu_kernel.c at two revisions
    python benchmarks/scan_builds.py HEAD /tmp/cpu_kernel.c  # or a revision and a file
    python benchmarks/scan_builds.py HEAD --states 16 8 1    # one build, state sizes swept
    python benchmarks/scan_builds.py HEAD HEAD --march native x86-64-v4  # one -march each

A kernel change worth a few percent of the model is lost in a shared machine's noise between
two runs; in one process, with the builds taking turns call by call, it is not. Each build is
cpu_kernel.c at a git revision or a path, compiled with the kernel's own flags for this CPU
(``--march``, default native, with OpenMP; one level for every build or one per build, so the
level a wheel carries can be set against this CPU's own build), and swapped in under the op
that compiled Vim-Ti calls (``selective_scan_bidirectional`` with each direction's dt_proj
applied in the kernel), on the token-major views a mixer passes (a randomly initialized Vim-Ti
layer's real in_proj, conv and x_proj outputs). Prints, per build, batch and state size: the
best and median call time, the median against the first build's, and the largest difference of
its output from the first build's. With several ``--states``, also a straight-line fit of time
against N: the time per state component and the part of a call that does not grow with N
(dt_proj, softplus, gate, staging, dispatch). Results:
benchmarks/results/scan_builds-<machine>-<march>.{json,md}, with the levels joined by -vs-
when they differ (the last comparison run there; its command line is in the file).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from vimc.ops.selective_scan import _cbuild, cpu

import vimc
from vimc.cliargs import positive_int
from vimc.layers import BiMambaMixer, mixer_forms
from vimc.machine import header, machine_tag, save_results
from vimc.timing import time_round_robin

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KERNEL = "ops/selective_scan/cpu_kernel.c"
DIRECTION_ARGS = (
    7  # per direction in BiMambaMixer._scan's args: u, dt_proj's input, A, B, C, D, bias
)


def kernel_source(spec: str) -> str:
    """cpu_kernel.c's text: ``spec`` is a file, or else a git revision of this repository."""
    path = Path(spec)
    if path.is_file():
        return path.read_text()
    proc = subprocess.run(
        ["git", "show", f"{spec}:{KERNEL}"], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"build {spec!r}: neither a file nor a git revision ({proc.stderr.strip()})"
        )
    return proc.stdout


def resolved(specs: list[str]) -> list[str]:
    """A line per git revision among ``specs``: the commit it named when the run was made."""
    lines = []
    for spec in dict.fromkeys(specs):
        if not Path(spec).is_file():
            proc = subprocess.run(["git", "rev-parse", "--short", spec], cwd=ROOT,
                                  capture_output=True, text=True)  # fmt: skip
            lines.append(f"- `{spec}`: commit {proc.stdout.strip() or 'unknown'}")
    return lines


def build(spec: str, march: str, workdir: Path, i: int) -> ctypes.CDLL:
    src, so = workdir / f"kernel{i}.c", workdir / f"kernel{i}.so"
    src.write_text(kernel_source(spec))
    cmd = [_cbuild.compiler(), *_cbuild.FLAGS, f"-march={march}", "-fopenmp", str(src)]
    proc = subprocess.run([*cmd, "-o", str(so), "-lm"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"build {spec!r} failed:\n{proc.stderr[-3000:]}")
    lib = ctypes.CDLL(str(so))
    try:
        lanes = cpu.bind(lib)
    except RuntimeError as exc:
        raise SystemExit(f"build {spec!r}: {exc}") from None
    if lanes != cpu.LANES:
        raise SystemExit(
            f"build {spec!r} has {lanes} lanes, the process's kernel {cpu.LANES}: "
            "pick --march to match it (or VIMC_CPU_LEVEL for the process)"
        )
    return lib


@torch.inference_mode()
def layer_call(mixer: BiMambaMixer, batch: int, states: int, g: torch.Generator):
    """The scan call of one forward of ``mixer`` on random hidden states, as its forward makes
    it (``_scan`` on the token-major in_proj, conv and x_proj outputs), with the first
    ``states`` state components kept -> a function that makes that call again."""
    seen = {}

    def capture(args, dt_weights, z):
        seen.update(args=args, dt_weights=dt_weights, z=z)
        return z  # (B, L, E), what out_proj takes

    mixer._scan = capture  # an instance attribute: shadows the method for this one forward
    try:
        with mixer_forms(mixer, scan_form="bidirectional"):  # "core" calls no _scan
            mixer(torch.randn(batch, 197, mixer.d_model, generator=g))
    finally:
        del mixer._scan
    args = list(seen["args"])
    for d in (0, DIRECTION_ARGS):  # A (E, N); B and C (B, L, N)
        args[d + 2] = args[d + 2][:, :states]
        args[d + 3], args[d + 4] = args[d + 3][..., :states], args[d + 4][..., :states]
    return functools.partial(BiMambaMixer._scan, mixer, args, seen["dt_weights"], seen["z"])


def time_builds(names: list[str], libs: list, call, rounds: int) -> list:
    """One row per build: (name, best ms, median ms, max abs difference from the first's out)."""

    def with_lib(lib):
        cpu._lib = lib
        return call()

    with torch.inference_mode():
        outs = [with_lib(lib) for lib in libs]
        fns = {name: functools.partial(with_lib, lib) for name, lib in zip(names, libs)}
        t = time_round_robin(fns, rounds=rounds, warmup=3, rotate=True)
    return [
        (name, min(t[name].times_s) * 1e3, t[name].median_ms, (out - outs[0]).abs().max().item())
        for name, out in zip(names, outs)
    ]


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ms = slope * N + fixed over (N, ms) points -> (slope, fixed)."""
    n, ms = torch.tensor(points, dtype=torch.float64).unbind(1)
    slope = ((n - n.mean()) * (ms - ms.mean())).sum() / ((n - n.mean()) ** 2).sum()
    return float(slope), float(ms.mean() - slope * n.mean())


def compare(names: list[str], libs: list, mixer, args, g) -> tuple[list[dict], list[str]]:
    """Every build at every batch and state size -> (rows, the state-sweep fit lines)."""
    rows, fits = [], []
    for batch in args.batches:
        points = {name: [] for name in names}
        for states in args.states:
            timed = time_builds(names, libs, layer_call(mixer, batch, states, g), args.rounds)
            for name, best, median, diff in timed:
                vs = median / timed[0][2]
                row = {"build": name, "batch": batch, "N": states, "best_ms": best}
                rows.append({**row, "median_ms": median, "vs_first": vs, "max_abs_diff": diff})
                points[name].append((states, median))
        for name, pts in points.items() if len(args.states) > 1 else ():
            slope, fixed = fit_line(pts)
            top_n, top_ms = max(pts)
            fits.append(
                f"{name}, batch {batch}: {slope:.4f} ms per state component, {fixed:.3f} ms "
                f"that does not grow with N ({fixed / top_ms:.0%} of the call at N = {top_n})"
            )
    return rows, fits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", help="git revisions or paths of cpu_kernel.c")
    ap.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    ap.add_argument("--states", type=positive_int, nargs="+", default=[16])
    ap.add_argument("--rounds", type=positive_int, default=100, help="timed calls per build")
    ap.add_argument("--march", nargs="+", default=["native"],
                    help="-march of every build, or one per build")  # fmt: skip
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if len(args.march) not in (1, len(args.builds)):
        ap.error(f"--march: one level, or one per build ({len(args.builds)}), got {args.march}")
    marches = args.march * len(args.builds) if len(args.march) == 1 else args.march
    if not cpu.c_kernel_available():
        raise SystemExit("the C scan kernel is unavailable here: nothing to compare")
    # a build named twice (HEAD HEAD: how far apart two identical builds time) gets its number
    specs = [s if len(set(marches)) == 1 else f"{s} ({m})" for s, m in zip(args.builds, marches)]
    names = [s if specs.count(s) == 1 else f"{s} #{i}" for i, s in enumerate(specs)]
    mixer = vimc.create_model("vim_tiny").eval().layers[0].mixer  # random weights
    usual, g = cpu._lib, torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        libs = [build(spec, march, Path(tmp), i)
                for i, (spec, march) in enumerate(zip(args.builds, marches))]  # fmt: skip
        try:
            rows, fits = compare(names, libs, mixer, args, g)
        finally:
            cpu._lib = usual
    head = header("cpu")
    table = [
        "| build | batch | N | best ms | median ms | median vs first | max abs diff vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['build']} | {r['batch']} | {r['N']} | {r['best_ms']:.3f} | {r['median_ms']:.3f} | "
        f"{r['vs_first']:.3f} | {r['max_abs_diff']:.2e} |"
        for r in rows
    ]
    print(head, *table, *fits, sep="\n")
    if not args.no_save:
        command = " ".join(["python benchmarks/scan_builds.py", *(argv or sys.argv[1:])])
        md = [f"# Scan kernel builds side by side, {machine_tag('cpu')}", "", "```", head]
        md += [command, "```", "", *resolved(args.builds), "", *table, "", *fits]
        stem = RESULTS / f"scan_builds-{machine_tag('cpu')}-{'-vs-'.join(dict.fromkeys(marches))}"
        save_results(stem, {"header": head, "builds": args.builds, "rows": rows}, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
