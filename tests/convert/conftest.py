"""Paths of the TensorFlow-written fixture (tests/fixtures/released/make_fixtures.py)."""

import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "released")
TETROMINOES = os.path.join(FIXTURES, "tetrominoes")
PREFIX = os.path.join(TETROMINOES, "model.ckpt")


@pytest.fixture(scope="session")
def tf_values() -> dict[str, np.ndarray]:
    """Every variable of the Tetrominoes fixture as TensorFlow read it back."""
    with np.load(os.path.join(TETROMINOES, "values.npz")) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="session")
def tf_reference() -> dict[str, np.ndarray]:
    """TensorFlow's own conv and LayerNorm outputs on the fixture's weights."""
    with np.load(os.path.join(TETROMINOES, "tf_reference.npz")) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="session")
def tetrominoes_cfg():
    """The Tetrominoes paper config (frozen)."""
    from lib.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file("configs/tetrominoes.yaml")
    cfg.freeze()
    return cfg


@pytest.fixture(scope="session")
def converted_tetrominoes(tetrominoes_cfg):
    """The Tetrominoes fixture converted for our model (a ConversionResult)."""
    from lib.convert.convert import convert_checkpoint

    return convert_checkpoint(tetrominoes_cfg, PREFIX)
