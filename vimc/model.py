"""Vision Mamba (Vim) in timm's order: config, the model (``forward_features``,
``forward_head``, ``forward``, ``reset_classifier``, ``get_classifier``), initialization, the
variant registry and ``create_model``. Blocks live in layers.py, checkpoint I/O in
checkpoint.py. The math is vim.md's: middle class token at p = M // 2, abs pos_embed, float32
residual stream, RMSNorm, bidirectional mixer, final norm, class token, head.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from vimc.checkpoint import (
    CheckpointError,
    check_config_fits,
    fit_state_dict,
    load_state_dict,
    read_checkpoint,
    resize_pos_embed,
    save_pretrained,
)
from vimc.config import IMAGENET_MEAN, IMAGENET_STD, VimConfig  # noqa: F401  (re-exported)
from vimc.hub import hub_download, is_hub_path, parse_hub_path
from vimc.layers import SCAN_IMPLS, BiMambaMixer, Block, DropPath, PatchEmbed, RMSNorm
from vimc.registry import (  # noqa: F401  (the registry's names, re-exported)
    _ALIASES,
    _VARIANTS,
    WEIGHTS_DIR,
    Variant,
    get_variant,
    list_models,
    register_variant,
)

# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


class VisionMamba(nn.Module):
    """Vim: patch embedding, a middle class token, ``depth`` bidirectional Mamba blocks."""

    def __init__(
        self,
        config: VimConfig,
        *,
        scan_impl: str = "fast",
        dynamic_img_size: bool = False,
        name: str | None = None,
        init: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.config = c = config
        self.name = name
        self.dynamic_img_size = dynamic_img_size
        self.num_classes = c.num_classes
        self.num_features = self.embed_dim = D = c.embed_dim
        self.patch_embed = PatchEmbed(c.img_hw, c.patch_size, c.stride, c.in_chans, D, **kw)
        M = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D, **kw))
        self.pos_embed = nn.Parameter(torch.zeros(1, M + 1, D, **kw))
        self.pos_drop = nn.Dropout(c.drop_rate) if c.drop_rate > 0 else nn.Identity()
        # stochastic depth: linspace(0, rate, depth) shifted by one; the final add uses `rate`
        dpr = [0.0] + torch.linspace(0, c.drop_path_rate, c.depth).tolist()
        self.layers = nn.ModuleList(
            [
                Block(
                    D,
                    BiMambaMixer(D, c.d_state, c.d_conv, c.expand, c.dt_rank, scan_impl, **kw),
                    drop_path=dpr[i],
                    eps=c.norm_eps,
                    **kw,
                )
                for i in range(c.depth)
            ]
        )
        self.drop_path = DropPath(c.drop_path_rate) if c.drop_path_rate > 0 else nn.Identity()
        self.norm_f = RMSNorm(D, eps=c.norm_eps, **kw)
        self.head = nn.Linear(D, c.num_classes, **kw) if c.num_classes > 0 else nn.Identity()
        self.pretrained_cfg = self.default_cfg = {
            "architecture": name,
            "input_size": (c.in_chans, *c.img_hw),
            "mean": c.mean,
            "std": c.std,
            "crop_pct": c.crop_pct,
            "interpolation": c.interpolation,
            "num_classes": c.num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        }
        if init and device != "meta" and getattr(device, "type", None) != "meta":
            init_weights(self)

    # -- scan implementation -------------------------------------------------------------------
    @property
    def scan_impl(self) -> str:
        return self.layers[0].mixer.scan_impl if len(self.layers) else "fast"

    @scan_impl.setter
    def scan_impl(self, value: str) -> None:
        if value not in SCAN_IMPLS:
            raise ValueError(f"scan_impl must be one of {SCAN_IMPLS}, got {value!r}")
        for layer in self.layers:
            layer.mixer.scan_impl = value

    # -- timm API ------------------------------------------------------------------------------
    def _pos_embed_for(self, H: int, W: int) -> torch.Tensor:
        if (H, W) == self.patch_embed.img_size:
            return self.pos_embed
        if not self.dynamic_img_size:
            raise ValueError(
                f"{self.name or 'VisionMamba'}: expected input of size "
                f"{self.patch_embed.img_size[0]}x{self.patch_embed.img_size[1]} (H x W), got "
                f"{H}x{W}; create the model with img_size=({H}, {W}) or dynamic_img_size=True"
            )
        return resize_pos_embed(
            self.pos_embed, self.patch_embed.grid_size, self.patch_embed.grid_for((H, W))
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normed tokens (B, L, D), the class token at index (L - 1) // 2."""
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected input (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}"
            )
        pos_embed = self._pos_embed_for(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        B, M, _ = x.shape
        p = M // 2
        # cat promotes like the official code (bf16 patches + float32 class token under autocast)
        x = torch.cat((x[:, :p], self.cls_token.expand(B, -1, -1), x[:, p:]), dim=1)
        x = self.pos_drop(x + pos_embed)
        hidden, residual = x, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        residual = residual + self.drop_path(hidden).float()
        return self.norm_f(residual, out_dtype=hidden.dtype)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normed tokens (B, L, D) -> the class token (B, D) -> logits (B, num_classes)."""
        x = x[:, (x.shape[1] - 1) // 2]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        p = self.norm_f.weight
        self.num_classes = num_classes
        self.head = (
            nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        if num_classes > 0:
            _trunc_normal(self.head.weight, 0.02)
            nn.init.zeros_(self.head.bias)
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        self.pretrained_cfg = self.default_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def save_pretrained(self, directory) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> VisionMamba:
        """Load a directory (or .safetensors file) written by ``save_pretrained``, rebuilt from
        its own config; ``kwargs`` as for ``create_model``."""
        _, record = read_checkpoint(path)
        if record is None:
            raise CheckpointError(
                f"{path} has no vimc config (not written by save_pretrained); use "
                f"create_model(name, checkpoint_path=...)"
            )
        name = record.get("architecture")
        if name in _ALIASES:
            return create_model(name, checkpoint_path=path, **kwargs)
        fields = {f.name for f in dataclasses.fields(VimConfig)}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        config = VimConfig.from_dict(record["config"])
        return _load_checkpoint(name, config, path, overrides=overrides, **kwargs)


# ---------------------------------------------------------------------------------------------
# initialization (vim.md "Initialization", in the official order)
# ---------------------------------------------------------------------------------------------


def _trunc_normal(t: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0)  # timm's trunc_normal_: absolute bounds


@torch.no_grad()
def init_weights(model: VisionMamba, generator: torch.Generator | None = None) -> None:
    """The official initialization for training from scratch. Mixers: PyTorch defaults for
    in_proj/conv1d/x_proj, dt_proj.weight ~ U(+-R^-0.5), dt_proj.bias = softplus^-1(dt) with
    dt log-uniform in [1e-3, 0.1] clamped >= 1e-4, A_log = log(1..N), D = 1. Then patch_embed
    lecun-normal, head and pos_embed/cls_token trunc-normal(0.02); every Linear bias zero except
    dt_proj.bias (so dt_proj_b.bias is zero, as in the official code); out_proj kaiming-uniform
    (a=sqrt 5) / sqrt(depth)."""
    depth = len(model.layers)
    for layer in model.layers:
        m = layer.mixer
        for mod in (m.in_proj, m.conv1d, m.conv1d_b, m.x_proj, m.x_proj_b, m.dt_proj_b):
            mod.reset_parameters()
        bound = m.dt_rank**-0.5
        nn.init.uniform_(m.dt_proj.weight, -bound, bound)
        dt = torch.exp(
            torch.rand(m.d_inner, device=m.A_log.device) * (math.log(0.1) - math.log(1e-3))
            + math.log(1e-3)
        ).clamp(min=1e-4)
        m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A_log = torch.log(
            torch.arange(1, m.d_state + 1, dtype=torch.float32, device=m.A_log.device)
        )
        m.A_log.copy_(A_log.expand_as(m.A_log))
        m.A_b_log.copy_(A_log.expand_as(m.A_b_log))
        m.D.fill_(1.0)
        m.D_b.fill_(1.0)
        m.dt_proj_b.bias.zero_()
        nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
        m.out_proj.weight /= math.sqrt(depth)
        layer.norm.weight.fill_(1.0)
    w = model.patch_embed.proj.weight
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    nn.init.trunc_normal_(w, std=1.0, a=-2.0, b=2.0)
    w *= math.sqrt(1.0 / fan_in) / 0.87962566103423978  # lecun normal (variance scaling)
    nn.init.zeros_(model.patch_embed.proj.bias)
    if isinstance(model.head, nn.Linear):
        _trunc_normal(model.head.weight, 0.02)
        nn.init.zeros_(model.head.bias)
    _trunc_normal(model.pos_embed, 0.02)
    _trunc_normal(model.cls_token, 0.02)
    model.norm_f.weight.fill_(1.0)


# ---------------------------------------------------------------------------------------------
# the factory
# ---------------------------------------------------------------------------------------------


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint_path=None,
    scan_impl: str = "fast",
    dynamic_img_size: bool = False,
    strict: bool = True,
    device=None,
    dtype: torch.dtype | None = None,
    **overrides,
) -> VisionMamba:
    """Build a registered Vim (``list_models()``), timm-style.

    ``pretrained=True`` loads the variant's weights: built in (``vimc/weights/``), or the
    official checkpoint named by ``pretrained_cfg["hf_hub_id"]``/``["hf_hub_filename"]``,
    fetched through the Hugging Face Hub cache (``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` uses the
    cached copy only). ``checkpoint_path``: an official training checkpoint or bare state_dict
    (.pth), vimc's safetensors (file or ``save_pretrained`` directory), or
    ``"hf-hub:OWNER/REPO/FILE"``, a file on the Hub. ``overrides``: any
    ``VimConfig`` field (img_size, patch_size, stride, embed_dim, depth, d_state, num_classes,
    drop_path_rate, in_chans, ...). A checkpoint learned at another img_size/stride has its
    pos_embed resized; with ``num_classes`` overridden to a value other than the checkpoint's,
    the head is left freshly initialized (fine-tuning).
    """
    variant = get_variant(name)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(VimConfig)}
    if unknown:
        fields = [f.name for f in dataclasses.fields(VimConfig)]
        raise TypeError(
            f"create_model: unknown argument(s) {sorted(unknown)}; model options "
            f"are the VimConfig fields {fields}"
        )
    if pretrained and checkpoint_path is None:
        if not variant.has_weights:
            raise ValueError(
                f"{name!r} has no published weights; pass checkpoint_path= (an official .pth "
                f"checkpoint or vimc safetensors). Models with weights: "
                f"{list_models(pretrained=True) or 'none'}"
            )
        checkpoint_path = variant.weights_path or hub_download(
            variant.hf_hub_id, variant.hf_hub_filename
        )
    elif is_hub_path(checkpoint_path):
        checkpoint_path = hub_download(*parse_hub_path(checkpoint_path))
    config = dataclasses.replace(variant.config, **overrides)
    if checkpoint_path is None:
        model = VisionMamba(
            config,
            scan_impl=scan_impl,
            dynamic_img_size=dynamic_img_size,
            name=variant.name,
            device=device,
            dtype=dtype,
        )
    else:
        model = _load_checkpoint(
            variant.name,
            config,
            checkpoint_path,
            overrides=overrides,
            scan_impl=scan_impl,
            dynamic_img_size=dynamic_img_size,
            strict=strict,
            device=device,
            dtype=dtype,
        )
    if variant.hf_hub_id is not None and model.name == variant.name:
        model.pretrained_cfg.update(
            hf_hub_id=variant.hf_hub_id, hf_hub_filename=variant.hf_hub_filename
        )
    return model


def _load_checkpoint(
    name,
    config,
    path,
    *,
    overrides: dict,
    scan_impl: str = "fast",
    dynamic_img_size: bool = False,
    strict: bool = True,
    device=None,
    dtype=None,
) -> VisionMamba:
    """Build ``name``'s model and fill it from ``path`` (create_model's checkpoint route).

    vimc files carry their config: it replaces the registry's, then ``overrides`` apply.
    Official files carry none: ``num_classes`` follows the checkpoint's head unless
    overridden. An overridden ``num_classes`` different from the checkpoint's head keeps the
    new head freshly initialized (fine-tuning, as timm does); a grid other than the
    checkpoint's resizes pos_embed."""
    sd, record = read_checkpoint(path)
    if record is not None:
        name = record.get("architecture") or name
        config = dataclasses.replace(VimConfig.from_dict(record["config"]), **overrides)
    head_w = sd.get("head.weight")
    ckpt_classes = head_w.shape[0] if head_w is not None else 0
    if "num_classes" not in overrides:
        config = dataclasses.replace(config, num_classes=ckpt_classes)
    keep: tuple[str, ...] = ()
    if config.num_classes != ckpt_classes:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        keep = ("head.",)
    # a recorded config is checked against the file's tensors, and every key and shape
    # against a model on the meta device (no memory), before the real model is allocated
    if record is not None:
        check_config_fits(config, sd, path)
    if strict:
        probe = VisionMamba(config, name=name, device="meta")
        _, problems, msg = fit_state_dict(probe, sd, source=str(path), keep=keep)
        if any(problems.values()):
            raise CheckpointError(msg)
    model = VisionMamba(
        config,
        scan_impl=scan_impl,
        dynamic_img_size=dynamic_img_size,
        name=name,
        device=device,
        dtype=dtype,
    )
    load_state_dict(model, sd, strict=strict, source=str(path), keep=keep)
    return model


__all__ = [
    "VimConfig",
    "VisionMamba",
    "Variant",
    "create_model",
    "list_models",
    "register_variant",
    "get_variant",
    "init_weights",
]
