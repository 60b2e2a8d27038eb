"""What ``vimc info`` says about a model: its config, parameter count, tokens and FLOPs at its
resolution, as a dict (``--json``) or as text."""

from __future__ import annotations

import dataclasses

from vimc.flops import count_flops
from vimc.model import VisionMamba, get_variant


def model_info(model: VisionMamba) -> dict:
    """The facts ``vimc info --json`` prints. The model may live on the meta device: FLOPs
    are then counted on fake tensors, so any size costs nothing."""
    variant = get_variant(model.name)
    c = model.config
    gh, gw = model.patch_embed.grid_size
    flops = count_flops(model, c.img_hw)
    return {
        "model": model.name,
        "config": c.to_dict(),
        "pretrained_cfg": {
            k: list(v) if isinstance(v, tuple) else v for k, v in model.pretrained_cfg.items()
        },
        "built_in_weights": str(variant.weights_path) if variant.weights else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "resolution": list(c.img_hw),
        "tokens": gh * gw + 1,  # the patches and the class token
        "flops": flops,
        "gmacs": flops["total"] / 2e9,
    }


def info_text(model: VisionMamba, info: dict) -> str:
    """``info`` (from :func:`model_info`) as the lines ``vimc info`` prints."""
    variant = get_variant(model.name)
    c = model.config
    (h, w), (gh, gw) = c.img_hw, model.patch_embed.grid_size
    n, flops = info["parameters"], info["flops"]
    lines = [f"{model.name}"]
    if variant.description:
        lines.append(f"  {variant.description}")
    lines += [f"  {f.name:<16} {getattr(c, f.name)}" for f in dataclasses.fields(c)]
    lines += [
        f"  {'built-in weights':<16} {variant.weights or 'none'}",
        f"parameters         {n:,} ({n / 1e6:.2f}M)",
        f"at {h}x{w}: {gh}x{gw} patches + 1 class token = {gh * gw + 1} tokens",
        f"FLOPs (batch 1)    {flops['total'] / 1e9:.3f} G total = {flops['counted'] / 1e9:.3f} G "
        f"matmul/conv (torch.utils.flop_counter) + {flops['scan'] / 1e9:.3f} G selective scan "
        f"(analytic: the counter cannot see inside the op)",
        f"                   = {flops['total'] / 2e9:.3f} GMACs (papers' 'FLOPs' usually count "
        f"multiply-adds)",
    ]
    return "\n".join(lines)


__all__ = ["info_text", "model_info"]
