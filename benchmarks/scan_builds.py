"""Builds of the CPU scan kernel side by side in one process, one Vim-Ti layer's forward pair.

    python benchmarks/scan_builds.py HEAD~1 HEAD             # cpu_kernel.c at two revisions
    python benchmarks/scan_builds.py HEAD /tmp/cpu_kernel.c  # or a revision and a file
    python benchmarks/scan_builds.py HEAD --states 16 8 1    # one build, state sizes swept

A kernel change worth a few percent of the model is lost in a shared machine's noise between
two runs; in one process, with the builds taking turns call by call, it is not. Each build is
cpu_kernel.c at a git revision or a path, compiled with the kernel's own flags for this CPU
(``--march``, default native, with OpenMP), and swapped in under the op that compiled Vim-Ti
calls (``selective_scan_bidirectional`` with each direction's dt_proj applied in the kernel),
on the token-major views a mixer passes (a randomly initialized Vim-Ti layer's real in_proj,
conv and x_proj outputs). Prints, per build, batch and state size: the best and median call
time, the median against the first build's, and the largest difference of its output from
the first build's. With several ``--states``, also a straight-line fit of time against N: the
time per state component and the part of a call that does not grow with N (dt_proj,
softplus, gate, staging, dispatch). Prints only, no results file: a tool for kernel work
whose numbers a change's commit or README line quotes.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from vimc.ops.selective_scan import _cbuild, cpu
from vimc.ops.selective_scan.bidirectional import selective_scan_bidirectional

import vimc
from vimc.cliargs import positive_int
from vimc.layers import anticausal_conv1d, causal_conv1d
from vimc.machine import header
from vimc.timing import time_round_robin

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "ops/selective_scan/cpu_kernel.c"


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


def build(spec: str, march: str, workdir: Path, i: int) -> ctypes.CDLL:
    src, so = workdir / f"kernel{i}.c", workdir / f"kernel{i}.so"
    src.write_text(kernel_source(spec))
    cmd = [_cbuild.compiler(), *_cbuild.FLAGS, f"-march={march}", "-fopenmp", str(src)]
    proc = subprocess.run([*cmd, "-o", str(so), "-lm"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"build {spec!r} failed:\n{proc.stderr[-3000:]}")
    lib = ctypes.CDLL(str(so))
    lib.vimc_scan_lanes.restype = ctypes.c_int64
    if lib.vimc_scan_lanes() != cpu.LANES:
        raise SystemExit(
            f"build {spec!r} has {lib.vimc_scan_lanes()} lanes, the process's kernel {cpu.LANES}: "
            "pick --march to match it (or VIMC_CPU_LEVEL for the process)"
        )
    lib.vimc_scan_fwd.argtypes, lib.vimc_scan_fwd.restype = [ctypes.c_void_p], ctypes.c_int
    return lib


@torch.inference_mode()
def layer_inputs(batch: int, states: int, g: torch.Generator) -> tuple:
    """A Vim-Ti layer's scan arguments (channel-major views of token-major memory), the first
    ``states`` state components kept -> (args, kwargs) of selective_scan_bidirectional."""
    mixer = vimc.create_model("vim_tiny").eval().layers[0].mixer
    E, R, N = mixer.d_inner, mixer.dt_rank, mixer.d_state
    xz = F.linear(torch.randn(batch, 197, 192, generator=g), mixer.in_proj.weight)
    x, z = xz[..., :E], xz[..., E:]
    args, dt_weights = [], []
    for sfx, conv_fn in (("", causal_conv1d), ("_b", anticausal_conv1d)):
        conv, x_proj, dt_proj, A_log, D = mixer._direction(sfx)
        u = conv_fn(x, conv.weight, conv.bias, silu=True)
        x_dbl = F.linear(u, x_proj.weight)
        B, C = x_dbl[..., R : R + states], x_dbl[..., R + N : R + N + states]
        A = -torch.exp(A_log.float())[:, :states]
        args += [u.mT, x_dbl[..., :R].mT, A, B.mT, C.mT, D.float(), dt_proj.bias.float()]
        dt_weights.append(dt_proj.weight)
    kwargs = dict(z=z.mT, delta_softplus=True, delta_proj=dt_weights[0])
    return args, {**kwargs, "delta_proj_b": dt_weights[1]}


def time_builds(specs: list[str], libs: list, batch: int, states: int, rounds: int, g) -> list:
    """One row per build: (spec, best ms, median ms, max abs difference from the first's out)."""
    a, kw = layer_inputs(batch, states, g)

    def call(lib):
        cpu._lib = lib
        return selective_scan_bidirectional(*a, **kw)

    with torch.inference_mode():
        outs = [call(lib) for lib in libs]
        fns = {spec: functools.partial(call, lib) for spec, lib in zip(specs, libs)}
        t = time_round_robin(fns, rounds=rounds, warmup=3, rotate=True)
    return [
        (spec, min(t[spec].times_s) * 1e3, t[spec].median_ms, (out - outs[0]).abs().max().item())
        for spec, out in zip(specs, outs)
    ]


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ms = slope * N + fixed over (N, ms) points -> (slope, fixed)."""
    n, ms = torch.tensor(points, dtype=torch.float64).unbind(1)
    slope = ((n - n.mean()) * (ms - ms.mean())).sum() / ((n - n.mean()) ** 2).sum()
    return float(slope), float(ms.mean() - slope * n.mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", help="git revisions or paths of cpu_kernel.c")
    ap.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    ap.add_argument("--states", type=positive_int, nargs="+", default=[16])
    ap.add_argument("--rounds", type=positive_int, default=100, help="timed calls per build")
    ap.add_argument("--march", default="native", help="-march of every build")
    args = ap.parse_args(argv)
    if not cpu.c_kernel_available():
        raise SystemExit("the C scan kernel is unavailable here: nothing to compare")
    print(header("cpu"))
    print("| build | batch | N | best ms | median ms | median vs first | max abs diff vs first |")
    print("|---|---|---|---|---|---|---|")
    # a build named twice (HEAD HEAD: how far apart two identical builds time) gets its number
    names = [s if args.builds.count(s) == 1 else f"{s} #{i}" for i, s in enumerate(args.builds)]
    usual, g = cpu._lib, torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        libs = [build(spec, args.march, Path(tmp), i) for i, spec in enumerate(args.builds)]
        try:
            for batch in args.batches:
                points = {name: [] for name in names}
                for states in args.states:
                    rows = time_builds(names, libs, batch, states, args.rounds, g)
                    for spec, best, median, diff in rows:
                        vs = median / rows[0][2]
                        print(
                            f"| {spec} | {batch} | {states} | {best:.3f} | {median:.3f} | "
                            f"{vs:.3f} | {diff:.2e} |"
                        )
                        points[spec].append((states, median))
                for spec, pts in points.items() if len(args.states) > 1 else ():
                    slope, fixed = fit_line(pts)
                    top_n, top_ms = max(pts)
                    print(
                        f"{spec}, batch {batch}: {slope:.4f} ms per state component, {fixed:.3f} "
                        f"ms that does not grow with N ({fixed / top_ms:.0%} of the call at "
                        f"N = {top_n})"
                    )
        finally:
            cpu._lib = usual
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
