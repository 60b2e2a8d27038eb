"""vimc.data: Pillow preprocessing per pretrained_cfg, the digits split and the shipped
held-out file, the built-in model's accuracy on it, and vimc.resolve, which picks the model
(and the built-in weights) from a name, a checkpoint or neither."""

import builtins
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from vimc import data, resolve

from .tolerances import PREPROCESS_CHANNEL_MEAN, WHITE_CROP

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
DIGITS_CFG = {
    "input_size": (3, 32, 32),
    "crop_pct": 1.0,
    "interpolation": "bicubic",
    "mean": (0.31, 0.31, 0.31),
    "std": (0.35, 0.35, 0.35),
}


def _cfg(size=224, crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), chans=3):
    return {
        "input_size": (chans, size, size),
        "crop_pct": crop_pct,
        "interpolation": "bicubic",
        "mean": mean[:chans],
        "std": std[:chans],
    }


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wh", [(300, 200), (200, 300), (256, 256), (17, 401)])
def test_preprocess_shape_and_dtype(wh):
    img = Image.new("RGB", wh, (10, 200, 30))
    x = data.preprocess(img, _cfg())
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32


def test_preprocess_normalizes_per_channel():
    x = data.preprocess(Image.new("RGB", (64, 48), (255, 0, 128)), _cfg(32, 1.0))
    want = torch.tensor([(1.0 - 0.5) / 0.25, (0.0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25])
    torch.testing.assert_close(x.mean(dim=(1, 2)), want, **PREPROCESS_CHANNEL_MEAN)


def test_preprocess_resize_then_center_crop():
    """Shorter side to int(224 / 0.875) = 256, then the central 224: a 512x256 image whose
    left and right quarters are black and middle white comes out all white."""
    a = np.zeros((256, 512, 3), np.uint8)
    a[:, 128:384] = 255
    x = data.preprocess(Image.fromarray(a), _cfg(224, 0.875, (0, 0, 0), (1, 1, 1)))
    # resized to 512x256 (already), crop 224 from the center: columns 144..368, all white
    assert x.min().item() > 1 - WHITE_CROP


def test_preprocess_grayscale_model_and_rgba_input():
    img = Image.new("RGBA", (40, 40), (255, 255, 255, 0))
    assert data.preprocess(img, _cfg(32, 1.0, chans=1)).shape == (1, 32, 32)
    assert data.preprocess(img, _cfg(32, 1.0)).shape == (3, 32, 32)


def test_preprocess_bad_cfg():
    with pytest.raises(ValueError, match="mean/std"):
        data.preprocess(
            Image.new("RGB", (8, 8)), {"input_size": (3, 8, 8), "mean": (0.5,), "std": (0.5,)}
        )
    with pytest.raises(ValueError, match="interpolation"):
        data.preprocess(Image.new("RGB", (8, 8)), {**_cfg(8), "interpolation": "cubic"})


def test_load_image_errors(tmp_path):
    with pytest.raises(data.ImageError, match="not found"):
        data.load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(data.ImageError, match="cannot read image"):
        data.load_image(bad)
    with pytest.raises(data.ImageError, match="directory"):
        data.load_image(tmp_path)
    truncated = tmp_path / "trunc.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(data.ImageError):
        data.load_image(truncated)


def test_load_images_batch(tmp_path):
    paths = []
    for i, size in enumerate([(30, 20), (20, 30)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", size, (i * 100, 0, 0)).save(paths[-1])
    assert data.load_images(paths, _cfg(16, 1.0)).shape == (2, 3, 16, 16)


def test_image_folder(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 20)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = data.ImageFolder(tmp_path, _cfg(16, 1.0))
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and y == 1
    with pytest.raises(data.ImageError, match="no class sub-folders"):
        data.find_images(tmp_path / "cat")


def test_random_shift_keeps_shape_and_fills_background():
    x = torch.ones(8, 3, 12, 12)
    g = torch.Generator().manual_seed(0)
    y = data.random_shift(x, 3, fill=[-1.0, -2.0, -3.0], generator=g)
    assert y.shape == x.shape
    vals = set(torch.unique(y).tolist())
    assert vals <= {1.0, -1.0, -2.0, -3.0}
    assert torch.equal(data.random_shift(x, 0), x)
    # each image keeps at least the (12 - 3)^2 core of ones on each channel
    assert ((y == 1).sum(dim=(2, 3)) >= 81).all()


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


def test_digits_test_file():
    x, y = data.load_digits_test()
    assert x.shape == (360, 8, 8) and x.dtype == np.uint8 and 0 <= x.min() and x.max() <= 16
    assert y.shape == (360,) and sorted(set(y.tolist())) == list(range(10))
    assert np.bincount(y).min() >= 35  # stratified: 35-37 of every digit
    assert data.DIGITS_TEST_FILE.stat().st_size < 50_000


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn not installed (the train extra)")
def test_digits_split_is_fixed_and_matches_shipped_file():
    x_tr, y_tr, x_te, y_te = data.load_digits_split()
    assert len(x_tr) == 1437 and len(x_te) == 360
    sx, sy = data.load_digits_test()
    assert np.array_equal(x_te, sx) and np.array_equal(y_te, sy)
    # train and held-out do not share images
    tr = {a.tobytes() for a in x_tr}
    assert sum(a.tobytes() in tr for a in x_te) <= 2  # the raw set holds a few exact duplicates


def test_missing_sklearn_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(data.MissingDependencyError, match=r"vimc\[train\]"):
        data.load_digits_split()
    x, _ = data.load_digits_test()  # the shipped split needs no scikit-learn
    assert len(x) == 360


def test_digit_to_image_round_trip():
    d = np.arange(64).reshape(8, 8) % 17
    img = data.digit_to_image(d)
    assert img.mode == "L" and img.size == (8, 8)
    assert np.array_equal(np.asarray(img), np.rint(d * 255 / 16).astype(np.uint8))
    x = data.digits_to_tensor(d[None], DIGITS_CFG)
    assert x.shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# the built-in model
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_builtin_digits_model_accuracy():
    """The shipped vim_digits weights on the 360 held-out digits: >= 97%."""
    import vimc

    model = vimc.create_model("vim_digits", pretrained=True).eval()
    x_te, y_te = data.load_digits_test()
    x = data.digits_to_tensor(x_te, model.pretrained_cfg)
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + 120]).argmax(-1) for i in range(0, len(x), 120)])
    acc = (pred == torch.from_numpy(y_te)).double().mean().item()
    assert acc >= 0.97, f"held-out accuracy {acc:.2%}"


def test_builtin_digits_weights_file():
    import vimc

    assert "vim_digits" in vimc.list_models(pretrained=True)
    path = data.DATA_DIR.parent / "weights" / "vim_digits.safetensors"
    assert path.exists() and path.stat().st_size < 1_000_000
    model = vimc.create_model("vim_digits", pretrained=True)
    cfg = model.pretrained_cfg
    assert tuple(cfg["input_size"]) == (3, 32, 32) and cfg["num_classes"] == 10


# ---------------------------------------------------------------------------------------------
# choosing the model: vimc.resolve
# ---------------------------------------------------------------------------------------------


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_model_defaults_to_the_built_in_model():
    import vimc

    model = resolve.load_model()
    assert model.name == "vim_digits" and not model.training
    assert _same_weights(model, vimc.create_model("vim_digits", pretrained=True))


def test_load_model_pretrained_auto():
    """ "auto": built-in weights where the variant has them, else random initialization."""
    import vimc

    digits = resolve.load_model("vim_digits", pretrained="auto")
    assert _same_weights(digits, vimc.create_model("vim_digits", pretrained=True))
    tiny = resolve.load_model("vim_tiny", pretrained="auto", depth=1, img_size=32)
    assert tiny.name == "vim_tiny" and len(tiny.layers) == 1 and not tiny.training
    random = resolve.load_model("vim_digits", pretrained=False)
    assert not _same_weights(random, digits)
    with pytest.raises(ValueError, match="pretrained must be"):
        resolve.load_model("vim_digits", pretrained="yes")


def test_load_model_errors(tmp_path):
    with pytest.raises(
        resolve.ModelNotFound, match=r"unknown model 'vim_huge'; known models: .*vim_tiny"
    ):
        resolve.load_model("vim_huge")
    assert issubclass(resolve.ModelNotFound, ValueError)  # what create_model raised before
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*none.pth"):
        resolve.load_model("vim_tiny", tmp_path / "none.pth")


def test_guess_model_from_checkpoint_shapes(tmp_path):
    """vimc's files record their architecture; official ones are told by width and stride."""
    import vimc

    model = vimc.create_model("vim_small_s8", depth=1)
    model.save_pretrained(tmp_path / "vimc_format")
    assert resolve.guess_model(tmp_path / "vimc_format") == "vim_small_s8"

    def official(name, width, tokens):
        path = tmp_path / name
        torch.save(
            {
                "model": {
                    "cls_token": torch.zeros(1, 1, width),
                    "pos_embed": torch.zeros(1, tokens, width),
                }
            },
            path,
        )
        return path

    assert resolve.guess_model(official("t.pth", 192, 197)) == "vim_tiny"
    assert resolve.guess_model(official("t8.pth", 192, 27 * 27 + 1)) == "vim_tiny_s8"
    assert resolve.guess_model(official("b.pth", 768, 197)) == "vim_base"
    with pytest.raises(resolve.ModelNotFound, match="embedding width 100 matches no registered"):
        resolve.guess_model(official("odd.pth", 100, 197))
    torch.save({"model": {"head.weight": torch.zeros(10, 192)}}, tmp_path / "headless.pth")
    with pytest.raises(resolve.ModelNotFound, match="not a Vim checkpoint"):
        resolve.guess_model(tmp_path / "headless.pth")
