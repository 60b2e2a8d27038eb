"""Fixtures of the export tests: a small Vim (2 layers, 64 px) and, once per session, the
expensive artifacts (Vim-Ti ONNX, small ONNX, small AOTInductor package)."""

import logging
import warnings

import pytest
import torch

import vimc

from ..tolerances import ONNX_VS_EAGER

SMALL = "vim_export_test"  # a registered 2-layer, 64 px Vim, so the CLI can name it
if SMALL not in vimc.list_models():
    vimc.register_variant(
        SMALL,
        vimc.VimConfig(img_size=64, depth=2, embed_dim=64),
        description="tiny Vim for the export tests",
    )


@pytest.fixture(autouse=True, scope="session")
def _quiet_exporter():
    # torch.onnx logs a line per missing torchvision op; onnxscript warns about deprecations
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _seeded(name, **kw):
    torch.manual_seed(0)
    return vimc.create_model(name, **kw).eval()


@pytest.fixture(scope="session")
def small_model():
    return _seeded(SMALL)


@pytest.fixture(scope="session")
def tiny_model():
    return _seeded("vim_tiny")


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(1)
    return {
        64: torch.randn(3, 3, 64, 64, generator=g),
        224: torch.randn(3, 3, 224, 224, generator=g),
    }


@pytest.fixture(scope="session")
def small_onnx(small_model, tmp_path_factory):
    from vimc.export import to_onnx

    return to_onnx(small_model, tmp_path_factory.mktemp("onnx") / "small.onnx")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    from vimc.export import to_onnx

    return to_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "vim_tiny.onnx")


@pytest.fixture(scope="session")
def small_aoti(small_model, tmp_path_factory):
    from vimc.export import to_aoti

    return to_aoti(small_model, tmp_path_factory.mktemp("aoti") / "small.pt2")


def assert_onnx_parity(path, model, x, atol=ONNX_VS_EAGER):
    """The ONNX file ``path`` in ONNX Runtime (vimc's plugin registered when it has vimc
    nodes) at batch 1 and 3 from one session, within ``atol`` of ``model`` on ``x``."""
    from vimc.export import onnxruntime_session
    from vimc.export.onnx import run_onnxruntime

    sess = onnxruntime_session(path)
    with torch.no_grad():
        for b in (1, 3):
            ref = model(x[:b])
            out = run_onnxruntime(sess, x[:b])
            assert out.shape == ref.shape
            err = (out - ref).abs().max().item()
            assert err <= atol, f"batch {b}: max abs error {err:.2e} > {atol}"
