"""Compare deployment backends of one Vim on the same inputs: eager PyTorch, torch.compile,
ONNX Runtime (vimc.export.to_onnx: the standard-op file, and the plugin route's file that
vimc's ONNX Runtime plugin runs) and AOTInductor (vimc.export.to_aoti). Prints the machine
header, then per backend the parity against eager (max/mean abs error, relative RMS, top-1
agreement), the time it took to get ready (compile or export, and the first call) and the
median latency (``vimc.timing``).

    python examples/compare_backends.py                                  # built-in vim_digits
    python examples/compare_backends.py --model vim_tiny --batch 8       # random Vim-Ti, 224px
    python examples/compare_backends.py --checkpoint vim_t_midclstok_76p1acc.pth --model vim_tiny
    python examples/compare_backends.py --backends eager onnxruntime     # a subset

On a GPU, TensorRT joins through examples/tensorrt_engine.py. `vimc parity` is the command
line tool for the same comparison.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import vimc
from vimc.cliargs import positive_int
from vimc.machine import header
from vimc.timing import time_fn

BACKENDS = ("eager", "compile", "onnxruntime", "onnxruntime-plugin", "aoti")


def prepare(name: str, model, example: torch.Tensor, workdir: Path):
    """-> a callable x -> logits for backend ``name``."""
    if name == "eager":
        return model
    if name == "compile":
        return torch.compile(model)
    if name in ("onnxruntime", "onnxruntime-plugin"):
        from vimc.export.onnx import onnxruntime_session, run_onnxruntime, to_onnx

        # the plugin route: one vimc node per layer, run by vimc's plugin (registered by
        # onnxruntime_session for such files); else standard operators only
        scan = "plugin" if name == "onnxruntime-plugin" else "paired"
        path = to_onnx(model, workdir / f"model_{scan}.onnx", example=example, scan=scan)
        sess = onnxruntime_session(path)
        return lambda x: run_onnxruntime(sess, x)
    if name == "aoti":
        from vimc.export.aoti import load_aoti, to_aoti

        return load_aoti(to_aoti(model, workdir / "model.pt2", example=example))
    raise ValueError(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Compare eager / compile / ONNX Runtime / AOTI.")
    p.add_argument("--model", default="vim_digits")
    p.add_argument("--checkpoint", default=None, help="weights (default: built-in if any)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=positive_int, default=10, help="timed runs per backend")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--out", default=None, help="keep the exported files here")
    args = p.parse_args(argv)

    pretrained = args.checkpoint is None and args.model in vimc.list_models(pretrained=True)
    model = vimc.create_model(
        args.model, pretrained=pretrained, checkpoint_path=args.checkpoint
    ).eval()
    x = torch.randn(
        args.batch, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        ref = model(x)

    workdir = Path(args.out or tempfile.mkdtemp(prefix="vimc-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(header())
    print(f"{model.name}: input {tuple(x.shape)}")
    print(
        f"{'backend':<18} {'ready s':>8} {'max_abs':>9} {'mean_abs':>9} {'rel_rms':>9} "
        f"{'top1':>6} {'ms':>8}"
    )
    worst = 0.0
    for name in args.backends:
        t0 = time.perf_counter()
        try:
            fn = prepare(name, model, x, workdir)
            with torch.inference_mode():
                out = fn(x).float()  # first call: compiles for torch.compile
        except Exception as exc:  # a backend that cannot run here: say why, go on
            print(f"{name:<18} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            worst = float("inf")
            continue
        ready = time.perf_counter() - t0  # one-off: export or compile, and the first call
        d = (out - ref).double()
        rel = (d.pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt()).item()
        top1 = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
        with torch.inference_mode():
            timing = time_fn(lambda fn=fn: fn(x), warmup=1, repeats=args.iters)
        worst = max(worst, rel)
        print(
            f"{name:<18} {ready:8.1f} {d.abs().max().item():9.2e} {d.abs().mean().item():9.2e} "
            f"{rel:9.2e} {100 * top1:5.0f}% {timing.median_ms:8.2f}"
        )
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
