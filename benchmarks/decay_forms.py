"""The CPU scan kernel's decay forms side by side: which one a CPU should run by default.

    python benchmarks/decay_forms.py                        # batch 1 and 8, the best level
    python benchmarks/decay_forms.py --cpu-levels x86-64-v4 x86-64-v3   # a process per level
    VIMC_CPU_LEVEL=x86-64-v3 python benchmarks/decay_forms.py --batches 8 --no-save

The kernel computes its decays exp(delta * A) in one of several forms where every exponent is
in [-126, 0] (``cpu.DECAY_FORMS``: exp2, exp2-table, and exp2-scalef in AVX-512 builds); which
one a build runs is chosen at load from the CPU's kind (cpu_kernel.c's ``bounded_decay``), or
by ``VIMC_SCAN_DECAY``. This script switches the loaded kernel between every form it has
(``cpu.use_decay_form``) and times, round robin in one process (``--threads``, default 2):
- ``op``: one Vim-Ti layer's scan call (both directions, dt_proj in the kernel, the gate) as
  the mixer makes it (scan_builds.py's ``layer_call``);
- ``model``: Vim-Ti compiled (``torch.compile(fullgraph=True)``), whose graph calls the same op.
Each row gives the median, the ratio to the exp2 form's, and the largest difference of its
output from the exp2 form's. The state loop alone is benchmarks/scan_floor.py's.
Results: benchmarks/results/decay_forms-<machine>-<level>.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from pathlib import Path

import torch
from vimc.ops.selective_scan import _cbuild, cpu

import vimc
from vimc.cliargs import positive_int
from vimc.machine import header, machine_tag, save_results
from vimc.timing import time_round_robin

# one layer's scan call is scan_builds.py's. Imported as benchmarks.decay_forms (the tests) it
# reads its sibling through the package; run as a script, its folder is on sys.path.
if __package__:
    from .scan_builds import layer_call
else:
    from scan_builds import layer_call

RESULTS = Path(__file__).resolve().parent / "results"


def rows_for(kind: str, fns: dict, rounds: int, batch: int) -> list[dict]:
    """Each form's row, timed round robin; fns maps a form to a call returning a tensor."""
    lib = cpu._lib
    default = cpu.decay_forms(lib)[0]

    def in_form(form, fn):
        cpu.use_decay_form(lib, form)  # checked once; the timed call only sets it (one C call)
        name = form.encode()

        def call():
            lib.vimc_scan_set_decay(name)
            return fn()

        return call

    calls = {form: in_form(form, fn) for form, fn in fns.items()}
    try:
        outs = {form: call() for form, call in calls.items()}
        t = time_round_robin(calls, rounds=rounds, warmup=2, rotate=True)
    finally:
        cpu.use_decay_form(lib, default)
    base = t["exp2"].median_ms
    return [
        {
            "what": kind,
            "batch": batch,
            "form": form,
            "default": form == default,
            "median_ms": t[form].median_ms,
            "p20_ms": t[form].p20_ms,
            "p80_ms": t[form].p80_ms,
            "vs_exp2": t[form].median_ms / base,
            "max_abs_diff": (outs[form] - outs["exp2"]).abs().max().item(),
        }
        for form in fns
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=positive_int, default=30, help="op rounds (model: a third)")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--no-model", action="store_true", help="the op rows only (no compile)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument(
        "--cpu-levels",
        nargs="+",
        metavar="LEVEL",
        help="run once per scan-kernel instruction-set level, each in its own process "
        "(VIMC_CPU_LEVEL; default: this process's kernel)",
    )
    args = ap.parse_args(argv)
    if args.cpu_levels:
        rest = list(argv if argv is not None else sys.argv[1:])
        at = rest.index("--cpu-levels")
        rest = rest[:at] + rest[at + 1 + len(args.cpu_levels) :]
        for level in args.cpu_levels:
            env = {**os.environ, "VIMC_CPU_LEVEL": level}
            proc = subprocess.run([sys.executable, __file__, *rest], env=env, check=False)
            if proc.returncode != 0:
                return proc.returncode
        return 0
    torch.set_num_threads(args.threads)
    if not cpu.c_kernel_available():
        print(f"the C scan kernel is unavailable: {cpu.c_kernel_error()}")
        return 1
    forms = cpu.decay_forms(cpu._lib)
    level = cpu._FORCED_LEVEL or _cbuild.cpu_level()
    model = vimc.create_model("vim_tiny").eval()
    compiled = None if args.no_model else torch.compile(model, fullgraph=True)
    rows = []
    with torch.no_grad():
        for batch in args.batches:
            g = torch.Generator().manual_seed(batch)
            call = layer_call(model.layers[0].mixer, batch, model.layers[0].mixer.d_state, g)
            rows += rows_for("op (one layer)", dict.fromkeys(forms, call), args.rounds, batch)
            x = torch.randn(batch, 3, 224, 224, generator=g)
            if compiled is not None:
                fns = dict.fromkeys(forms, functools.partial(compiled, x))
                rows += rows_for("model, compiled", fns, max(3, args.rounds // 3), batch)
    head = header("cpu")
    kernel = f"scan kernel: {level}, {cpu.LANES} lanes; forms {', '.join(forms)} (default first)"
    table = [
        "| what | batch | decay form | median ms (p20-p80) | vs exp2 | max abs diff vs exp2 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["form"] + (" (default)" if r["default"] else "")
        table.append(
            f"| {r['what']} | {r['batch']} | {name} | {r['median_ms']:.3f} "
            f"({r['p20_ms']:.3f}-{r['p80_ms']:.3f}) | {r['vs_exp2']:.3f}x | "
            f"{r['max_abs_diff']:.2e} |"
        )
    print(head)
    print(kernel)
    print("\n".join(table))
    if not args.no_save:
        tag = f"{machine_tag('cpu')}-{level}"
        md = [f"# Scan decay forms, {tag}", "", "```", head, kernel, "```", "", *table]
        payload = {"header": head, "level": level, "forms": forms, "rows": rows}
        save_results(RESULTS / f"decay_forms-{tag}", payload, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
