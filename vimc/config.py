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

    def __post_init__(self):
        """Refuse values no Vim can be built with, naming the field (a zero patch size would
        otherwise surface as a ZeroDivisionError deep in the model)."""
        positive = ("patch_size", "stride", "in_chans", "embed_dim", "depth", "d_state")
        positive += ("d_conv", "expand")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VimConfig.{name} must be an int >= 1, got {v!r}")
        if self.dt_rank is not None and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"VimConfig.dt_rank must be None or an int >= 1, got {self.dt_rank!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise ValueError(f"VimConfig.num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 0:
            raise ValueError(f"VimConfig.num_classes must be >= 0, got {self.num_classes}")
        size = self.img_size if isinstance(self.img_size, (tuple, list)) else (self.img_size,)
        if not (1 <= len(size) <= 2) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < self.patch_size for v in size
        ):
            raise ValueError(
                f"VimConfig.img_size must be an int or (H, W) of ints >= patch_size "
                f"({self.patch_size}), got {self.img_size!r}"
            )

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
        """The config a vimc file records (unknown keys ignored); ValueError if invalid."""
        if not isinstance(d, dict):
            raise ValueError(f"a VimConfig record must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)
