"""Shared set-up of the serving tests: one small Ray instance for the whole session (on
127.0.0.1, two CPUs), the built-in digits model packed for workers, and digit images on disk."""

from __future__ import annotations

import argparse
import re
import socket

import pytest

from vimc.data import digit_to_image, load_digits_test

N_IMAGES = 12


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_has_commands() -> bool:
    """Whether vimc.cli registers `serve` and `predict-folder` (with vimc.serve's add_*)."""
    from vimc import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "serve" in sub.choices and "predict-folder" in sub.choices


def vimc_main(argv: list[str]) -> int:
    """``vimc ARGV``: through vimc.cli.main once it registers these commands, else through a
    parser of their own (the add_* functions are what vimc.cli wires in)."""
    if cli_has_commands():
        from vimc import cli

        return cli.main(argv)
    from vimc.serve import add_predict_folder_parser, add_serve_parser

    parser = argparse.ArgumentParser(prog="vimc")
    sub = parser.add_subparsers(dest="command")
    add_serve_parser(sub)
    add_predict_folder_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def check_usage_error(argv: list[str], match: str, capsys) -> None:
    """``vimc ARGV`` is refused as bad usage, naming the problem: exit 2 with the message on
    stderr through vimc.cli.main, or the ValueError the handler raises for it to report."""
    if cli_has_commands():
        assert vimc_main(argv) == 2
        assert re.search(match, capsys.readouterr().err)
    else:
        with pytest.raises(ValueError, match=match):
            vimc_main(argv)


@pytest.fixture(scope="session")
def ray_session():
    """Ray for every test that needs it, started once: two CPUs, loopback only."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vimc[serve]')")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="warning",
            _node_ip_address="127.0.0.1",
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_bundle():
    from vimc.serve.predictor import build_bundle, load_served_model

    model, weights = load_served_model("vim_digits")
    return build_bundle(model, "eager", weights=weights)


@pytest.fixture(scope="session")
def digit_pngs(tmp_path_factory):
    """N_IMAGES held-out digits as PNG files (8x8 grayscale, as `vimc predict` reads them)."""
    folder = tmp_path_factory.mktemp("digits")
    images, _ = load_digits_test()
    paths = []
    for i in range(N_IMAGES):
        path = folder / f"digit_{i:02d}.png"
        digit_to_image(images[i]).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def eager_top5(digits_bundle, digit_pngs):
    """What local eager inference (vimc predict's path) answers for each digit file."""
    from vimc.serve.predictor import Predictor

    predictor = Predictor(digits_bundle)
    return {
        p.name: predictor.classify([predictor.decode(p.read_bytes())], 5)[0] for p in digit_pngs
    }
