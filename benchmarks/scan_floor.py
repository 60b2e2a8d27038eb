"""The scan's state loop alone against its instruction floor, per kernel variant.

    python benchmarks/scan_floor.py             # every instruction-set level this CPU runs
    python benchmarks/scan_floor.py --reps 50 --no-save

Builds benchmarks/scan_floor.c (cpu_kernel.c's forward state loop on L1-resident rows) for each
level with the kernel's own flags, runs it, and prints nanoseconds and cycles per state update.
The floor: one state update of one lane is 9 instructions on the FMA ports (delta * A, five
polynomial FMAs for 2^r, du * B, the state FMA, the output FMA; the rounding and clamp go to
the add ports and 2^k is an integer add), so a core with FMA_PORT_LANES float lanes of FMA
throughput per cycle needs 9 / FMA_PORT_LANES cycles per update: 0.5625 with two 256-bit FMA
pipes (Zen 3, Zen 4, most AVX2 cores) or one 512-bit pipe's worth of work per cycle. The whole
op (softplus, the projection, the gate, staging) is benchmarks/scan.py's.
Results: benchmarks/results/scan_floor-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from vimc.ops.selective_scan import _cbuild

from vimc.machine import header, machine_tag, save_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FMA_INSTRUCTIONS_PER_UPDATE = 9
FMA_PORT_LANES = 16  # float lanes of FMA work per cycle: two 256-bit pipes (Zen 3/4)


def run_level(level: str, reps: int, workdir: Path) -> dict:
    exe = workdir / f"scan_floor-{level}"
    cmd = [_cbuild.compiler(), *_cbuild.PROGRAM_FLAGS, f"-march={level}", "-Wno-psabi"]
    cmd += [f"-I{_cbuild.HERE}", str(HERE / "scan_floor.c"), "-o", str(exe), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe), str(reps)], check=True, capture_output=True, text=True)
    row: dict = {"level": level}
    for line in out.stdout.splitlines():
        if line.startswith("lanes"):
            lanes, nb = line.split(",")
            row["lanes"], row["states_per_pass"] = int(lanes.split()[1]), int(nb.split()[-1])
        else:
            key, value = line.rsplit(" ", 1)
            row[key.replace(" ", "_")] = float(value)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20000, help="passes over the rows per level")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    levels = _cbuild.runnable_levels()
    floor = FMA_INSTRUCTIONS_PER_UPDATE / FMA_PORT_LANES
    head = header("cpu")
    table = [
        f"| level | lanes | states per pass | ns per update | cycles per update | "
        f"floor ({FMA_INSTRUCTIONS_PER_UPDATE} FMA-port instr. / {FMA_PORT_LANES} lanes) |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            r = run_level(level, args.reps, Path(tmp))
            rows.append(r)
            cycles = f"{r['cycles_per_update']:.3f}" if "cycles_per_update" in r else "-"
            table.append(
                f"| {level} | {r['lanes']} | {r['states_per_pass']} | "
                f"{r['ns_per_update']:.4f} | {cycles} | {floor:.4f} |"
            )
    print(head)
    print("\n".join(table))
    if not args.no_save:
        tag = machine_tag("cpu")
        clock = next((r["clock_GHz"] for r in rows if "clock_GHz" in r), None)
        md = [f"# Scan state loop vs its floor, {tag}", "", "```", head, "```", ""]
        if clock:
            md += [f"Clock measured by a dependent-add chain: {clock:.2f} GHz.", ""]
        md += table
        md += [
            "",
            "The floor assumes FMA instructions and 16 float lanes of FMA work per cycle; the "
            "generic x86-64 build (SSE2: no FMA, 4-lane vectors) has neither.",
        ]
        save_results(RESULTS / f"scan_floor-{tag}", {"header": head, "rows": rows}, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
