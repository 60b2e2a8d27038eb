"""ONNX Runtime's own gated linear-attention ops running one Vim scan, next to vimc's lowerings.

    taskset -c 1 python benchmarks/ort_contrib.py --threads 1    # Vim-Ti shapes, batch 1 and 8

Mamba-1's recurrence h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, y_t = <C_t, h_t> is gated
linear attention with one value head per channel: E heads, d_k = N, d_v = 1, the query C_t and
the key B_t shared by every head of a group (inverse grouped-query attention), the value
delta_t u_t and the log-space decay delta_t A (per head and key dimension), scale 1. ONNX Runtime
ships two contrib ops (domain ``com.microsoft``) that run that recurrence in one kernel:
``GatedDeltaNet`` and ``LinearAttention``, both with ``update_rule="gated"``. This times each of
them on one forward scan of a Vim-Ti layer against ``benchmarks/onnx_scan.py``'s standard-op
lowerings of the same scan ("step" and "paired"), round-robin in one process, the order rotated
every round.

The contrib nodes get their inputs precomputed (softplus, the products, LinearAttention's key
repeated per head) and leave out D and the silu(z) gate: they are timed alone, a lower bound
for that route, while the standard-op rows time the whole lowered scan. Every result is
checked against ``vimc.ops.selective_scan``. Results: benchmarks/results/ort_contrib-<machine>.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from vimc.ops import selective_scan
from vimc.ops.selective_scan.reference import softplus

from vimc.cliargs import positive_int
from vimc.machine import header, machine_tag, save_results
from vimc.timing import time_round_robin

# The scan cases and their checks are onnx_scan.py's. Imported as benchmarks.ort_contrib (the
# tests) it reads its sibling through the package; run as a script, its folder is on sys.path.
if __package__:
    from .onnx_scan import (
        LAYERS,
        E,
        L,
        N,
        case_model,
        lowered_session,
        max_error,
        scan_inputs,
    )
else:
    from onnx_scan import (
        LAYERS,
        E,
        L,
        N,
        case_model,
        lowered_session,
        max_error,
        scan_inputs,
    )

CONTRIB = ("GatedDeltaNet", "LinearAttention")
STANDARD = ("step", "paired")  # vimc's standard-op lowerings
BASELINE = "step"
RESULTS = Path(__file__).resolve().parent / "results"


def available_contrib_ops() -> set[str]:
    """The ops of CONTRIB that this ONNX Runtime build registers."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    return {s.name for s in C.get_all_operator_schema() if s.domain == "com.microsoft"} & set(
        CONTRIB
    )


def contrib_inputs(t: dict[str, torch.Tensor], op: str) -> dict[str, np.ndarray]:
    """One direction's scan inputs (``scan_inputs``) as the contrib op's feeds, token-major.

    GatedDeltaNet (rank-4 spelling): query/key (Bt, L, G, N), value (Bt, L, E, 1), decay
    (Bt, L, E, N), initial_state (Bt, E, 1, N) zeros. LinearAttention (packed 3-D): query
    (Bt, L, G*N), key (Bt, L, E*N) (each group's key repeated per head), value (Bt, L, E),
    decay (Bt, L, E*N)."""
    delta = softplus(t["delta"] + t["delta_bias"][:, None])  # (Bt, E, L)
    Bt, G = t["B"].shape[:2]
    q = t["C"].permute(0, 3, 1, 2)  # (Bt, L, G, N)
    k = t["B"].permute(0, 3, 1, 2)
    v = (delta * t["u"]).transpose(1, 2)  # (Bt, L, E)
    g = delta.transpose(1, 2)[..., None] * t["A"]  # (Bt, L, E, N), all <= 0
    if op == "GatedDeltaNet":
        feeds = {"q": q, "k": k, "v": v[..., None], "g": g, "s0": torch.zeros(Bt, E, 1, N)}
    else:
        k_heads = k.repeat_interleave(E // G, dim=2)  # (Bt, L, E, N): head e reads group e*G//E
        feeds = {"q": q.flatten(2), "k": k_heads.flatten(2), "v": v, "g": g.flatten(2)}
    return {n: x.contiguous().numpy() for n, x in feeds.items()}


def contrib_model(op: str, feeds: dict[str, np.ndarray], groups: int) -> onnx.ModelProto:
    """One ``com.microsoft`` node: feeds -> output ``y`` and final state ``last``."""
    if op == "GatedDeltaNet":
        ins = ["q", "k", "v", "", "g", "", "s0"]  # no cu_seqlens, no beta
        attrs = {"update_rule": "gated", "scale": 1.0}
    else:
        ins = ["q", "k", "v", "", "g"]  # no past_state
        attrs = {"update_rule": "gated", "scale": 1.0, "q_num_heads": groups, "kv_num_heads": E}
    node = helper.make_node(op, ins, ["y", "last"], domain="com.microsoft", name=op, **attrs)
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    inputs = [vi(n, list(x.shape)) for n, x in feeds.items()]
    graph = helper.make_graph([node], op, inputs, [vi("y", None), vi("last", None)])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )


def contrib_session(op: str, Bt: int, threads: int, seed: int = 0):
    """(session, feeds, max abs error of output and final state against selective_scan)."""
    import onnxruntime as ort

    t = scan_inputs(Bt, seed)
    feeds = contrib_inputs(t, op)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        contrib_model(op, feeds, t["B"].shape[1]).SerializeToString(),
        so,
        providers=["CPUExecutionProvider"],
    )
    y, last = sess.run(None, feeds)
    ref, ref_last = selective_scan(
        t["u"], t["delta"], t["A"], t["B"], t["C"], delta_bias=t["delta_bias"],
        delta_softplus=True, return_last_state=True,
    )  # fmt: skip
    err_y = np.abs(y.reshape(Bt, L, E).transpose(0, 2, 1) - ref.numpy()).max()
    err_last = np.abs(last.reshape(Bt, E, N) - ref_last.numpy()).max()
    return sess, feeds, float(max(err_y, err_last))


def measure(Bt: int, ops: list[str], args, workdir: Path) -> list[dict]:
    runs = {}
    mp, feeds, refs = case_model("forward", Bt)
    for name in STANDARD:
        sess, _ = lowered_session(mp, name, None, args.threads, workdir)
        runs[name] = (sess, feeds, max_error(sess, feeds, refs))
    for op in ops:
        runs[op] = contrib_session(op, Bt, args.threads)
    for sess, f, _ in runs.values():
        for _ in range(args.warmup):
            sess.run(None, f)
    fns = {k: (lambda s=sess, f=f: s.run(None, f)) for k, (sess, f, _) in runs.items()}
    timings = time_round_robin(fns, rounds=args.repeats, warmup=0, rotate=True)
    base = timings[BASELINE].median_ms
    rows = []
    for k, (_, _, err) in runs.items():
        t = timings[k]
        kind = "com.microsoft node, inputs precomputed" if k in CONTRIB else "standard, whole"
        rows.append(
            {"batch": Bt, "route": k, "kind": kind, "p50_ms": t.median_ms, "p20_ms": t.p20_ms,
             "p80_ms": t.p80_ms, "vs_step": t.median_ms / base, "max_abs_err": err}
        )  # fmt: skip
    return rows


def markdown(rows: list[dict], head: str, args) -> str:
    lines = [
        f"# ONNX Runtime contrib linear-attention ops vs the standard-op scan, {machine_tag()}",
        "",
        "```",
        head,
        f"ONNX Runtime intra-op threads {args.threads}; repeats {args.repeats}, round-robin, "
        f"order rotated each round; load average {args.load_start} at start, {args.load_end} "
        "at end",
        "```",
        "",
        f"One forward Vim-Ti scan: u, delta (Bt, {E}, {L}), A ({E}, {N}), B, C (Bt, 1, {N}, {L}),"
        " softplus on. Contrib rows: the node alone (E heads, d_k N, d_v 1), its inputs "
        "precomputed, no D or gate; standard rows: the whole lowered scan (benchmarks/"
        f"onnx_scan.py). `x {BASELINE}`: median over the `{BASELINE}` row's. `{LAYERS} x 2`: the "
        f"median times {2 * LAYERS}, the scans of one Vim-Ti image if run this way (an "
        "extrapolation). Error: max abs against `vimc.ops.selective_scan`, output and state.",
        "",
        f"| Bt | route | kind | median ms | p20 ms | p80 ms | x {BASELINE} | {LAYERS} x 2 ms "
        "| max abs err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['route']} | {r['kind']} | {r['p50_ms']:.3f} | "
            f"{r['p20_ms']:.3f} | {r['p80_ms']:.3f} | {r['vs_step']:.2f} | "
            f"{r['p50_ms'] * 2 * LAYERS:.0f} | {r['max_abs_err']:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=positive_int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    ops = [op for op in CONTRIB if op in available_contrib_ops()]
    if not ops:
        print(f"this ONNX Runtime registers none of {', '.join(CONTRIB)}: nothing to compare")
        return 2
    torch.set_num_threads(args.threads)
    head = header()
    print(head, flush=True)
    args.load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for Bt in [int(b) for b in args.batches.split(",") if b]:
            rows += measure(Bt, ops, args, Path(tmp))
    args.load_end = os.getloadavg()
    text = markdown(rows, head, args)
    print(text)
    if not args.no_save:
        payload = {"machine": head, "threads": args.threads, "repeats": args.repeats,
                   "loadavg": [args.load_start, args.load_end], "rows": rows}  # fmt: skip
        save_results(Path(args.out_dir) / f"ort_contrib-{machine_tag()}", payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
