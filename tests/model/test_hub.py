"""Official weights through the Hugging Face Hub client, offline, from a Hub cache the test
writes in the cache's documented layout (refs/main + snapshots/<revision>/<file>)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vimc
from vimc.checkpoint import CheckpointError
from vimc.hub import parse_hub_path

from ..tolerances import EXACT, HUB_WEIGHT_SUM_REL
from ._helpers import randomize_, write_hub_cache

REPO, FILE = "hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"


@pytest.fixture(scope="module")
def official_tiny():
    """A random vim_tiny as an official training checkpoint (model, optimizer, epoch, args)."""
    m = randomize_(vimc.create_model("vim_tiny"), seed=1, scale=0.3).eval()
    ckpt = {
        "model": m.state_dict(),
        "optimizer": {},
        "epoch": 299,
        "args": argparse.Namespace(model="vim_tiny_patch16_224_bimambav2"),
    }
    return m, ckpt


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, official_tiny):
    """A Hub cache holding vim_tiny's official file; the client pointed at it, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    write_hub_cache(cache, REPO, FILE, official_tiny[1])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_pretrained_cfg_names_the_hub_file():
    for name, size, file in [
        ("vim_tiny", "tiny", FILE),
        ("vim_tiny_s8", "tiny", "vim_t_midclstok_ft_78p3acc.pth"),
        ("vim_small", "small", "vim_s_midclstok_80p5acc.pth"),
        ("vim_small_s8", "small", "vim_s_midclstok_ft_81p6acc.pth"),
        ("vim_base", "base", "vim_b_midclstok_81p9acc.pth"),
    ]:
        cfg = vimc.create_model(name, device="meta").pretrained_cfg
        assert cfg["hf_hub_id"] == f"hustvl/Vim-{size}-midclstok"
        assert cfg["hf_hub_filename"] == file
    assert "hf_hub_id" not in vimc.create_model("vim_digits").pretrained_cfg


def test_pretrained_loads_the_cached_official_file(hub_cache, official_tiny):
    m, _ = official_tiny
    x = torch.randn(1, 3, 224, 224)
    got = vimc.create_model("vim_tiny", pretrained=True).eval()
    for k, v in m.state_dict().items():
        torch.testing.assert_close(got.state_dict()[k], v, **EXACT, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(got(x), m(x), **EXACT)


def test_hf_hub_checkpoint_path(hub_cache, official_tiny):
    got = vimc.create_model("vim_tiny", checkpoint_path=f"hf-hub:{REPO}/{FILE}")
    torch.testing.assert_close(got.head.weight, official_tiny[0].head.weight, **EXACT)
    assert parse_hub_path(f"hf-hub:{REPO}/sub/dir/{FILE}") == (REPO, f"sub/dir/{FILE}")
    for bad in ("hf-hub:", "hf-hub:hustvl", "hf-hub:hustvl/Vim-tiny-midclstok"):
        with pytest.raises(CheckpointError, match="expected hf-hub:OWNER/REPO/FILE"):
            vimc.create_model("vim_tiny", checkpoint_path=bad)


def test_offline_without_a_cached_copy_names_repo_file_and_remedy(hub_cache):
    with pytest.raises(CheckpointError) as e:
        vimc.create_model("vim_small", pretrained=True)
    msg = str(e.value)
    assert "hustvl/Vim-small-midclstok" in msg and "vim_s_midclstok_80p5acc.pth" in msg
    assert "not in the Hub cache" in msg and "checkpoint_path=" in msg
    assert e.value.__cause__ is None and e.value.__context__ is None  # no client traceback


def test_hub_cache_and_offline_from_the_environment(tmp_path, official_tiny):
    """The documented variables, read by the Hub client in a fresh process: HF_HUB_CACHE
    points at the cache, HF_HUB_OFFLINE=1 forbids the network."""
    write_hub_cache(tmp_path / "hub", REPO, FILE, official_tiny[1])
    code = textwrap.dedent(
        """
        import vimc
        m = vimc.create_model("vim_tiny", pretrained=True)
        print(float(m.head.weight.double().sum()))
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    want = float(official_tiny[0].head.weight.double().sum())
    assert float(r.stdout.split()[-1]) == pytest.approx(want, rel=HUB_WEIGHT_SUM_REL)
