"""Checkpoints: official training files (written here, wrapped as hustvl/Vim publishes them),
bare state_dicts, vimc's safetensors, refusal of unsafe pickles, one clear error for keys and
shapes that do not fit, pos_embed resizing for the middle class token."""

import argparse
import collections
import os

import pytest
import torch
import torch.nn.functional as F

import vimc
from vimc.checkpoint import CheckpointError, read_checkpoint, resize_pos_embed

from ..tolerances import EXACT
from ._helpers import SMALL, randomize_


def _official_file(path, sd, **extra):
    """The layout of the published files (vim_t_midclstok_76p1acc.pth and friends)."""
    args = argparse.Namespace(
        model="vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
        input_size=224,
        lr=5e-4,
        drop_path=0.0,
        batch_size=128,
        data_set="IMNET",
        output_dir="./out",
    )
    torch.save(
        {
            "model": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
            "lr_scheduler": {"t_initial": 300, "base_values": [5e-4]},
            "epoch": 299,
            "model_ema": {k: v.clone() for k, v in sd.items()},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 10},
            "args": args,
            **extra,
        },
        path,
    )


@pytest.fixture
def source(small_model):
    m = randomize_(small_model(), seed=1).eval()
    return m, torch.randn(2, 3, 32, 32)


def _same(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), **EXACT)


def test_official_training_checkpoint(tmp_path, source):
    m, x = source
    _official_file(tmp_path / "vim_t.pth", m.state_dict())
    loaded = vimc.create_model(
        "vim_tiny",
        checkpoint_path=tmp_path / "vim_t.pth",
        **{k: v for k, v in SMALL.items() if k != "num_classes"},
    ).eval()
    assert loaded.num_classes == 10  # taken from the checkpoint's head
    _same(loaded, m, x)


def test_bare_state_dict_with_wrapper_prefixes(tmp_path, source):
    m, x = source
    torch.save(m.state_dict(), tmp_path / "bare.pth")
    _same(
        vimc.create_model("vim_tiny", checkpoint_path=tmp_path / "bare.pth", **SMALL).eval(), m, x
    )
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "ddp.pth")
    _same(vimc.create_model("vim_tiny", checkpoint_path=tmp_path / "ddp.pth", **SMALL).eval(), m, x)


def test_save_pretrained_round_trip(tmp_path, small_model):
    m = randomize_(small_model(in_chans=1, num_classes=4, d_state=8), seed=2).eval()
    x = torch.randn(2, 1, 32, 32)
    d = m.save_pretrained(tmp_path / "out")
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    _same(vimc.create_model("vim_tiny", checkpoint_path=d).eval(), m, x)  # config from the file
    _same(vimc.create_model("vim_tiny", checkpoint_path=d / "model.safetensors").eval(), m, x)
    _same(vimc.VisionMamba.from_pretrained(d).eval(), m, x)
    mb = vimc.create_model("vim_tiny", checkpoint_path=d, dtype=torch.bfloat16)
    assert mb.head.weight.dtype == torch.bfloat16


class _Payload:
    """Unpickling this would run code: the loader must refuse before that happens."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _OrderedSub(collections.OrderedDict):
    pass


def _hook():
    return 1


@pytest.mark.parametrize("kind", ["custom_class", "ordereddict_subclass", "function"])
def test_refuses_unsafe_pickles(tmp_path, source, kind):
    m, _ = source
    marker = tmp_path / "executed"
    sd = m.state_dict()
    if kind == "custom_class":
        extra = {"payload": _Payload(str(marker))}
    elif kind == "ordereddict_subclass":
        sd = _OrderedSub(sd)
        extra = {}
    else:
        extra = {"hook": _hook}
    path = tmp_path / f"{kind}.pth"
    _official_file(path, sd, **extra)
    with pytest.raises(CheckpointError, match=r"refusing to load .*argparse\.Namespace"):
        vimc.create_model("vim_tiny", checkpoint_path=path, **SMALL)
    assert not marker.exists()


def test_missing_and_misshaped_keys_in_one_error(tmp_path, source):
    m, _ = source
    sd = m.state_dict()
    del sd["layers.1.mixer.D_b"]
    sd["layers.0.mixer.x_proj.weight"] = torch.zeros(7, 96)
    sd["layers.0.mixer.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        vimc.create_model("vim_tiny", checkpoint_path=tmp_path / "bad.pth", **SMALL)
    msg = str(info.value)
    assert "missing keys (1): layers.1.mixer.D_b" in msg
    assert "unexpected keys (1): layers.0.mixer.extra" in msg
    assert "layers.0.mixer.x_proj.weight: checkpoint [7, 96] vs model [35, 96]" in msg
    # not strict: everything that fits is loaded
    loose = vimc.create_model(
        "vim_tiny", checkpoint_path=tmp_path / "bad.pth", strict=False, **SMALL
    )
    torch.testing.assert_close(
        loose.layers[1].mixer.in_proj.weight, m.layers[1].mixer.in_proj.weight
    )


def test_num_classes_override_keeps_a_fresh_head(tmp_path, source):
    m, x = source
    _official_file(tmp_path / "c.pth", m.state_dict())
    ft = vimc.create_model(
        "vim_tiny", checkpoint_path=tmp_path / "c.pth", **{**SMALL, "num_classes": 3}
    ).eval()
    assert ft.head.weight.shape == (3, 48)
    with torch.no_grad():
        torch.testing.assert_close(ft.forward_features(x), m.forward_features(x), **EXACT)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "nope.pth")


# ---------------------------------------------------------------------------------------------
# pos_embed resizing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old,new", [((4, 4), (6, 6)), ((4, 4), (3, 5)), ((5, 5), (7, 7)), ((14, 14), (27, 27))]
)
def test_resize_pos_embed_middle_class_token(old, new):
    D = 8
    Mo, Mn = old[0] * old[1], new[0] * new[1]
    grid = torch.randn(1, old[0], old[1], D)
    cls = torch.randn(1, 1, D)
    flat = grid.reshape(1, Mo, D)
    pe = torch.cat([flat[:, : Mo // 2], cls, flat[:, Mo // 2 :]], 1)
    out = resize_pos_embed(pe, old, new)
    assert out.shape == (1, Mn + 1, D)
    torch.testing.assert_close(out[:, Mn // 2], cls[:, 0], **EXACT)  # cls at new middle
    want = (
        F.interpolate(grid.permute(0, 3, 1, 2), size=new, mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(1, Mn, D)
    )
    got = torch.cat([out[:, : Mn // 2], out[:, Mn // 2 + 1 :]], 1)
    torch.testing.assert_close(got, want)
    assert resize_pos_embed(pe, old, old) is pe


def test_checkpoint_at_another_resolution_and_stride(tmp_path, source):
    """img 32 / stride 8 (4x4 grid) loaded at img 48 (6x6) and at stride 4 (7x7)."""
    m, _ = source
    _official_file(tmp_path / "c.pth", m.state_dict())
    for over, grid in (({"img_size": 48}, (6, 6)), ({"stride": 4}, (7, 7))):
        big = vimc.create_model("vim_tiny", checkpoint_path=tmp_path / "c.pth", **{**SMALL, **over})
        assert big.patch_embed.grid_size == grid
        torch.testing.assert_close(
            big.pos_embed.data, resize_pos_embed(m.pos_embed.data, (4, 4), grid)
        )
        torch.testing.assert_close(
            big.pos_embed.data[:, grid[0] * grid[1] // 2], m.pos_embed.data[:, 8]
        )
