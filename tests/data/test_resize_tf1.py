"""INPUT.RESIZE "tf1": the released pipeline's TF 1.14 resize, against TensorFlow's own output
(``tests/fixtures/tf1_resize/tf1_resize.npz``, written by ``make_fixture.py`` there) and an
explicit per-pixel loop over TF's legacy sampling formula."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tests.data.conftest import to_model_input

FIXTURE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "fixtures",
    "tf1_resize",
    "tf1_resize.npz",
)
CASES = ("12to8", "192to128", "7to5", "5to8")


@pytest.fixture(scope="module")
def tf_outputs():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("case", CASES)
def test_matches_tensorflow(tf_outputs, case):
    image, labels = tf_outputs[f"{case}/image"], tf_outputs[f"{case}/labels"]
    size = tf_outputs[f"{case}/nearest"].shape[0]
    img, lab = to_model_input(image, labels, size, resize="tf1")
    np.testing.assert_allclose(
        img.permute(1, 2, 0).numpy(), tf_outputs[f"{case}/bilinear"], rtol=0, atol=2e-6
    )
    np.testing.assert_array_equal(lab.numpy(), tf_outputs[f"{case}/nearest"])


def _tf1_loop(image: np.ndarray, size: int) -> np.ndarray:
    """TF 1.14 resize_bilinear (legacy, no half-pixel centres), one output pixel at a time."""
    n = image.shape[0]
    scale = n / size
    out = np.zeros((size, size, image.shape[2]), np.float64)
    for i in range(size):
        y = i * scale
        y0, y1 = int(math.floor(y)), min(int(math.floor(y)) + 1, n - 1)
        for j in range(size):
            x = j * scale
            x0, x1 = int(math.floor(x)), min(int(math.floor(x)) + 1, n - 1)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * (x - x0)
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * (x - x0)
            out[i, j] = top + (bottom - top) * (y - y0)
    return out


def test_matches_the_legacy_formula_and_clevr_label_rule():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 30, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, size=(30, 30), dtype=np.uint8)
    img, lab = to_model_input(image, labels, 20, resize="tf1")
    expected = _tf1_loop(image.astype(np.float64) / 255.0, 20)
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-6)
    # Scale 1.5, as CLEVR's 192 -> 128: label pixel i reads source floor(1.5 i).
    rows = [math.floor(1.5 * i) for i in range(20)]
    np.testing.assert_array_equal(lab.numpy(), labels[np.ix_(rows, rows)])


def test_differs_from_the_antialiased_resize():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    tf1, _ = to_model_input(image, None, 8, resize="tf1")
    antialiased, _ = to_model_input(image, None, 8, resize="bilinear")
    assert (tf1 - antialiased).abs().max() > 0.05


def test_no_resize_keeps_values_exact():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    img, _ = to_model_input(image, None, 4, resize="tf1")
    np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), image.astype(np.float32) / 255)
