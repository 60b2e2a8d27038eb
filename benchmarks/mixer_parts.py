"""Where one call of the mixer core spends its time: each part's cost, cut out one at a time.

    python benchmarks/mixer_parts.py                 # batch 1 and 8, torch's thread count
    python benchmarks/mixer_parts.py --batches 8 --threads 1 --rounds 5 --no-save

Builds benchmarks/mixer_parts.c (one Vim-Ti layer's vimc_mixer_fwd call, cpu_kernel.c included
as source) with the kernel's flags for this CPU (-march=native and OpenMP where the compiler
has them, as the first-use build), once from the kernel as it is ("whole") and once per part
from a copy of cpu_kernel.c with that part cut out (PARTS: each edit must apply, so a kernel
that moved on fails here, by name, rather than timing something else). The builds run taking
turns, each timing ``--calls`` calls per turn and keeping the best; a part's cost is the median
over rounds of whole minus cut. A cut keeps what the parts after it read in range (the scratch
starts as data of the right size; a cut softplus still writes small positive steps), so the
scan keeps its decay form.

The parts of ``vimc_mixer_fwd`` (mixer.py's module docstring has the whole):
- states: the scan's state loop, every (step, state) update (its floor is
  benchmarks/scan_floor.py's), and with it the choice of its decay form from the chunk's
  steps and A, which the compiler may drop once nothing reads it;
- x_proj: the chunk's x_proj rows (dt rank + 2N outputs per token);
- conv: the depthwise conv and its silu;
- dt_proj: the projection of the dt rank to E channels;
- softplus: the step's softplus;
- gate: the silu(z) gate's sigmoid.
"whole less the parts" is what no part names (loads and stores between the parts, the D skip,
each call's layout of its parameters, thread start) less the overlap of the parts: a cut also
frees the cores for the others' instructions, so the parts can add up to more than the whole.

Results: benchmarks/results/mixer_parts-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch
from vimc.ops.selective_scan import _cbuild

from vimc.machine import header, machine_tag, save_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LAYERS = 24  # Vim-Ti's mixers per forward

# part -> edits of cpu_kernel.c's text, (what, replaced by)
PARTS: dict[str, list[tuple[str, str]]] = {
    "states": [
        (
            "            int64_t n = 0;\n            for (; n + NB <= N; n += NB)",
            "            int64_t n = N;\n            for (; n + NB <= N; n += NB)",
        )
    ],
    "x_proj": [("        mixer_xproj(us, xpt, xd, nt, E, W);\n", "")],
    "conv": [
        (
            "        for (int64_t i = 0; i < nt; ++i) {\n            const int64_t t = t0 + i;",
            "        for (int64_t i = 0; i < 0; ++i) {\n            const int64_t t = t0 + i;",
        )
    ],
    "dt_proj": [
        (
            "project(wst + j * R * LANES, R, xd + i * W, 1, W, PROJ_ROWS, raw);",
            "EACH(q, PROJ_ROWS) raw[q] = vsplat(0.0f);",
        ),
        (
            "project(wst + j * R * LANES, R, xd + (i + q) * W, 1, W, 1, raw + q);",
            "raw[q] = vsplat(0.0f);",
        ),
    ],
    "softplus": [
        (
            "vsoftplus_n(raw, PROJ_ROWS);",
            "EACH(q, PROJ_ROWS) raw[q] = raw[q] * raw[q] * vsplat(1e-3f);",
        ),
        (
            "raw[q] = vsoftplus(raw[q] + bias);",
            "raw[q] = (raw[q] + bias) * (raw[q] + bias) * vsplat(1e-3f);",
        ),
    ],
    "gate": [
        ("                vsigmoid_n(g, PROJ_ROWS);\n", ""),
        (
            "            const vf z = g;\n            vsigmoid_n(&g, 1);\n",
            "            const vf z = g;\n",
        ),
    ],
}  # fmt: skip


def cut(source: str, part: str) -> str:
    """cpu_kernel.c's text with ``part`` cut out; ValueError naming the edit that no longer
    applies (the kernel changed under this benchmark)."""
    for old, new in PARTS[part]:
        if source.count(old) != 1:
            raise ValueError(
                f"mixer_parts: the {part!r} edit matches {source.count(old)} places of "
                f"cpu_kernel.c, expected 1: {old.strip()[:60]!r}"
            )
        source = source.replace(old, new)
    return source


# as cpu.py builds the kernel at first use: not every compiler knows -march=native or OpenMP
VARIANTS = [["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []]


def build(workdir: Path, name: str, source: str) -> tuple[Path, list[str]]:
    """mixer_parts.c built against ``source`` as its cpu_kernel.c -> the program and the
    VARIANTS entry it was built with."""
    inc = workdir / name
    inc.mkdir()
    (inc / "cpu_kernel.c").write_text(source)
    exe = workdir / f"mixer_parts-{name}"
    return exe, _cbuild.build_program(HERE / "mixer_parts.c", exe, VARIANTS, includes=[inc])


def run_once(exe: Path, batch: int, threads: int, calls: int) -> tuple[float, float]:
    """The build's best milliseconds per call over ``calls`` calls (a turn's slow spell
    lifts its median more than its best), and its output's sum."""
    out = subprocess.run([str(exe), str(batch), str(threads), str(calls)], check=True,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    return float(out[1]), float(out[3])


def measure(exes: dict[str, Path], batch: int, threads: int, calls: int, rounds: int) -> dict:
    """Every build once per round, the order rotated each round -> the whole call's best
    milliseconds (median over rounds), each part's median cost (whole - cut, per round) and
    each build's output sum (a cut that changed nothing would leave the whole's)."""
    names = list(exes)
    per: dict[str, list[float]] = {n: [] for n in names}
    sums = {}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            ms, sums[n] = run_once(exes[n], batch, threads, calls)
            per[n].append(ms)
    whole = statistics.median(per["whole"])
    parts = {
        n: statistics.median(w - c for w, c in zip(per["whole"], per[n]))
        for n in names if n != "whole"
    }  # fmt: skip
    return {"batch": batch, "threads": threads, "whole_ms": whole, "part_ms": parts,
            "out_sum": sums}  # fmt: skip


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| batch | threads | part | ms per call | share of the call | ms per Vim-Ti forward "
        f"({LAYERS} calls) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        w = r["whole_ms"]
        items = [*r["part_ms"].items(), ("whole less the parts", w - sum(r["part_ms"].values()))]
        for part, ms in items:
            lines.append(
                f"| {r['batch']} | {r['threads']} | {part} | {ms:.3f} | {100 * ms / w:.0f}% | "
                f"{LAYERS * ms:.1f} |"
            )
        lines.append(
            f"| {r['batch']} | {r['threads']} | **whole call** | {w:.3f} | 100% | "
            f"{LAYERS * w:.1f} |"
        )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--calls", type=int, default=30, help="timed calls per build per round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    for name in ("threads", "calls", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(b < 1 for b in args.batches):
        ap.error(f"--batches must be >= 1, got {args.batches}")
    source = (_cbuild.HERE / "cpu_kernel.c").read_text()
    head = header("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        exes, flags = {}, set()
        for part in ("whole", *PARTS):
            exes[part], variant = build(
                Path(tmp), part, source if part == "whole" else cut(source, part)
            )
            flags.add(" ".join(variant) or "no extra flags")
        rows = [measure(exes, b, args.threads, args.calls, args.rounds) for b in args.batches]
    for r in rows:
        same = [p for p in PARTS if r["out_sum"][p] == r["out_sum"]["whole"]]
        if same:  # a cut that computes the same output cut nothing
            raise RuntimeError(f"mixer_parts: cutting {same} left the output as it was")
    lines = table(rows)
    head += f" | builds: {', '.join(sorted(flags))}"
    print(head)
    print("\n".join(lines))
    if not args.no_save:
        tag = machine_tag("cpu")
        md = [f"# The mixer core's parts, {tag}", "", "```", head, "```", ""]
        md += [
            f"One Vim-Ti layer's `vimc_mixer_fwd` call (B x 197 tokens, E 384, N 16, dt rank "
            f"12), {args.rounds} rounds of {args.calls} calls per build, the "
            "builds taking turns; a part's cost: the median over rounds of the whole call's "
            "best time in the round less the best with that part cut out. A cut also frees "
            "the cores for the other parts' instructions: the parts can add up to more than "
            "the whole.",
            "",
            *lines,
        ]
        save_results(RESULTS / f"mixer_parts-{tag}", {"header": head, "rows": rows}, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
