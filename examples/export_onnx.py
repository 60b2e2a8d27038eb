"""Export a Vim to ONNX and run it with ONNX Runtime.

    python examples/export_onnx.py                         # vim_tiny -> vim_tiny.onnx
    python examples/export_onnx.py --checkpoint vim_t_midclstok_76p1acc.pth --out vim_t.onnx
    python examples/export_onnx.py --plugin                # the plugin route, faster on CPU

The file has one input ``pixel_values`` (batch, 3, H, W), normalized with the model's
mean/std, and one output ``logits`` (batch, num_classes); the batch axis is dynamic. By
default it has standard operators only, so any ONNX runtime loads it without a plugin, e.g.
TensorRT: ``trtexec --onnx=vim_tiny.onnx --fp16 --minShapes=pixel_values:1x3x224x224 ...``.
With ``--plugin`` each layer's scan is one ``vimc.SelectiveScanBidirectional`` node, which
ONNX Runtime runs once vimc's plugin library is registered in the session options (below:
the plain onnxruntime API, as a C++ program would do it with RegisterCustomOpsLibrary). How
much faster it runs on CPU: README, "Export routes" (benchmarks/results/export-*.md).
"""

import argparse

import numpy as np
import onnxruntime as ort
import torch
from vimc.export import ort_plugin_path, to_onnx, trtexec_command

import vimc

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--model", default="vim_tiny")
ap.add_argument("--checkpoint", default=None)
ap.add_argument("--img-size", type=int, default=224)
ap.add_argument("--depth", type=int, default=None, help="fewer layers, for a quick try")
ap.add_argument("--out", default=None)
ap.add_argument("--plugin", action="store_true", help="the plugin route (scan='plugin')")
args = ap.parse_args()

extra = {} if args.depth is None else {"depth": args.depth}
model = vimc.create_model(
    args.model, checkpoint_path=args.checkpoint, img_size=args.img_size, **extra
).eval()
out = args.out or f"{args.model}.onnx"
to_onnx(model, out, scan="plugin" if args.plugin else "paired")  # dynamic batch
print(f"wrote {out}")

options = ort.SessionOptions()
if args.plugin:  # built on first use with the system C compiler, cached
    options.register_custom_ops_library(str(ort_plugin_path()))
    print(f"registered vimc's ONNX Runtime plugin {ort_plugin_path()}")
session = ort.InferenceSession(out, options, providers=["CPUExecutionProvider"])
images = np.random.default_rng(0).standard_normal(
    (2, 3, args.img_size, args.img_size), dtype=np.float32
)
(logits,) = session.run(["logits"], {"pixel_values": images})
with torch.no_grad():
    ref = model(torch.from_numpy(images)).numpy()
print(f"logits {logits.shape}, max abs difference to PyTorch: {np.abs(logits - ref).max():.2e}")
if not args.plugin:  # TensorRT has no kernel for vimc's nodes: the standard-op file only
    print("TensorRT engine:", trtexec_command(out, input_size=(3, args.img_size, args.img_size)))
