"""The scan's state loop alone against its instruction floors, per kernel variant and decay form.

    python benchmarks/scan_floor.py             # every instruction-set level this CPU runs
    python benchmarks/scan_floor.py --reps 50 --no-save

Builds benchmarks/scan_floor.c (cpu_kernel.c's forward state loop on L1-resident rows) for each
level with the kernel's own flags, runs each decay form that build has (forms interleaved,
best of ten rounds), and prints nanoseconds and cycles per state update.

One state update of one lane costs, per decay form (cpu_kernel.c's decay_of), as GCC 12
compiles it with the kernel's flags (counted in the disassembly of both builds):

    form          FMA-pipe instr.   all vector instr.
    exp2-clamp          9                 15
    exp2               10                 13
    exp2-scalef         9                 12
    exp2-table          9                 13

The source's exponent is one product, x = delta * A, rounded to k by adding and subtracting
1.5 * 2^23, with r = x - k. -ffp-contract=fast lets GCC fuse the product into both the first
add and the last subtract (an FMA and an FMS: the product is computed twice, r from the exact
one), so the exp2 and table forms run one FMA-pipe instruction more, and one vector
instruction fewer, than the source reads. The clamp form's max and the scalef form's
vreduceps sit between the product and its adds, so there it stays one multiply.
- exp2: the FMA and FMS, five polynomial FMAs for 2^r, du * B, the state FMA, the output FMA
  (10); the subtract of the magic and 2^k as a shift and an integer add besides.
- exp2-table (AVX2 and AVX-512 builds): three polynomial FMAs and one multiply by a table
  value, which vpermps picks (a shuffle port), in place of five: 9.
- exp2-scalef: the multiply, five FMAs, du * B, vscalefps, the two FMAs; vreduceps and a
  subtract besides.
Two floors follow:
- FMA pipes: two 256-bit FMA pipes (Zen 3, Zen 4, most AVX2 cores) do 16 float lanes of FMA
  work per cycle: 9 / 16 = 0.5625 cycles per update (10 / 16 for exp2);
- ports: Intel's AVX-512 cores run every 512-bit vector instruction on two ports, 32 lanes per
  cycle: 15 / 32, 13 / 32 or 12 / 32 cycles per update (16-lane builds).
The whole op (softplus, the projection, the gate, staging) is benchmarks/scan.py's.
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
# as compiled (the module docstring): GCC fuses the exp2 and table forms' product twice
FMA_PIPE_INSTRUCTIONS = {"exp2-clamp": 9, "exp2": 10, "exp2-scalef": 9, "exp2-table": 9}
VECTOR_INSTRUCTIONS = {"exp2-clamp": 15, "exp2": 13, "exp2-scalef": 12, "exp2-table": 13}
FMA_PIPE_LANES = 16  # float lanes of FMA work per cycle: two 256-bit pipes (Zen 3/4)
PORT_LANES = 32  # float lanes per cycle over all 512-bit instructions: two ports (Intel)


def run_level(level: str, reps: int, workdir: Path) -> list[dict]:
    """One row per decay form of this level's build."""
    exe = workdir / f"scan_floor-{level}"
    _cbuild.build_program(HERE / "scan_floor.c", exe, [[f"-march={level}"]])
    out = subprocess.run([str(exe), str(reps)], check=True, capture_output=True, text=True)
    common: dict = {"level": level}
    rows = []
    for line in out.stdout.splitlines():
        if line.startswith("lanes"):
            lanes, nb = line.split(",")
            common["lanes"], common["states_per_pass"] = int(lanes.split()[1]), int(nb.split()[-1])
        elif line.startswith("clock GHz"):
            common["clock_GHz"] = float(line.split()[-1])
        elif line.startswith("form"):
            _, form, ns = line.split()
            rows.append({"form": form, "ns_per_update": float(ns)})
    for r in rows:
        r.update(common)
        if "clock_GHz" in r:
            r["cycles_per_update"] = round(r["ns_per_update"] * r["clock_GHz"], 3)
        r["fma_pipe_instructions"] = FMA_PIPE_INSTRUCTIONS[r["form"]]
        r["fma_pipe_floor"] = FMA_PIPE_INSTRUCTIONS[r["form"]] / FMA_PIPE_LANES
        if r["lanes"] == 16:
            r["port_floor"] = VECTOR_INSTRUCTIONS[r["form"]] / PORT_LANES
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20000, help="passes over the rows per form")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    head = header("cpu")
    table = [
        "| level | lanes | states per pass | decay form | ns per update | cycles per update | "
        f"FMA-pipe instr. | FMA-pipe floor (instr. / {FMA_PIPE_LANES} lanes) | "
        f"port floor (all instr. / {PORT_LANES} lanes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in _cbuild.runnable_levels():
            for r in run_level(level, args.reps, Path(tmp)):
                rows.append(r)
                cycles = f"{r['cycles_per_update']:.3f}" if "cycles_per_update" in r else "-"
                port = f"{r['port_floor']:.4f}" if "port_floor" in r else "-"
                table.append(
                    f"| {level} | {r['lanes']} | {r['states_per_pass']} | {r['form']} | "
                    f"{r['ns_per_update']:.4f} | {cycles} | {r['fma_pipe_instructions']} | "
                    f"{r['fma_pipe_floor']:.4f} | {port} |"
                )
    print(head)
    print("\n".join(table))
    if not args.no_save:
        tag = machine_tag("cpu")
        clock = next((r["clock_GHz"] for r in rows if "clock_GHz" in r), None)
        md = [f"# Scan state loop vs its floors, {tag}", "", "```", head, "```", ""]
        if clock:
            md += [f"Clock measured by a dependent register-add chain: {clock:.2f} GHz.", ""]
        md += table
        md += [
            "",
            "Which floor binds depends on the core: the FMA-pipe floor on Zen 3/4 and AVX2 "
            "cores, the port floor on Intel's AVX-512 cores. When an item's exponents are "
            "proven to be in [-126, 0] the kernel takes the form chosen at load (exp2-scalef on "
            "Intel AVX-512 builds, exp2-table on other AVX2 and AVX-512 builds, exp2 on the "
            "rest; VIMC_SCAN_DECAY overrides it), exp2-clamp otherwise. The generic x86-64 "
            "build (SSE2: no FMA, 4-lane vectors) has neither floor.",
        ]
        save_results(RESULTS / f"scan_floor-{tag}", {"header": head, "rows": rows}, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
