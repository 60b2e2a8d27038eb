"""Images, one table: each row a file and what ``load_images`` and ``vimc predict`` make of it
(a clean ImageError / exit 2 naming the file, or a prediction). High bit depths are scaled,
never clipped; Pillow's decompression-bomb limit is reported cleanly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import vimc
from vimc import cli
from vimc.data import ImageError, load_images, preprocess

from .tolerances import IMAGE_16_VS_8_BIT, IMAGE_16_VS_8_BIT_PROBS


def _gradient(h=32, w=32) -> np.ndarray:
    return np.linspace(0.0, 1.0, h * w).reshape(h, w)


def _build(kind, d):
    """Write the ``kind`` row's file under ``d``; returns its path."""
    g = _gradient()
    if kind == "non-image":
        p = d / "notes.png"
        p.write_text("not an image")
    elif kind == "truncated-jpeg":
        p = d / "cut.jpg"
        buf = io.BytesIO()
        Image.fromarray((g * 255).astype(np.uint8)).convert("RGB").save(buf, "JPEG")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "missing":
        p = d / "absent.png"
    elif kind == "directory":
        p = d / "a_folder.png"
        p.mkdir()
    elif kind == "decompression-bomb":  # over the limit the test sets (Image.MAX_IMAGE_PIXELS)
        p = d / "bomb.png"
        Image.new("L", (200, 200)).save(p)
    elif kind == "1x1":
        p = d / "dot.png"
        Image.new("RGB", (1, 1), (10, 200, 30)).save(p)
    elif kind == "grayscale":
        p = d / "gray.png"
        Image.fromarray((g * 255).astype(np.uint8), mode="L").save(p)
    elif kind == "rgba":
        p = d / "alpha.png"
        Image.fromarray((np.dstack([g] * 4) * 255).astype(np.uint8), mode="RGBA").save(p)
    elif kind == "16-bit":
        p = d / "deep.png"
        Image.fromarray((g * 65535).astype(np.uint16)).save(p)
    elif kind == "spaces and ünïcode":
        p = d / "a digit ünïcode 数字.png"
        Image.fromarray((g * 255).astype(np.uint8)).convert("RGB").save(p)
    else:
        raise AssertionError(kind)
    return p


# kind, fragment of the ImageError (None: it is classified)
ROWS = [
    ("non-image", "cannot read image"),
    ("truncated-jpeg", "cannot read image"),
    ("missing", "image not found"),
    ("directory", "directory"),
    ("decompression-bomb", "refusing image"),
    ("1x1", None),
    ("grayscale", None),
    ("rgba", None),
    ("16-bit", None),
    ("spaces and ünïcode", None),
]


@pytest.fixture
def small_bomb_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 200 > 2x: Pillow refuses


@pytest.fixture(scope="module")
def digits():
    return vimc.create_model("vim_digits", pretrained=True).eval()


@pytest.mark.parametrize("kind, fragment", ROWS, ids=[r[0] for r in ROWS])
def test_load_images(kind, fragment, tmp_path, digits, small_bomb_limit):
    p = _build(kind, tmp_path)
    if fragment is None:
        x = load_images([p], digits.pretrained_cfg)
        assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()
    else:
        with pytest.raises(ImageError, match=fragment) as e:
            load_images([p], digits.pretrained_cfg)
        assert p.name in str(e.value)


@pytest.mark.parametrize("kind, fragment", ROWS, ids=[r[0] for r in ROWS])
def test_predict(kind, fragment, tmp_path, small_bomb_limit, capsys):
    p = _build(kind, tmp_path)
    code = cli.main(["predict", str(p), "--json"])
    out, err = capsys.readouterr()
    if fragment is None:
        assert code == 0, err
        assert "vim_digits" in out
    else:
        assert code == 2, err
        assert err.startswith("vimc predict: error: ") and "Traceback" not in err


def test_16_bit_is_scaled_not_clipped(tmp_path, digits):
    """A 0..65535 gradient saved at 16 bits preprocesses like the same picture at 8 bits (within
    one 8-bit level) and gets the same prediction; clipping would make it all white."""
    g = _gradient()
    deep, flat = tmp_path / "deep.png", tmp_path / "flat.png"
    Image.fromarray((g * 65535).round().astype(np.uint16)).save(deep)
    Image.fromarray((g * 255).round().astype(np.uint8)).save(flat)
    assert Image.open(deep).mode.startswith("I")
    cfg = digits.pretrained_cfg
    a, b = load_images([deep], cfg), load_images([flat], cfg)
    one_level = 1 / 255 / min(cfg["std"])
    assert (a - b).abs().max() <= one_level + IMAGE_16_VS_8_BIT
    white = preprocess(Image.new("L", (32, 32), 255), cfg)
    assert (a[0] - white).abs().max() > 1.0
    with torch.no_grad():
        pa, pb = digits(a).softmax(-1), digits(b).softmax(-1)
    assert pa.argmax() == pb.argmax()
    assert (pa - pb).abs().max() < IMAGE_16_VS_8_BIT_PROBS
