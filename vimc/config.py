"""VimConfig: everything that fixes a Vim's parameters and preprocessing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VimConfig:
    """Everything that fixes a Vim's parameters and preprocessing."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    stride: int = 16
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(embed_dim / 16)
    num_classes: int = 1000
    drop_rate: float = 0.0  # dropout after pos_embed
    drop_path_rate: float = 0.0  # stochastic depth (training); inference ignores it
    norm_eps: float = 1e-5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @property
    def img_hw(self) -> tuple[int, int]:
        s = self.img_size
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def to_dict(self) -> dict:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, d: dict) -> VimConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)
