"""Classify images with a Vim checkpoint: an official hustvl/Vim training checkpoint (.pth), a
vimc safetensors file / save_pretrained folder, or the built-in digits model.

    python examples/classify.py --checkpoint vim_t_midclstok_76p1acc.pth img.jpg
    python examples/classify.py --checkpoint vim_t_midclstok_ft_78p3acc.pth \
        --model vim_tiny_s8 img.jpg
    python examples/classify.py digit.png                      # built-in vim_digits

Preprocessing follows the model's ``pretrained_cfg`` (Vim-Ti: shorter side to 256 bicubic,
center crop 224, ImageNet mean/std). Official checkpoints are read without unpickling
arbitrary objects (``weights_only`` loading that allows only ``argparse.Namespace``).
The same job from the shell: ``vimc predict --checkpoint FILE IMAGE...``.
"""

import argparse
import sys

import torch

import vimc
from vimc.data import ImageError, load_images
from vimc.imagenet_classes import class_names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Classify images with a Vim checkpoint.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="official .pth or vimc safetensors (default: built-in vim_digits)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="registered name (vimc.list_models()); default vim_tiny for a "
        "checkpoint, vim_digits without one",
    )
    p.add_argument("--topk", type=int, default=5)
    args = p.parse_args(argv)

    if args.checkpoint:
        model = vimc.create_model(args.model or "vim_tiny", checkpoint_path=args.checkpoint)
    else:
        model = vimc.create_model(args.model or "vim_digits", pretrained=True)
    model.eval()

    try:
        x = load_images(args.images, model.pretrained_cfg)  # (B, 3, H, W)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with torch.inference_mode():
        probs = model(x).softmax(-1)
    names = class_names(model.name, probs.shape[-1])
    top_p, top_i = probs.topk(min(args.topk, probs.shape[-1]), dim=-1)
    for path, ps, idx in zip(args.images, top_p.tolist(), top_i.tolist()):
        print(path)
        for p_, i in zip(ps, idx):
            print(f"  {names[i]:<30} {100 * p_:6.2f}%  (class {i})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
