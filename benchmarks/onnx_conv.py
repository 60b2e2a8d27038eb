"""A Vim mixer's two depthwise convolutions in ONNX Runtime: shifted sums against Conv nodes.

    python benchmarks/onnx_conv.py                 # Vim-Ti shapes, batch 1 and 8, 2 threads
    python benchmarks/onnx_conv.py --batches 1 --repeats 10 --threads 1

The model computes each direction's conv + silu as K shifted multiply-adds on token-major
(B, L, E) activations (vimc.layers.causal_conv1d / anticausal_conv1d), which Inductor fuses
into one loop. Exported node by node, that is a Pad, K Slices, K Muls and K Adds per
direction. vimc's ONNX route records ``conv1d_channel_major`` instead: one Conv node per
direction on x.mT. This script exports both forms of one layer's two convolutions (input x of
shape (B, L, E); outputs both directions' u, token-major) through vimc's export path, checks
them against the model's function, and times them in ONNX Runtime round-robin, the order
alternated every round: median with p20/p80 and the ratio to the shifted sums. Results go to
benchmarks/results/onnx_conv-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from vimc.export.onnx import onnxruntime_session, run_onnxruntime

from vimc.cliargs import positive_int
from vimc.layers import anticausal_conv1d, causal_conv1d, conv1d_channel_major
from vimc.machine import header, machine_tag, save_results
from vimc.timing import time_round_robin

E, L, K = 384, 197, 4  # Vim-Ti: d_inner 384, 196 patches + class token, d_conv 4
LAYERS = 24
FORMS = ("shifted", "conv")
RESULTS = Path(__file__).resolve().parent / "results"


class TwoConvs(nn.Module):
    """Both directions' conv + silu of one mixer, in one of FORMS."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.f = nn.Conv1d(E, E, K, groups=E)
        self.b = nn.Conv1d(E, E, K, groups=E)

    def forward(self, x):  # (B, L, E) -> two (B, L, E)
        if self.form == "shifted":
            return (
                causal_conv1d(x, self.f.weight, self.f.bias, silu=True),
                anticausal_conv1d(x, self.b.weight, self.b.bias, silu=True),
            )
        xc = x.mT
        return (
            conv1d_channel_major(xc, self.f.weight, self.f.bias, True, silu=True).mT,
            conv1d_channel_major(xc, self.b.weight, self.b.bias, False, silu=True).mT,
        )


def export(form: str, path: Path, state: dict) -> tuple[Path, dict]:
    import onnx

    m = TwoConvs(form).eval()
    m.load_state_dict(state)
    x = torch.randn(2, L, E)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: batch},))
    torch.onnx.export(ep, (x,), str(path), dynamo=True, external_data=False, verbose=False)
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return path, dict(ops)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=positive_int, default=30)
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    torch.manual_seed(0)
    state = TwoConvs("shifted").state_dict()
    ref_model = TwoConvs("shifted").eval()
    ref_model.load_state_dict(state)
    head = header()
    print(head, f"| onnxruntime threads {args.threads}", flush=True)
    load_start = os.getloadavg()
    rows, nodes = [], {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        sessions = {}
        for form in FORMS:
            path, nodes[form] = export(form, Path(tmp) / f"{form}.onnx", state)
            sessions[form] = onnxruntime_session(path, threads=args.threads, spinning=False)
            print(f"{form}: nodes {nodes[form]}", flush=True)
        for batch in batches:
            x = torch.randn(batch, L, E)
            ref = ref_model(x)
            err = {}
            for form, sess in sessions.items():
                name = sess.get_inputs()[0].name
                outs = sess.run(None, {name: x.numpy()})
                err[form] = max(
                    (torch.from_numpy(o) - r).abs().max().item() for o, r in zip(outs, ref)
                )
                run_onnxruntime(sess, x)  # warm-up
            fns = {f: (lambda s=s, x=x: run_onnxruntime(s, x)) for f, s in sessions.items()}
            timings = time_round_robin(fns, rounds=args.repeats, warmup=0, rotate=True)
            base = timings["shifted"].median_ms
            for form in FORMS:
                t = timings[form]
                rows.append(
                    {
                        "batch": batch,
                        "form": form,
                        "p50_ms": t.median_ms,
                        "p20_ms": t.p20_ms,
                        "p80_ms": t.p80_ms,
                        "vs_shifted": t.median_ms / base,
                        "max_abs_err": err[form],
                    }
                )
                print(f"b{batch} {form:8s} {t.median_ms:8.3f} ms  err {err[form]:.1e}", flush=True)
    md = [
        f"# A mixer's two convolutions in ONNX Runtime, {machine_tag()}",
        "",
        "```",
        head,
        f"ONNX Runtime intra-op threads {args.threads}, spinning off; repeats {args.repeats}, "
        f"round-robin, order alternated each round; load average {load_start} at start, "
        f"{os.getloadavg()} at end",
        "```",
        "",
        f"Input x (B, {L}, {E}); both directions' depthwise conv (K = {K}) + silu, outputs "
        "token-major. `shifted`: the model's shifted multiply-adds exported as they are; "
        "`conv`: `conv1d_channel_major`, one Conv node per direction. "
        f"`{LAYERS} layers`: the median times {LAYERS} (an extrapolation to one Vim-Ti "
        "image). Error: max abs against the model's function.",
        "",
        "Nodes: " + "; ".join(f"`{f}` {nodes[f]}" for f in FORMS),
        "",
        f"| batch | form | median ms | p20 ms | p80 ms | x shifted | {LAYERS} layers ms "
        "| max abs err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['batch']} | {r['form']} | {r['p50_ms']:.3f} | {r['p20_ms']:.3f} | "
            f"{r['p80_ms']:.3f} | {r['vs_shifted']:.2f} | {r['p50_ms'] * LAYERS:.1f} | "
            f"{r['max_abs_err']:.1e} |"
        )
    text = "\n".join(md)
    print(text)
    if not args.no_save:
        payload = {"machine": head, "threads": args.threads, "nodes": nodes, "rows": rows}
        save_results(Path(args.out_dir) / f"onnx_conv-{machine_tag()}", payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
