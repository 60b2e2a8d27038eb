"""Atomic writes: a failed or interrupted export leaves no partial file at OUT."""

import pytest
import torch
from torch import nn
from vimc.export import to_onnx
from vimc.export._atomic import atomic_path, check_writable


def test_success_moves_into_place(tmp_path):
    out = tmp_path / "a.bin"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out and tmp.suffix == ".bin"
        tmp.write_bytes(b"data")
        assert not out.exists()
    assert out.read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_leaves_nothing_and_keeps_old_file(tmp_path, exc):
    out = tmp_path / "a.bin"
    with pytest.raises(type(exc)), atomic_path(out) as tmp:
        tmp.write_bytes(b"half")
        raise exc
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"old")
    with pytest.raises(type(exc)), atomic_path(out) as tmp:
        tmp.write_bytes(b"half")
        raise exc
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_empty_result_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="nothing"), atomic_path(tmp_path / "e.bin"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_unwritable_paths_are_refused_early(tmp_path):
    with pytest.raises(ValueError, match="out.*does not exist"):
        check_writable(tmp_path / "no" / "x.onnx", arg="out")
    with pytest.raises(ValueError, match="directory"):
        check_writable(tmp_path, arg="out")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        check_writable(tmp_path / "file" / "x.onnx", arg="out")
    with pytest.raises(TypeError, match="out"):
        check_writable(3, arg="out")


class _Fails(nn.Module):
    pretrained_cfg = {"input_size": (3, 8, 8)}

    def forward(self, x):
        if x.shape[0] > 0:
            raise RuntimeError("cannot be traced")
        return x


def test_failed_export_leaves_no_file(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(Exception, match="cannot be traced"):
        to_onnx(_Fails(), out, example=torch.randn(2, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []
