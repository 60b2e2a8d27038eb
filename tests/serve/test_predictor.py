"""The inference path shared by `vimc serve` and `vimc predict-folder` (no Ray needed)."""

from __future__ import annotations

import pickle

import pytest
import torch

from vimc.data import ImageError, load_images
from vimc.serve.predictor import (
    BACKENDS,
    Predictor,
    build_bundle,
    decode_image,
    load_served_model,
)


def test_decode_is_vimc_predicts_preprocessing(digits_bundle, digit_pngs):
    """Bytes decoded by a worker give the tensor `vimc predict` makes from the file."""
    predictor = Predictor(digits_bundle)
    for path in digit_pngs[:3]:
        expected = load_images([path], digits_bundle.pretrained_cfg)[0]
        torch.testing.assert_close(predictor.decode(path.read_bytes()), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "data, reason", [(b"", "empty image"), (b"GIF89a broken", "cannot read image")]
)
def test_unreadable_bytes_raise_image_error_with_the_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_top_k_is_best_first_with_labels(digits_bundle, digit_pngs):
    predictor = Predictor(digits_bundle)
    x = predictor.decode(digit_pngs[0].read_bytes())
    (top,) = predictor.classify([x], 3)
    assert [set(t) for t in top] == [{"label", "index", "score"}] * 3
    scores = [t["score"] for t in top]
    assert scores == sorted(scores, reverse=True)
    assert all(t["label"] == str(t["index"]) for t in top)  # vim_digits: the digit itself
    assert len(predictor.classify([x], 50)[0]) == 10  # k beyond the classes: all of them


def test_a_bundle_survives_pickling(digits_bundle, digit_pngs):
    """What Ray does to the bundle on its way to a replica changes no answer."""
    x = torch.stack([Predictor(digits_bundle).decode(p.read_bytes()) for p in digit_pngs])
    shipped = Predictor(pickle.loads(pickle.dumps(digits_bundle)))
    torch.testing.assert_close(
        shipped.probabilities(x), Predictor(digits_bundle).probabilities(x), rtol=0, atol=0
    )


def test_weight_sources():
    with pytest.raises(ValueError, match="no built-in weights: pass --pretrained"):
        load_served_model("vim_tiny")
    with pytest.raises(ValueError, match="at most one"):
        load_served_model("vim_digits", pretrained=True, random_init=True)
    with pytest.raises(ValueError, match="unknown model"):
        load_served_model("vim_nonexistent")
    assert load_served_model(None)[1] == "built-in weights"  # vim_digits by default
    model, weights = load_served_model("vim_digits", random_init=True)
    assert (model.name, weights) == ("vim_digits", "random initialization")


def test_backend_names(digits_bundle):
    from vimc.serve.cli import _BACKENDS

    assert _BACKENDS == BACKENDS  # the parser's copy (kept free of torch imports)
    with pytest.raises(ValueError, match="backend must be one of"):
        build_bundle(digits_bundle.module, "tensorrt")


@pytest.mark.slow
def test_onnxruntime_bundle_answers_as_eager(digits_bundle, digit_pngs):
    """The exported file's bytes, rebuilt into a session by a worker, classify as eager."""
    bundle = build_bundle(digits_bundle.module, "onnxruntime", weights=digits_bundle.weights)
    assert bundle.module is None and bundle.artifact
    eager, ort = Predictor(digits_bundle), Predictor(pickle.loads(pickle.dumps(bundle)), threads=1)
    ort.warm_up(4)
    x = torch.stack([eager.decode(p.read_bytes()) for p in digit_pngs])
    torch.testing.assert_close(ort.probabilities(x), eager.probabilities(x), rtol=1e-4, atol=1e-5)
