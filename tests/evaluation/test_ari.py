"""adjusted_rand_index against scikit-learn, including the degenerate cases."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from lib.evaluation.ari import adjusted_rand_index, mean_ari


def _sklearn(true: np.ndarray, pred: np.ndarray, ignore_background: bool) -> float:
    keep = true >= (1 if ignore_background else 0)
    return adjusted_rand_score(true[keep], pred[keep])


@pytest.mark.parametrize("ignore_background", [False, True])
def test_matches_sklearn_on_random_labelings(ignore_background):
    gen = np.random.default_rng(0)
    for trial in range(20):
        num_true = int(gen.integers(1, 6))
        num_pred = int(gen.integers(1, 6))
        true = gen.integers(0, num_true, size=(6, 9, 7))
        pred = gen.integers(0, num_pred, size=(6, 9, 7))
        # Make some images structured so that scores are not all near 0.
        pred[:2] = true[:2]
        pred[2] = (true[2] + 1) % max(num_true, 1)
        got = adjusted_rand_index(torch.from_numpy(true), torch.from_numpy(pred), ignore_background)
        for b in range(true.shape[0]):
            if ignore_background and not (true[b] > 0).any():
                assert math.isnan(got[b].item())
                continue
            want = _sklearn(true[b], pred[b], ignore_background)
            assert got[b].item() == pytest.approx(want, abs=1e-10), (trial, b)


def test_degenerate_cases_match_sklearn():
    zeros = np.zeros((4, 4), dtype=np.int64)
    distinct = np.arange(16).reshape(4, 4)
    halves = np.repeat([0, 1], 8).reshape(4, 4)
    cases = {
        "single cluster both": (zeros, zeros),
        "single in truth only": (zeros, halves),
        "single in prediction only": (halves, zeros),
        "all distinct both": (distinct, distinct),
        "all distinct in prediction only": (halves, distinct),
        "permuted identical": (halves, 1 - halves),
    }
    for name, (true, pred) in cases.items():
        got = adjusted_rand_index(torch.from_numpy(true)[None], torch.from_numpy(pred)[None])
        want = adjusted_rand_score(true.ravel(), pred.ravel())
        assert got.item() == pytest.approx(want, abs=1e-12), name
    # Label values need not be contiguous.
    got = adjusted_rand_index(
        torch.from_numpy(halves * 5)[None], torch.from_numpy(halves * 3)[None]
    )
    assert got.item() == pytest.approx(1.0)


def test_single_counted_pixel_scores_one():
    true = torch.tensor([[[0, 0], [0, 2]]])
    pred = torch.tensor([[[1, 0], [3, 1]]])
    assert adjusted_rand_index(true, pred, ignore_background=True).item() == 1.0


def test_foreground_ignores_background_and_negative_labels():
    true = torch.tensor([[0, 0, 1, 1, 2, 2, -1, -1]])
    pred = torch.tensor([[5, 6, 1, 1, 2, 2, 0, 3]])  # background and unlabelled pixels are wrong
    assert adjusted_rand_index(true, pred, ignore_background=True).item() == pytest.approx(1.0)
    assert adjusted_rand_index(true, pred).item() < 1.0


def test_empty_foreground_is_nan_and_left_out_of_mean():
    true = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 2]])
    pred = torch.tensor([[0, 1, 0, 1], [0, 1, 1, 2]])
    scores = adjusted_rand_index(true, pred, ignore_background=True)
    assert math.isnan(scores[0].item()) and scores[1].item() == pytest.approx(1.0)
    assert mean_ari(scores) == pytest.approx(1.0)
    assert mean_ari(scores[:1]) is None


def test_shape_and_type_errors():
    with pytest.raises(ValueError, match="same shape"):
        adjusted_rand_index(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
        )
    with pytest.raises(TypeError, match="integer"):
        adjusted_rand_index(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
