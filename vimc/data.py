"""Pixels in: evaluation preprocessing with Pillow, and the handwritten digits data.

Preprocessing follows a model's ``pretrained_cfg`` (timm's recipe): resize the shorter side to
``int(size / crop_pct)`` with the cfg's interpolation, center-crop ``size``, scale to [0, 1],
normalize with the cfg's mean and std. Images are converted to the model's channel count
(RGB for 3 channels, grayscale for 1) first.

The digits are scikit-learn's ``load_digits`` (1,797 real 8x8 scans, ink = 16, paper = 0, from
the UCI "Optical Recognition of Handwritten Digits" set). The split is fixed::

    train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=0)

-> 1,437 training and 360 held-out images. The held-out part ships with vimc as
``vimc/data/digits_test.npz`` (uint8 images 0..16, int64 labels), so ``vimc demo`` and the
accuracy test run without scikit-learn; training needs scikit-learn (the ``train`` extra).
A digit becomes a model input through the same Pillow path as any photo: 8x8 grayscale image
(0..16 scaled to 0..255) -> preprocess(cfg) (bicubic upscaling to 32x32 for ``vim_digits``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from vimc.config import IMAGENET_MEAN, IMAGENET_STD

DATA_DIR = Path(__file__).with_name("data")
DIGITS_TEST_FILE = DATA_DIR / "digits_test.npz"
DIGITS_SPLIT = {"test_size": 0.2, "random_state": 0, "stratify": True}
DIGIT_NAMES = tuple(str(i) for i in range(10))

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageError(ValueError):
    """An image file that does not exist or cannot be decoded."""


class MissingDependencyError(ImportError):
    """An optional dependency (scikit-learn for training on the digits) is not installed."""


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------


def _resample(name: str):
    from PIL import Image

    table = {
        "bicubic": Image.Resampling.BICUBIC,
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
        "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX,
        "hamming": Image.Resampling.HAMMING,
    }
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; one of {sorted(table)}") from None


def data_config(cfg: dict) -> dict:
    """The preprocessing part of a ``pretrained_cfg``, with timm's defaults filled in."""
    c, h, w = cfg.get("input_size", (3, 224, 224))
    return {
        "input_size": (int(c), int(h), int(w)),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        "std": tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
    }


def load_image(path) -> PIL.Image.Image:  # noqa: F821  (PIL imported lazily)
    """Open and fully decode an image; ImageError (with the path) if missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"expected an image file, got a directory: {path}")
    return _decode(path, f" {path}")


def decode_image(data: bytes) -> PIL.Image.Image:  # noqa: F821  (PIL imported lazily)
    """An image file's raw bytes (PNG, JPEG, ...) -> a fully decoded image, as
    :func:`load_image` reads a file (what a server receives); ImageError with Pillow's reason,
    also for an empty body."""
    if not data:
        raise ImageError("empty image: send the image file's bytes")
    return _decode(io.BytesIO(data), "")


def _decode(source, name: str):
    """Open and fully decode ``source`` (a path or a file object), errors naming ``name``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            im.load()
            return im.copy()
    except Image.DecompressionBombError as exc:  # Pillow's pixel limit, Image.MAX_IMAGE_PIXELS
        raise ImageError(f"refusing image{name}: {exc}") from None
    except UnidentifiedImageError:  # Pillow's message names a path, or only "a buffer"
        raise ImageError(f"cannot read image{name}: not an image format Pillow knows") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image{name}: {exc}") from None


def _to_8bit(img):
    """High-bit-depth grayscale (16-bit "I;16*", 32-bit "I", float "F") scaled into 8 bits.
    ``Image.convert`` would clip instead: every value over 255 of a 16-bit image becomes white."""
    from PIL import Image

    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    a = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        top = 65535.0
    elif img.mode == "F":
        top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
    else:  # "I": Pillow's mode for 16-bit PNGs, or 8-bit data widened
        top = 65535.0 if a.size and a.max() > 255 else 255.0
    a = np.nan_to_num(np.clip(a / top, 0.0, 1.0), nan=0.0)
    return Image.fromarray(np.round(a * 255.0).astype(np.uint8), mode="L")


def preprocess(img, cfg: dict) -> torch.Tensor:
    """A PIL image -> a normalized float32 tensor (C, H, W) per ``cfg`` (a pretrained_cfg).

    Resize the shorter side to ``int(size / crop_pct)`` (for non-square sizes: the longer
    target side, timm's rule), center crop to (H, W), scale to [0, 1], normalize."""

    d = data_config(cfg)
    C, H, W = d["input_size"]
    if C not in (1, 3) or len(d["mean"]) != C or len(d["std"]) != C:
        raise ValueError(
            f"cfg input_size {d['input_size']} does not match mean/std "
            f"{d['mean']}/{d['std']} (1 or 3 channels)"
        )
    img = _to_8bit(img).convert("RGB" if C == 3 else "L")
    scale = int(max(H, W) / d["crop_pct"]) if d["crop_pct"] > 0 else max(H, W)
    w0, h0 = img.size
    if w0 <= h0:
        nw, nh = scale, max(1, round(h0 * scale / w0))
    else:
        nw, nh = max(1, round(w0 * scale / h0)), scale
    if (nw, nh) != (w0, h0):
        img = img.resize((nw, nh), _resample(d["interpolation"]))
    if nw < W or nh < H:  # only with crop_pct > 1: pad by resizing up to the crop
        img = img.resize((max(nw, W), max(nh, H)), _resample(d["interpolation"]))
        nw, nh = img.size
    left, top = int(round((nw - W) / 2.0)), int(round((nh - H) / 2.0))
    img = img.crop((left, top, left + W, top + H))
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = a[:, :, None] if a.ndim == 2 else a
    x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    mean = torch.tensor(d["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(d["std"], dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def load_images(paths: Iterable, cfg: dict) -> torch.Tensor:
    """Image files -> a batch (B, C, H, W) preprocessed per ``cfg``."""
    return torch.stack([preprocess(load_image(p), cfg) for p in paths])


# ---------------------------------------------------------------------------------------------
# ImageFolder-style datasets (root/class_name/image.jpg), read with Pillow
# ---------------------------------------------------------------------------------------------


def find_images(root) -> tuple[list[tuple[Path, int]], list[str]]:
    """``root/<class>/<image>`` -> ([(path, class index)], sorted class names)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImageError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    items = [
        (p, i)
        for i, c in enumerate(classes)
        for p in sorted((root / c).rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]
    if not items:
        raise ImageError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) under {classes}")
    return items, classes


class ImageFolder(torch.utils.data.Dataset):
    """A folder of class sub-folders; ``transform(PIL image) -> tensor`` (default: preprocess
    per ``cfg``). Items are (image tensor, class index)."""

    def __init__(self, root, cfg: dict | None = None, transform=None):
        self.samples, self.classes = find_images(root)
        if transform is None and cfg is None:
            raise ValueError("ImageFolder needs a cfg (pretrained_cfg) or a transform")
        self.transform = transform or (lambda im: preprocess(im, cfg))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(load_image(path)), label


# ---------------------------------------------------------------------------------------------
# the digits
# ---------------------------------------------------------------------------------------------


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise MissingDependencyError(
            "the digits training data comes from scikit-learn, which is not installed: "
            "pip install 'vimc[train]' (or pip install scikit-learn). The held-out split ships "
            "with vimc (vimc.data.load_digits_test()) and needs no scikit-learn."
        ) from None
    return load_digits, train_test_split


def load_digits_split():
    """The fixed split of scikit-learn's digits: (x_train, y_train, x_test, y_test), images
    uint8 (n, 8, 8) with values 0..16, labels int64. Needs scikit-learn."""
    load_digits, train_test_split = _sklearn_digits()
    d = load_digits()
    x = d.images.astype(np.uint8)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x,
        y,
        test_size=DIGITS_SPLIT["test_size"],
        stratify=y,
        random_state=DIGITS_SPLIT["random_state"],
    )
    return x_tr, y_tr, x_te, y_te


def load_digits_test(path=DIGITS_TEST_FILE):
    """The held-out digits shipped with vimc: (images uint8 (360, 8, 8), labels int64)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: regenerate it with "
            f"`python examples/train_digits.py --write-test-split`"
        )
    with np.load(path) as f:
        return f["images"].astype(np.uint8), f["labels"].astype(np.int64)


def save_digits_test(path=DIGITS_TEST_FILE) -> Path:
    """Write the held-out split (from scikit-learn) to ``path``."""
    _, _, x_te, y_te = load_digits_split()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=x_te, labels=y_te)
    return path


def digit_to_image(digit: np.ndarray):
    """One 8x8 digit (values 0..16) -> an 8x8 grayscale PIL image (ink bright, 0..255)."""
    from PIL import Image

    a = np.clip(np.rint(np.asarray(digit, dtype=np.float32) * (255.0 / 16.0)), 0, 255)
    return Image.fromarray(a.astype(np.uint8), mode="L")


def digits_to_tensor(images: Sequence[np.ndarray], cfg: dict) -> torch.Tensor:
    """8x8 digits (n, 8, 8) -> model inputs (n, C, H, W), through ``preprocess``."""
    return torch.stack([preprocess(digit_to_image(d), cfg) for d in images])


def random_shift(
    x: torch.Tensor,
    max_shift: int,
    fill: torch.Tensor | float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Translate each image of (B, C, H, W) by up to ``max_shift`` pixels in x and y, filling
    the uncovered border with ``fill`` (per channel: the normalized background)."""
    if max_shift <= 0:
        return x
    B, C, H, W = x.shape
    p = max_shift
    fill = torch.as_tensor(fill, dtype=x.dtype).reshape(-1, 1, 1).expand(C, 1, 1)
    padded = fill.expand(C, H + 2 * p, W + 2 * p).repeat(B, 1, 1, 1)
    padded[:, :, p : p + H, p : p + W] = x
    dy, dx = torch.randint(0, 2 * p + 1, (2, B), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + H, dx[i] : dx[i] + W] for i in range(B)])


__all__ = [
    "DIGIT_NAMES",
    "DIGITS_SPLIT",
    "DIGITS_TEST_FILE",
    "ImageError",
    "ImageFolder",
    "MissingDependencyError",
    "data_config",
    "digit_to_image",
    "digits_to_tensor",
    "find_images",
    "load_digits_split",
    "load_digits_test",
    "load_image",
    "load_images",
    "preprocess",
    "random_shift",
    "save_digits_test",
]
