"""Build a TensorRT engine for a Vim and check it against eager PyTorch (needs an NVIDIA GPU,
TensorRT >= 10.7 and torch-tensorrt: ``pip install 'vimc[tensorrt]'``).

Two routes, both from ``vimc.export``:

- ``--route torch-tensorrt`` (default): ``vimc.export.to_tensorrt`` compiles the exported
  program with torch-tensorrt; the selective scan runs as a TensorRT plugin generated from
  vimc's registered op, everything else as TensorRT layers. The result is a module you call
  like the model, saved as an ExportedProgram (``.ep``).
- ``--route onnx``: ``vimc.export.to_onnx`` writes an ONNX file of standard operators only
  (the scan as an ONNX ``Scan`` loop), and ``trtexec`` builds a plain engine from it, no
  plugin library needed. The script prints (and, if ``trtexec`` is on PATH, runs) e.g.::

    trtexec --onnx=vim_tiny.onnx --saveEngine=vim_tiny.engine --fp16 \\
        --minShapes=pixel_values:1x3x224x224 --optShapes=pixel_values:8x3x224x224 \\
        --maxShapes=pixel_values:32x3x224x224

    python examples/tensorrt_engine.py                                  # built-in vim_digits
    python examples/tensorrt_engine.py --model vim_tiny \\
        --checkpoint vim_t_midclstok_76p1acc.pth --dtype float16 --out vim_t_trt.ep

Without a GPU or TensorRT the script prints ``skipped: <reason>`` and exits 0; this
repository's CPU CI runs it that way (it has not been run on a GPU in CI).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from vimc.export import tensorrt_unavailable_reason, to_onnx, to_tensorrt, trtexec_command

import vimc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Build and check a TensorRT engine for a Vim.")
    p.add_argument("--model", default="vim_digits")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--route", choices=("torch-tensorrt", "onnx"), default="torch-tensorrt")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float16",
        help="engine precision",
    )
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--out", default=None, help=".ep (torch-tensorrt) or .engine (onnx) file")
    args = p.parse_args(argv)

    reason = tensorrt_unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0

    pretrained = args.checkpoint is None and args.model in vimc.list_models(pretrained=True)
    model = vimc.create_model(
        args.model, pretrained=pretrained, checkpoint_path=args.checkpoint
    ).eval()
    shape = tuple(model.pretrained_cfg["input_size"])
    work = Path(tempfile.mkdtemp(prefix="vimc-trt-"))
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model.cuda()(x.cuda()).float()

    if args.route == "onnx":
        onnx_path = to_onnx(model.cpu(), work / f"{model.name}.onnx")
        engine = args.out or str(work / f"{model.name}.engine")
        cmd = trtexec_command(
            onnx_path,
            engine,
            input_size=shape,
            max_batch=args.max_batch,
            opt_batch=max(1, args.max_batch // 4),
            fp16=args.dtype == "float16",
        )
        print(cmd)
        if shutil.which("trtexec") is None:
            print("trtexec is not on PATH: run the line above where TensorRT is installed")
            return 0
        return subprocess.run(cmd.split(), check=False).returncode

    trt_model = to_tensorrt(
        model, args.out, example=x.cuda(), dtype=args.dtype, max_batch=args.max_batch
    )
    with torch.inference_mode():
        got = trt_model(x.cuda().to(getattr(torch, args.dtype))).float()
    rel = ((got - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(
        f"TensorRT ({args.dtype}) vs eager float32: rel_rms {rel:.2e}, top-1 agreement "
        f"{agree:.0%}" + (f"; saved {args.out}" if args.out else "")
    )
    return 0 if rel < (1e-3 if args.dtype == "float32" else 3e-2) else 1


if __name__ == "__main__":
    sys.exit(main())
