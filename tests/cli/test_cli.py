"""The `vimc` command: every subcommand, --help, exit codes (0 ok, 1 check failed, 2 bad
usage or input) and one-line error messages. Most tests call ``vimc.cli.main`` in-process;
a few run the installed entry point."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vimc
from vimc import cli
from vimc.data import digit_to_image, load_digits_test
from vimc.flops import scan_flops

SUBCOMMANDS = ("demo", "predict", "info", "bench", "list", "export", "parity", "ort-plugin")


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# help and usage
# ---------------------------------------------------------------------------------------------


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert "usage: vimc " + command in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2 and "usage: vimc" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["predict"],
        ["predict", "x.png", "--topk", "0"],
        ["info"],
        ["bench", "--batch", "-1"],
        ["predict", "--bogus"],
    ],
)
def test_bad_usage_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and vimc.__version__ in capsys.readouterr().out


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in ("vim_tiny", "vim_small", "vim_base", "vim_digits"):
        assert name in out
    code, out, _ = run_cli(capsys, "list", "vim_s*")
    assert code == 0 and "vim_small" in out and "vim_tiny" not in out


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------


def test_info_vim_tiny(capsys):
    code, out, _ = run_cli(capsys, "info", "vim_tiny", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["parameters"] == 7_148_008  # vim.md: Vim-Ti 7.15M
    assert info["tokens"] == 197
    assert info["flops"]["scan"] > 0 and info["flops"]["total"] > info["flops"]["counted"]
    assert 1.4 < info["gmacs"] < 1.6  # the paper's 1.5 G (multiply-adds)


def test_info_text_and_resolution(capsys):
    code, out, _ = run_cli(capsys, "info", "vim_small", "--img-size", "448")
    assert code == 0
    assert "parameters" in out and "selective scan" in out and "785 tokens" in out


def test_scan_flops_formula():
    model = vimc.create_model("vim_tiny", device="meta")
    # 24 layers x 2 directions x E=384 x L=197 x (7 x 16 + 10)
    assert scan_flops(model, 1, (224, 224)) == 2 * 24 * 384 * 197 * (7 * 16 + 10)


def test_info_unknown_model(capsys):
    code, _, err = run_cli(capsys, "info", "vim_huge")
    assert code == 2
    assert "unknown model 'vim_huge'" in err and "vim_tiny" in err


# ---------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """The first 12 held-out digits as 8x8 PNG files, with their labels."""
    d = tmp_path_factory.mktemp("digits")
    images, labels = load_digits_test()
    paths = []
    for i in range(12):
        paths.append(d / f"digit{i}_label{labels[i]}.png")
        digit_to_image(images[i]).save(paths[-1])
    return paths, labels[:12]


def test_predict_digits(capsys, digit_pngs):
    paths, labels = digit_pngs
    code, out, _ = run_cli(capsys, "predict", *map(str, paths), "--topk", "2", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["model"] == "vim_digits" and len(res["results"]) == len(paths)
    top1 = [int(r["top"][0]["name"]) for r in res["results"]]
    assert sum(int(a == b) for a, b in zip(top1, labels)) >= 11
    assert all(len(r["top"]) == 2 for r in res["results"])


def test_predict_text_output(capsys, digit_pngs):
    paths, labels = digit_pngs
    code, out, _ = run_cli(capsys, "predict", str(paths[0]), "-k", "3")
    assert code == 0
    assert str(paths[0]) in out and out.count("%") == 3


def test_predict_missing_image(capsys, tmp_path):
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "nope.jpg"))
    assert code == 2 and "image not found" in err and "nope.jpg" in err


def test_predict_unreadable_image(capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage" * 10)
    code, _, err = run_cli(capsys, "predict", str(bad))
    assert code == 2 and "cannot read image" in err and "bad.jpg" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_predict_unknown_model(capsys, digit_pngs):
    code, _, err = run_cli(capsys, "predict", str(digit_pngs[0][0]), "--model", "resnet50")
    assert code == 2 and "unknown model 'resnet50'" in err


def test_predict_model_without_weights(capsys, digit_pngs):
    """No built-in weights: an error saying how to get some, never random weights and never a
    download nobody asked for."""
    code, _, err = run_cli(capsys, "predict", str(digit_pngs[0][0]), "--model", "vim_tiny")
    assert code == 2 and "--pretrained" in err and "--checkpoint" in err


def test_predict_pretrained_from_the_hub_cache(capsys, tmp_path, monkeypatch):
    """--pretrained: the official file through the Hub cache (offline); --checkpoint
    hf-hub:...: the same file by name; both exclusive."""
    from huggingface_hub import constants

    import vimc
    from tests.model._helpers import randomize_, write_hub_cache

    m = randomize_(vimc.create_model("vim_tiny"), seed=2, scale=0.3)
    repo, file = "hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"
    write_hub_cache(tmp_path / "hub", repo, file, {"model": m.state_dict(), "epoch": 1})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    img = tmp_path / "x.png"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(img)
    outs = []
    for how in (["--model", "vim_tiny", "--pretrained"], ["--checkpoint", f"hf-hub:{repo}/{file}"]):
        code, out, err = run_cli(capsys, "predict", str(img), *how, "--topk", "2", "--json")
        assert code == 0, err
        outs.append(json.loads(out)["results"])
    assert outs[0] == outs[1]
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", str(img), "--pretrained", "--checkpoint", "x.pth"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_predict_missing_checkpoint(capsys, digit_pngs, tmp_path):
    code, _, err = run_cli(
        capsys,
        "predict",
        str(digit_pngs[0][0]),
        "--model",
        "vim_tiny",
        "--checkpoint",
        str(tmp_path / "none.pth"),
    )
    assert code == 2 and "checkpoint not found" in err


def test_predict_wrong_checkpoint(capsys, digit_pngs, tmp_path):
    # a Vim-Ti-shaped official-style checkpoint of the wrong depth for vim_small
    tiny = vimc.create_model("vim_tiny", depth=2, img_size=32)
    ckpt = tmp_path / "wrong.pth"
    torch.save(
        {"model": tiny.state_dict(), "epoch": 3, "args": argparse.Namespace(model="vim_tiny")}, ckpt
    )
    code, _, err = run_cli(
        capsys, "predict", str(digit_pngs[0][0]), "--model", "vim_small", "--checkpoint", str(ckpt)
    )
    assert code == 2 and "does not fit" in err
    # not a checkpoint at all
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    code, _, err = run_cli(
        capsys, "predict", str(digit_pngs[0][0]), "--model", "vim_tiny", "--checkpoint", str(junk)
    )
    assert code == 2 and "junk.pth" in err


def test_predict_official_checkpoint_imagenet_names(capsys, tmp_path):
    """An official-format training checkpoint (dict with model/args), architecture guessed
    from its shapes; 1000 classes -> ImageNet names."""
    model = vimc.create_model("vim_tiny", depth=1)
    sd = model.state_dict()
    sd["head.bias"] = torch.full((1000,), -10.0)
    sd["head.bias"][207] = 10.0  # make "golden retriever" win
    ckpt = tmp_path / "vim_t_like.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model="vim_tiny")}, ckpt)
    img = tmp_path / "img.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)).save(img)
    # guessing would pick vim_tiny (24 layers) and fail on depth; name the depth via a vimc file
    code, _, err = run_cli(capsys, "predict", str(img), "--checkpoint", str(ckpt))
    assert code == 2 and "does not fit" in err
    model.load_state_dict(sd)
    model.save_pretrained(tmp_path / "vimc_format")
    code, out, _ = run_cli(
        capsys, "predict", str(img), "--checkpoint", str(tmp_path / "vimc_format"), "--topk", "1"
    )
    assert code == 0 and "golden retriever" in out


# ---------------------------------------------------------------------------------------------
# export / parity come from vimc.export
# ---------------------------------------------------------------------------------------------


def test_export_commands_are_wired():
    """The real handlers of vimc.export.cli, not the stand-ins cli.py registers when that
    module cannot be imported (importing it here fails the test in that case)."""
    from vimc.export import cli as export_cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    handlers = {
        "export": export_cli.run_export,
        "parity": export_cli.run_parity,
        "ort-plugin": export_cli.run_ort_plugin,
    }
    for name, handler in handlers.items():
        assert sub.choices[name].get_default("func") is handler, name


def test_export_commands_say_why_when_unavailable(capsys, monkeypatch):
    """Without vimc.export.cli the commands still exist and exit 2 with the reason."""
    monkeypatch.setitem(sys.modules, "vimc.export.cli", None)  # its import raises ImportError
    code, _, err = run_cli(capsys, "export", "onnx", "vim_digits", "out.onnx")
    assert code == 2 and "this command is unavailable" in err


# ---------------------------------------------------------------------------------------------
# the installed entry point
# ---------------------------------------------------------------------------------------------


def _vimc_exe():
    exe = shutil.which("vimc") or os.path.join(os.path.dirname(sys.executable), "vimc")
    if not os.path.exists(exe):
        pytest.skip("the vimc entry point is not installed (pip install -e .)")
    return exe


@pytest.mark.slow  # two subprocesses
def test_entry_point_exit_codes(tmp_path):
    exe = _vimc_exe()
    r = subprocess.run([exe, "info", "vim_tiny"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "7,148,008" in r.stdout
    r = subprocess.run(
        [exe, "predict", str(tmp_path / "missing.png")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and r.stderr.startswith("vimc predict: error: image not found")


def test_info_kernels_says_which_scan_kernel_runs(capsys, monkeypatch):
    """`vimc info --kernels`: the CPU's level, the scan kernel that runs and where it came from,
    and whether a mixer's core runs as one call of it."""
    code, out, err = run_cli(capsys, "info", "--kernels")
    assert code == 0, err
    assert "scan kernel:" in out
    code, out, _ = run_cli(capsys, "info", "--kernels", "--json")
    info = json.loads(out)
    assert code == 0 and info
    from vimc.ops.selective_scan import _checks, cpu

    one_call = info["mixer core"].startswith("one C call per Vim mixer")
    assert one_call == cpu.c_kernel_available(), info["mixer core"]
    if one_call:
        want = f"multiples of {cpu.LANES} and dt ranks up to {_checks.MAX_DT_RANK}"
        assert want in info["mixer core"]
    monkeypatch.setattr(cpu, "c_kernel_available", lambda: False)
    code, out, _ = run_cli(capsys, "info", "--kernels", "--json")
    assert json.loads(out)["mixer core"] == "the separate ops, one after another (no C kernel)"


@pytest.mark.slow  # two exports in fresh processes
def test_verbose_shows_what_the_default_silences(tmp_path):
    """Library noise is silenced by default and shown with -v; errors show either way."""
    exe = _vimc_exe()
    runs = {}
    for flag in ([], ["-v"]):
        out = tmp_path / f"m{len(flag)}.onnx"
        cmd = [exe, *flag, "export", "onnx", "vim_digits", str(out), "--quiet", "--no-validate"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        runs[bool(flag)] = r.stderr
    assert "torchvision" not in runs[False] and "LeafSpec" not in runs[False]
    assert "torchvision" in runs[True] or "LeafSpec" in runs[True]
    r = subprocess.run(
        [exe, "-v", "predict", str(tmp_path / "missing.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "image not found" in r.stderr
