"""Helpers for the model tests: a small config (depth 2, width 48, 32x32), random weights, and a
Hugging Face Hub cache written in the cache's documented layout."""

import torch

SMALL = dict(depth=2, embed_dim=48, img_size=32, patch_size=8, stride=8, num_classes=10)


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Random weights everywhere (heavier than the init) so that parity tests see every path;
    A_log, dt biases and D keep plausible ranges."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.rand(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(("A_log", "A_b_log")):
                p.copy_(torch.log(0.5 + 8 * r))
            elif name.endswith(("dt_proj.bias", "dt_proj_b.bias")):
                p.copy_(-4.0 + 3.0 * r)
            elif name.endswith((".D", ".D_b", "norm.weight", "norm_f.weight")):
                p.copy_(0.5 + r)
            else:
                fan_in = max(1, p[0].numel()) if p.dim() > 1 else 16
                p.copy_((2 * r - 1) * scale * (3.0 / fan_in) ** 0.5 * 1.7)
    return model


HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(cache, repo: str, filename: str, obj) -> None:
    """``obj`` saved as ``filename`` of ``repo``'s main revision in a Hub cache at ``cache``
    (refs/main holds the revision; snapshots/<revision>/<file> the file)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(HUB_REVISION)
    snap = root / "snapshots" / HUB_REVISION
    snap.mkdir(parents=True)
    torch.save(obj, snap / filename)
