"""Every example script runs as written (as a subprocess, from the repository root) at small
sizes: a tiny model or a checkpoint the test writes itself. (examples/export_onnx.py is
tested with the export package.)"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vimc
from vimc.data import digit_to_image, load_digits_test

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(script, *args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return r


def check(r):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    """A tiny untrained vim_digits-shaped model saved with save_pretrained."""
    d = tmp_path_factory.mktemp("tiny") / "model"
    vimc.create_model("vim_digits", embed_dim=16, depth=1).save_pretrained(d)
    return d


@pytest.mark.slow
def test_train_digits_and_resume(tmp_path):
    pytest.importorskip("sklearn")
    common = [
        "--out",
        tmp_path,
        "--limit-train",
        64,
        "--embed-dim",
        16,
        "--depth",
        1,
        "--batch-size",
        32,
        "--no-progress",
        "--threads",
        1,
    ]
    out = check(run_example("train_digits.py", "--epochs", 2, *common))
    assert "epoch   2/2" in out and "held-out accuracy" in out
    weights = tmp_path / "w.safetensors"
    out = check(
        run_example(
            "train_digits.py", "--epochs", 3, "--resume", *common, "--export-weights", weights
        )
    )
    assert "resumed from" in out and "epoch   3/3" in out and "epoch   1/" not in out
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    model = vimc.VisionMamba.from_pretrained(weights)
    assert model.config.embed_dim == 16 and model.num_classes == 10


@pytest.mark.slow  # a subprocess: importing torch alone takes seconds on 2 shared cores
def test_classify_official_checkpoint(tmp_path):
    """examples/classify.py --checkpoint <official-format Vim-Ti .pth> img.jpg"""
    model = vimc.create_model("vim_tiny")
    sd = model.state_dict()
    sd["head.bias"] = torch.full((1000,), -20.0)
    sd["head.bias"][1] = 20.0  # "goldfish"
    ckpt = tmp_path / "vim_t_midclstok_76p1acc.pth"
    torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(model="vim_tiny")}, ckpt)
    img = tmp_path / "img.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)).save(img)
    out = check(run_example("classify.py", "--checkpoint", ckpt, img, "--topk", 2))
    assert "goldfish" in out and "img.jpg" in out


@pytest.mark.slow  # a subprocess: importing torch alone takes seconds on 2 shared cores
def test_classify_builtin_digits(tmp_path):
    images, labels = load_digits_test()
    path = tmp_path / "digit.png"
    digit_to_image(images[0]).save(path)
    out = check(run_example("classify.py", path, "--topk", 1))
    assert out.splitlines()[1].split()[0] == str(labels[0])


@pytest.mark.slow  # a subprocess: importing torch alone takes seconds on 2 shared cores
def test_classify_unreadable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    r = run_example("classify.py", bad)
    assert r.returncode == 2 and "cannot read image" in r.stderr


@pytest.mark.slow
def test_compare_backends(tiny_digits):
    out = check(
        run_example(
            "compare_backends.py",
            "--checkpoint",
            tiny_digits,
            "--backends",
            "eager",
            "onnxruntime",
            "onnxruntime-plugin",
            "--batch",
            2,
            "--iters",
            2,
        )
    )
    head, *rest = out.splitlines()
    assert head.startswith("date ") and "| torch " in head  # vimc.machine's header
    table = rest[[ln.split()[0] for ln in rest].index("backend") + 1 :]
    lines = {ln.split()[0]: ln for ln in table}
    assert set(lines) == {"eager", "onnxruntime", "onnxruntime-plugin"}
    assert "FAILED" not in out
    assert all(float(ln.split()[-1]) > 0 for ln in lines.values())  # median ms


@pytest.mark.slow  # a subprocess: importing torch alone takes seconds on 2 shared cores
def test_tensorrt_engine_skips_without_gpu():
    r = run_example("tensorrt_engine.py")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the example builds a real engine (GPU CI)")
    assert r.returncode == 0 and r.stdout.startswith("skipped: ")


@pytest.mark.slow
def test_finetune_folder(tmp_path, tiny_digits):
    rng = np.random.default_rng(0)
    for cls, col in (("left", slice(0, 6)), ("right", slice(6, 12))):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(5):
            a = rng.integers(0, 40, (12, 12, 3), np.uint8)
            a[:, col] = 220
            Image.fromarray(a).save(tmp_path / "data" / cls / f"{i}.png")
    out_dir = tmp_path / "out"
    out = check(
        run_example(
            "finetune_folder.py",
            tmp_path / "data",
            "--checkpoint",
            tiny_digits,
            "--epochs",
            2,
            "--batch-size",
            4,
            "--out",
            out_dir,
        )
    )
    assert "2 classes ['left', 'right']" in out and "epoch 2/2" in out
    assert json.loads((out_dir / "classes.json").read_text()) == ["left", "right"]
    model = vimc.VisionMamba.from_pretrained(out_dir)
    assert model.num_classes == 2


@pytest.mark.slow  # a subprocess: importing torch alone takes seconds on 2 shared cores
def test_finetune_folder_bad_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_example("finetune_folder.py", tmp_path / "empty")
    assert r.returncode == 2 and "no class sub-folders" in r.stderr
