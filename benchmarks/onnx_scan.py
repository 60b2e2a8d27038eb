"""One lowered selective scan in ONNX Runtime: the standard-op lowerings of vimc.export.onnx
side by side.

    taskset -c 1 python benchmarks/onnx_scan.py --threads 1     # Vim-Ti shapes, batch 1 and 8
    python benchmarks/onnx_scan.py --batches 1 --repeats 5 --lowerings step,paired

A tiny ONNX model holds the placeholder node(s) of one Vim-Ti layer (u, delta, z (Bt, 384,
197); A (384, 16); B, C (Bt, 1, 16, 197); D, delta_bias (384,); softplus on), lowered by each
lowering ("name" or "name:k", k steps per Scan iteration). Cases: the forward scan, the
reverse scan, and both directions of a layer (two placeholders sharing z, as Vim's mixer emits
them; "paired" runs them in one Scan, "step" in two). Every result is checked against
``vimc.ops.selective_scan``; the lowerings of a case are timed round-robin, the order rotated
every round (so load from other processes, and the cache left by the previous run, hit all
alike): median with p20/p80 and the ratio to "step". "paired" lowers a lone placeholder as
"step", so in the forward and reverse cases the two rows time one graph twice: a check of
the noise. (The "scan" and "unrolled" lowerings this script also timed were removed from
vimc: benchmarks/results/onnx_scan-amd-epyc-2c.md has them slower than "step".) Results go to
benchmarks/results/onnx_scan-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from vimc.export.onnx import (
    SCAN_DOMAIN,
    SCAN_OP,
    lower_scans,
    nonstandard_nodes,
    onnxruntime_session,
)
from vimc.export.onnx.names import STANDARD_LOWERINGS, resolve_lowering
from vimc.ops import selective_scan

from vimc.cliargs import positive_int
from vimc.machine import header, machine_tag, save_results
from vimc.timing import time_round_robin

E, N, L = 384, 16, 197  # Vim-Ti: d_inner 384, d_state 16, 196 patches + class token
LAYERS = 24
DEFAULT_LOWERINGS = "step,step:2,step:4,paired,paired:2"
CASES = ("forward", "reverse", "both")
BASELINE = "step"
RESULTS = Path(__file__).resolve().parent / "results"
INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def parse_lowerings(spec: str) -> list[tuple[str, int | None]]:
    """ "step,paired:2" -> [("step", None), ("paired", 2)]; old spellings ("bidir") warn and
    give their new names."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, k = item.partition(":")
        name = resolve_lowering(name, arg="--lowerings", choices=STANDARD_LOWERINGS)
        if k and not (k.isdigit() and int(k) >= 1):
            raise ValueError(f"--lowerings: bad steps per iteration in {item!r}")
        out.append((name, int(k) if k else None))
    if not out:
        raise ValueError("--lowerings: name at least one lowering")
    return out


def label(name: str, k: int | None) -> str:
    return name if k is None else f"{name}:{k}"


def scan_inputs(Bt: int, seed: int) -> dict[str, torch.Tensor]:
    """One direction's inputs, values like a Vim layer's (delta before softplus ~ -2)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(Bt, E, L, generator=g),
        "delta": torch.randn(Bt, E, L, generator=g) * 0.5 - 2,
        "A": -torch.arange(1, N + 1.0).repeat(E, 1) * (1 + 0.1 * torch.rand(E, N, generator=g)),
        "B": torch.randn(Bt, 1, N, L, generator=g),
        "C": torch.randn(Bt, 1, N, L, generator=g),
        "D": torch.ones(E),
        "z": torch.randn(Bt, E, L, generator=g),
        "delta_bias": torch.randn(E, generator=g) * 0.3,
    }


def case_model(case: str, Bt: int):
    """(ModelProto with placeholder node(s), feeds, {output name: reference tensor})."""
    directions = {"forward": [False], "reverse": [True], "both": [False, True]}[case]
    nodes, inputs, feeds, refs = [], [], {}, {}
    shared_z = scan_inputs(Bt, seed=99)["z"]
    feeds["z"] = shared_z.numpy()
    inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, list(shared_z.shape)))
    for i, reverse in enumerate(directions):
        t = {**scan_inputs(Bt, seed=i), "z": shared_z}
        names = [f"{n}{i}" if n != "z" else "z" for n in INPUTS]
        nodes.append(
            helper.make_node(
                SCAN_OP,
                names,
                [f"out{i}", f"last{i}"],
                domain=SCAN_DOMAIN,
                name=f"scan{i}",
                delta_softplus=1,
                reverse=int(reverse),
            )
        )
        for n, name in zip(INPUTS, names):
            if n != "z":
                feeds[name] = t[n].numpy()
                inputs.append(
                    helper.make_tensor_value_info(name, TensorProto.FLOAT, list(t[n].shape))
                )
        out, last = selective_scan(
            *(t[n] for n in ("u", "delta", "A", "B", "C")),
            D=t["D"],
            z=t["z"],
            delta_bias=t["delta_bias"],
            delta_softplus=True,
            return_last_state=True,
            reverse=reverse,
        )
        refs[f"out{i}"], refs[f"last{i}"] = out, last
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, list(r.shape)) for n, r in refs.items()
    ]
    graph = helper.make_graph(nodes, f"{case}_b{Bt}", inputs, outputs)
    mp = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(SCAN_DOMAIN, 1)],
    )
    return mp, feeds, refs


def lowered_session(mp, name: str, k: int | None, threads: int, workdir: Path):
    lowered = onnx.ModelProto()
    lowered.CopyFrom(mp)
    lower_scans(lowered, name, k)
    onnx.checker.check_model(lowered, full_check=True)
    if nonstandard_nodes(lowered):
        raise RuntimeError(f"{label(name, k)}: non-standard nodes left after lowering")
    path = workdir / f"{mp.graph.name}_{label(name, k).replace(':', '_')}.onnx"
    onnx.save_model(lowered, str(path))
    scans = sum(n.op_type == "Scan" for n in lowered.graph.node)
    return onnxruntime_session(path, threads=threads), scans


def max_error(session, feeds, refs) -> float:
    outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return max(float(np.abs(outs[n] - r.numpy()).max()) for n, r in refs.items())


def measure_case(case, Bt, lowerings, args, workdir) -> list[dict]:
    mp, feeds, refs = case_model(case, Bt)
    runs = {}
    for name, k in lowerings:
        sess, scans = lowered_session(mp, name, k, args.threads, workdir)
        err = max_error(sess, feeds, refs)  # also the first (warm-up) call
        for _ in range(args.warmup - 1):
            sess.run(None, feeds)
        runs[label(name, k)] = (sess, scans, err)
    fns = {f: (lambda s=sess: s.run(None, feeds)) for f, (sess, _, _) in runs.items()}
    timings = time_round_robin(fns, rounds=args.repeats, warmup=0, rotate=True)
    base = timings[BASELINE].median_ms if BASELINE in timings else None
    rows = []
    for f, (_, scans, err) in runs.items():
        t = timings[f]
        rows.append(
            {
                "case": case,
                "batch": Bt,
                "lowering": f,
                "scan_nodes": scans,
                "p50_ms": t.median_ms,
                "p20_ms": t.p20_ms,
                "p80_ms": t.p80_ms,
                "vs_step": t.median_ms / base if base else None,
                "max_abs_err": err,
            }
        )
    return rows


def markdown(rows, head: str, args) -> str:
    lines = [
        f"# Lowered selective scan in ONNX Runtime, {machine_tag()}",
        "",
        "```",
        head,
        f"ONNX Runtime intra-op threads {args.threads}; repeats {args.repeats}, "
        "interleaved round-robin, order rotated each round; "
        f"load average {args.load_start} at start, {args.load_end} at end",
        "```",
        "",
        f"One Vim-Ti scan: u, delta, z ({'Bt'}, {E}, {L}), A ({E}, {N}), B, C (Bt, 1, {N}, {L}), "
        "softplus on. `both`: the forward and reverse scans of one layer (sharing z). "
        f"`x {BASELINE}`: median over the `{BASELINE}` lowering's, same case. "
        f"`{LAYERS} layers`: the `both` median times {LAYERS}, the scans of one Vim-Ti image "
        "(an extrapolation, not measured on the model). Error: max abs against "
        "`vimc.ops.selective_scan`, outputs and last states. `paired` lowers a lone scan as "
        "`step`: in the forward and reverse cases those two rows time one graph (a noise check).",
        "",
        "| Bt | case | lowering | Scan nodes | median ms | p20 ms | p80 ms "
        f"| x {BASELINE} | {LAYERS} layers ms | max abs err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['vs_step']:.2f}" if r["vs_step"] else "-"
        per_image = f"{r['p50_ms'] * LAYERS:.0f}" if r["case"] == "both" else "-"
        lines.append(
            f"| {r['batch']} | {r['case']} | {r['lowering']} | {r['scan_nodes']} | "
            f"{r['p50_ms']:.3f} | {r['p20_ms']:.3f} | {r['p80_ms']:.3f} | {ratio} | "
            f"{per_image} | {r['max_abs_err']:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument(
        "--lowerings",
        default=DEFAULT_LOWERINGS,
        help="comma-separated, 'name' or 'name:k' (k steps per Scan iteration), name one of "
        f"{', '.join(STANDARD_LOWERINGS)}",
    )
    ap.add_argument("--formulations", help=argparse.SUPPRESS)  # old name of --lowerings
    ap.add_argument("--repeats", type=positive_int, default=15)
    ap.add_argument("--warmup", type=positive_int, default=2)
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.formulations is not None:
        warnings.warn(
            "--formulations is deprecated and will be removed in the next release; use --lowerings",
            FutureWarning,
            stacklevel=2,
        )
        args.lowerings = args.formulations
    try:
        lowerings = parse_lowerings(args.lowerings)
    except ValueError as exc:
        ap.error(str(exc))
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"--cases: unknown {', '.join(bad)}; choose from {', '.join(CASES)}")
    batches = [int(b) for b in args.batches.split(",") if b]
    torch.set_num_threads(args.threads)
    head = header()
    print(head, f"| onnxruntime threads {args.threads}", flush=True)
    args.load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for Bt in batches:
            for case in cases:
                new = measure_case(case, Bt, lowerings, args, Path(tmp))
                rows += new
                for r in new:
                    print(
                        f"Bt {Bt} {case:8s} {r['lowering']:12s} {r['p50_ms']:9.3f} ms "
                        f"(p20 {r['p20_ms']:.3f}, p80 {r['p80_ms']:.3f}) "
                        f"err {r['max_abs_err']:.1e}",
                        flush=True,
                    )
    args.load_end = os.getloadavg()
    text = markdown(rows, head, args)
    print(text)
    if not args.no_save:
        payload = {
            "machine": head,
            "threads": args.threads,
            "repeats": args.repeats,
            "loadavg": [args.load_start, args.load_end],
            "shape": {"E": E, "N": N, "L": L},
            "rows": rows,
        }
        save_results(Path(args.out_dir) / f"onnx_scan-{machine_tag()}", payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
