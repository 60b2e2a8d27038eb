"""Fixtures for the model tests."""

import pytest

import vimc

from ._helpers import SMALL


@pytest.fixture
def small_model():
    def make(**overrides):
        return vimc.create_model("vim_tiny", **{**SMALL, **overrides})

    return make
