"""lib/analysis/scores.py against scikit-learn and numpy."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from lib.analysis.scores import format_percent, segmentation_scores, step_metrics


def _sklearn_ari(true: np.ndarray, pred: np.ndarray, foreground: bool) -> float:
    keep = true > 0 if foreground else true >= 0
    if not keep.any():
        return float("nan")
    return adjusted_rand_score(true[keep], pred[keep])


def _random_case(seed: int, steps: int = 4, k: int = 4, size: int = 7):
    gen = np.random.default_rng(seed)
    true = gen.integers(0, 4, (size, size))
    logits = gen.normal(size=(steps, k, size, size))
    logits[-1] += 4 * np.eye(k)[true % k].transpose(2, 0, 1)  # a good last step
    masks = torch.softmax(torch.from_numpy(logits).float(), dim=1)
    return true, masks


def test_segmentation_scores_match_sklearn_per_image():
    true, masks = _random_case(0)
    steps = masks.shape[0]
    labels = torch.from_numpy(true)[None].expand(steps, -1, -1)
    ari, fg = segmentation_scores(labels, masks)
    pred = masks.argmax(dim=1).numpy()
    for t in range(steps):
        assert ari[t].item() == pytest.approx(_sklearn_ari(true, pred[t], False), abs=1e-9)
        assert fg[t].item() == pytest.approx(_sklearn_ari(true, pred[t], True), abs=1e-9)
    # An image without foreground: fg ARI undefined (NaN), ARI still defined.
    background = np.zeros((7, 7), dtype=np.int64)
    ari, fg = segmentation_scores(torch.from_numpy(background)[None], masks[:1])
    assert math.isnan(fg[0].item())
    assert ari[0].item() == pytest.approx(_sklearn_ari(background, pred[0], False), abs=1e-9)


def test_step_metrics_match_numpy_and_sklearn():
    true, masks = _random_case(1)
    steps = masks.shape[0]
    gen = np.random.default_rng(2)
    image = gen.random((3, 7, 7)).astype(np.float32)
    recon = gen.random((steps, 3, 7, 7)).astype(np.float32)
    metrics = step_metrics(
        torch.from_numpy(image), masks, torch.from_numpy(recon), torch.from_numpy(true)
    )
    pred = masks.argmax(dim=1).numpy()
    for t in range(steps):
        assert metrics["mse"][t] == pytest.approx(float(((recon[t] - image) ** 2).mean()))
        assert metrics["ari"][t] == pytest.approx(_sklearn_ari(true, pred[t], False), abs=1e-9)
        assert metrics["fg_ari"][t] == pytest.approx(_sklearn_ari(true, pred[t], True), abs=1e-9)
    no_truth = step_metrics(torch.from_numpy(image), masks, torch.from_numpy(recon), None)
    assert no_truth["mse"] == metrics["mse"]
    assert all(math.isnan(v) for v in no_truth["ari"] + no_truth["fg_ari"])


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [(0.5, 1, "50.0"), (0.97349, 1, "97.3"), (-0.0123, 2, "-1.23"), (1.0, 0, "100")],
)
def test_format_percent(value, decimals, text):
    assert format_percent(value, decimals) == text


def test_format_percent_of_undefined_values():
    assert format_percent(None) == "n/a" and format_percent(float("nan")) == "n/a"
    assert format_percent(torch.tensor(float("nan")).item()) == "n/a"
