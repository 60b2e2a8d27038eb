"""The registered Vim variants: their configs, their weights (built in, or on the Hugging Face
Hub) and their names (short and official long ones), timm-style. ``create_model``
(vimc/model.py) builds them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vimc.config import VimConfig

WEIGHTS_DIR = Path(__file__).with_name("weights")


@dataclass(frozen=True)
class Variant:
    name: str
    config: VimConfig
    weights: str | None = None  # file under vimc/weights/ (or an absolute path)
    aliases: tuple[str, ...] = ()
    description: str = ""
    hf_hub_id: str | None = None  # Hugging Face Hub repository of the official weights
    hf_hub_filename: str | None = None  # the file in it

    @property
    def has_weights(self) -> bool:
        """Whether ``pretrained=True`` can load weights: built in, or named on the Hub."""
        return self.weights is not None or self.hf_hub_id is not None

    @property
    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        p = Path(self.weights)
        return p if p.is_absolute() else WEIGHTS_DIR / p


_VARIANTS: dict[str, Variant] = {}
_ALIASES: dict[str, str] = {}


def register_variant(
    name: str,
    config: VimConfig,
    *,
    weights: str | None = None,
    aliases: tuple[str, ...] = (),
    description: str = "",
    hf_hub_id: str | None = None,
    hf_hub_filename: str | None = None,
) -> Variant:
    """Add a model to ``create_model``/``list_models``. ``weights``: a file shipped in
    ``vimc/weights/`` (safetensors from ``save_pretrained``, or its directory) that
    ``pretrained=True`` loads; or ``hf_hub_id`` and ``hf_hub_filename``, a file on the Hugging
    Face Hub that ``pretrained=True`` fetches through the Hub cache. One line per variant::

        register_variant("vim_digits", VimConfig(img_size=32, ...), weights="vim_digits")
    """
    if (hf_hub_id is None) != (hf_hub_filename is None):
        raise ValueError("hf_hub_id and hf_hub_filename go together")
    v = Variant(name, config, weights, tuple(aliases), description, hf_hub_id, hf_hub_filename)
    for n in (name, *aliases):
        if n in _ALIASES and _ALIASES[n] != name:
            raise ValueError(f"model name {n!r} is already registered for {_ALIASES[n]!r}")
    _VARIANTS[name] = v
    for n in (name, *aliases):
        _ALIASES[n] = name
    return v


def get_variant(name: str) -> Variant:
    try:
        return _VARIANTS[_ALIASES[name]]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def list_models(
    pattern: str = "*", *, pretrained: bool = False, include_aliases: bool = False
) -> list[str]:
    """Registered model names matching a glob ``pattern`` (timm-style); ``pretrained=True``:
    only those with weights (built in or on the Hugging Face Hub)."""
    import fnmatch

    names = list(_ALIASES) if include_aliases else list(_VARIANTS)
    names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if pretrained:
        names = [n for n in names if get_variant(n).has_weights]
    return sorted(names)


_TAIL = "_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
# the official checkpoints (vim.md "Published accuracies"), on the Hub as hustvl published them
for _short, _D, _s, _file in (
    ("vim_tiny", 192, 16, "vim_t_midclstok_76p1acc.pth"),
    ("vim_tiny_s8", 192, 8, "vim_t_midclstok_ft_78p3acc.pth"),
    ("vim_small", 384, 16, "vim_s_midclstok_80p5acc.pth"),
    ("vim_small_s8", 384, 8, "vim_s_midclstok_ft_81p6acc.pth"),
):
    _size = _short.split("_")[1]
    _long = f"vim_{_size}_patch16" + ("_stride8" if _s == 8 else "") + _TAIL
    register_variant(
        _short,
        VimConfig(embed_dim=_D, stride=_s),
        aliases=(_long,),
        hf_hub_id=f"hustvl/Vim-{_size}-midclstok",
        hf_hub_filename=_file,
    )
register_variant(
    "vim_base",
    VimConfig(embed_dim=768),
    aliases=(
        "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
    ),
    hf_hub_id="hustvl/Vim-base-midclstok",
    hf_hub_filename="vim_b_midclstok_81p9acc.pth",
)
# vimc's built-in model: trained by examples/train_digits.py on scikit-learn's digits (32x32)
register_variant(
    "vim_digits",
    VimConfig(
        img_size=32,
        patch_size=4,
        stride=4,
        embed_dim=64,
        depth=4,
        d_state=16,
        num_classes=10,
        mean=(0.31,) * 3,
        std=(0.35,) * 3,
        crop_pct=1.0,
        interpolation="bicubic",
    ),
    weights="vim_digits.safetensors",
    description="4-layer Vim trained on scikit-learn's digits (examples/train_digits.py)",
)
