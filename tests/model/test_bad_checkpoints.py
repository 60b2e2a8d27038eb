"""Bad checkpoints, one table: each row a file and the error ``create_model(checkpoint_path=)``
raises, and ``vimc predict --checkpoint`` reports (exit 2, one error line first, no
traceback). Nothing is ever unpickled beyond tensors and argparse.Namespace."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import vimc
from vimc import cli
from vimc.checkpoint import CheckpointError


class _Payload:
    """A pickle whose loading would run code: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _official(path, sd):
    torch.save({"model": sd, "epoch": 3}, path)


def _with(sd, key, value):
    return {**sd, key: value}


def _safetensors(path, tensors, record):
    from safetensors.torch import save_file

    meta = {"vimc": json.dumps(record)} if record is not None else None
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def _build(kind, d, sd, config):
    """Write the ``kind`` row's file under ``d``; returns its path."""
    p = d / f"{kind}.pth"
    if kind == "pickle-payload":
        p.write_bytes(pickle.dumps({"model": _Payload(d / "PAYLOAD_RAN")}, protocol=2))
    elif kind == "zero-byte":
        p.write_bytes(b"")
    elif kind == "truncated":
        _official(p, sd)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "directory":
        p = d / "a_folder"
        p.mkdir()
    elif kind == "not-regular":
        return "/dev/zero"
    elif kind == "wrong-variant":
        _official(p, vimc.create_model("vim_tiny", depth=1).state_dict())
    elif kind == "wrong-shape":
        _official(p, _with(sd, "head.weight", torch.zeros(7, sd["head.weight"].shape[1])))
    elif kind == "int-dtype":
        _official(p, _with(sd, "head.weight", sd["head.weight"].to(torch.int32)))
    elif kind == "complex-dtype":
        _official(p, _with(sd, "head.weight", sd["head.weight"].to(torch.complex64)))
    elif kind == "nan-weight":
        _official(p, _with(sd, "norm_f.weight", sd["norm_f.weight"] * float("nan")))
    elif kind == "huge-pos_embed":
        _official(p, _with(sd, "pos_embed", torch.zeros(1, 300_000, 1)))
    elif kind == "corrupt-safetensors":
        p = d / "corrupt.safetensors"
        p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    elif kind == "crafted-config":  # a few bytes of metadata asking for a huge model
        p = d / "crafted.safetensors"
        record = {"architecture": "vim_digits", "config": {**config, "depth": 3000}}
        _safetensors(p, {"cls_token": sd["cls_token"]}, record)
    elif kind == "config-without-config":
        p = d / "noconfig.safetensors"
        _safetensors(p, sd, {"architecture": "vim_digits"})
    elif kind == "zero-patch-size":
        p = d / "patch0.safetensors"
        _safetensors(p, sd, {"architecture": "vim_digits", "config": {**config, "patch_size": 0}})
    else:
        raise AssertionError(kind)
    return str(p)


# kind, error type create_model raises, message fragment
ROWS = [
    ("pickle-payload", CheckpointError, "vimc never unpickles arbitrary objects"),
    ("zero-byte", CheckpointError, "is empty (0 bytes)"),
    ("truncated", CheckpointError, "is not a PyTorch checkpoint"),
    ("directory", CheckpointError, "is a directory without model.safetensors"),
    ("not-regular", CheckpointError, "is not a regular file"),
    ("wrong-variant", CheckpointError, "does not fit vim_digits"),
    ("wrong-shape", CheckpointError, "head.bias: checkpoint [10] vs model [7]"),
    ("int-dtype", CheckpointError, "not real floating point: head.weight (int32)"),
    ("complex-dtype", CheckpointError, "not real floating point: head.weight (complex64)"),
    ("nan-weight", CheckpointError, "NaN or infinite values: norm_f.weight"),
    ("huge-pos_embed", CheckpointError, "pos_embed must be (1, tokens, dim) with at most"),
    ("corrupt-safetensors", CheckpointError, "is not a readable safetensors file"),
    ("crafted-config", CheckpointError, "depth: config 3000 vs tensors 0"),
    ("config-without-config", CheckpointError, "has no 'config' object"),
    ("zero-patch-size", ValueError, "VimConfig.patch_size must be an int >= 1, got 0"),
]


@pytest.fixture(scope="module")
def digits():
    m = vimc.create_model("vim_digits", pretrained=True)
    return m.state_dict(), m.config.to_dict()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(p)
    return str(p)


@pytest.mark.parametrize("kind, error, fragment", ROWS, ids=[r[0] for r in ROWS])
def test_create_model_refuses(kind, error, fragment, tmp_path, digits):
    path = _build(kind, tmp_path, *digits)
    with pytest.raises(error) as e:
        vimc.create_model("vim_digits", checkpoint_path=path)
    assert fragment in str(e.value)
    assert not (tmp_path / "PAYLOAD_RAN").exists()  # the pickle's code never ran


@pytest.mark.parametrize("kind, error, fragment", ROWS, ids=[r[0] for r in ROWS])
@pytest.mark.parametrize("with_model", [True, False], ids=["model", "guessed"])
def test_predict_exits_2_naming_the_problem(
    kind, error, fragment, with_model, tmp_path, digits, image, capsys
):
    """One exit code per kind of error, with or without --model (the guess reads the file too)."""
    path = _build(kind, tmp_path, *digits)
    argv = ["predict", image, "--checkpoint", path] + (["--model", "vim_digits"] * with_model)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vimc predict: error: ") and "Traceback" not in err
    if with_model:  # without it, the guess may refuse first (e.g. no registered width)
        assert fragment in err
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_the_good_file_loads(tmp_path, digits, image, capsys):
    """The table's files are the good one, changed in one place each."""
    _official(tmp_path / "ok.pth", digits[0])
    m = vimc.create_model("vim_digits", checkpoint_path=tmp_path / "ok.pth")
    assert torch.equal(m.head.weight, digits[0]["head.weight"])
    code = cli.main(
        ["predict", image, "--checkpoint", str(tmp_path / "ok.pth"), "-m", "vim_digits"]
    )
    assert code == 0, capsys.readouterr().err
