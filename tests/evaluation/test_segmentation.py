"""Segment-matching metrics against per-image loops, brute-force matching and hand-made cases."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from lib.evaluation.segmentation import (
    contingency_table,
    foreground_mse,
    hungarian_miou,
    mean_best_overlap,
    mean_segmentation_covering,
    object_count_accuracy,
    segmentation_covering,
    segmentation_scores,
)

# --- independent references: one image at a time, boolean masks, explicit loops ------------


def _segments(true: np.ndarray, pred: np.ndarray, num_slots: int):
    counted = true >= 0
    num_true = max(int(true.max()) + 1, 1)
    trues = [(true == g) & counted for g in range(num_true)]
    preds = [(pred == k) & counted for k in range(num_slots)]
    return trues, preds


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def _ref_covering(true, pred, num_slots, ignore_background):
    """GENESIS average_segcover for one image: returns (SC, mSC), NaN when nothing is scored."""
    trues, preds = _segments(true, pred, num_slots)
    weighted = total_area = mean = count = 0.0
    for g, seg in enumerate(trues):
        if (ignore_background and g == 0) or not seg.any():
            continue
        best = max(_iou(seg, p) for p in preds)
        weighted += seg.sum() * best
        total_area += seg.sum()
        mean += best
        count += 1
    if count == 0:
        return math.nan, math.nan
    return weighted / total_area, mean / count


def _ref_mbo(true, pred, num_slots, ignore_background):
    """OCLF unsupervised_mask_iou(matching="best_overlap") for one image."""
    labels = [g for g in np.unique(true) if g >= (1 if ignore_background else 0)]
    if not labels:
        return math.nan
    preds = [(pred == k) & (true >= 0) for k in range(num_slots)]
    return float(np.mean([max(_iou(true == g, p) for p in preds) for g in labels]))


def _ref_hungarian_scores(true, pred, num_slots, ignore_background, per_true_object):
    """Every value ClevrTex's mIoU can take on one image over its optimal square matchings.

    Pads the true and predicted segments to the same count, enumerates all permutations, keeps
    the ones with maximal total IoU and, among them, the fewest pairs with a non-empty side.
    """
    trues, preds = _segments(true, pred, num_slots)
    size = max(len(trues), len(preds))
    empty = np.zeros_like(true, dtype=bool)
    trues += [empty] * (size - len(trues))
    preds += [empty] * (size - len(preds))
    iou = np.array([[_iou(t, p) for p in preds] for t in trues])
    has_bg = trues[0].any()
    scored = [g for g in range(size) if trues[g].any() and not (ignore_background and g == 0)]
    if not scored:
        return None
    candidates = []
    for perm in itertools.permutations(range(size)):
        total = sum(iou[g, perm[g]] for g in range(size))
        visible = [g for g in range(size) if trues[g].any() or preds[perm[g]].any()]
        if ignore_background and has_bg:
            visible.remove(0)
        numerator = sum(iou[g, perm[g]] for g in scored)
        denominator = len(scored) if per_true_object else len(visible)
        candidates.append((total, len(visible), numerator / denominator))
    best = max(c[0] for c in candidates)
    optimal = [c for c in candidates if c[0] > best - 1e-9]
    fewest = min(c[1] for c in optimal)
    return [c[2] for c in optimal if c[1] == fewest]


def _random_batch(gen, batch=6, shape=(5, 6), num_true=4, num_slots=4, negatives=False):
    true = gen.integers(0, num_true, size=(batch, *shape))
    # Blocky predictions that mostly follow the truth, so that IoUs are not all tiny.
    pred = true % num_slots
    noise = gen.random(true.shape) < 0.3
    pred[noise] = gen.integers(0, num_slots, size=int(noise.sum()))
    if negatives:
        true[gen.random(true.shape) < 0.1] = -1
    true[0] = 0  # an image without foreground
    return true, pred


# --- agreement with the references on random label maps --------------------------------------


@pytest.mark.parametrize("ignore_background", [True, False])
def test_covering_and_mbo_match_loops(ignore_background):
    gen = np.random.default_rng(0)
    for trial in range(10):
        num_slots = int(gen.integers(1, 6))
        true, pred = _random_batch(
            gen, num_true=int(gen.integers(1, 6)), num_slots=num_slots, negatives=trial % 2 == 1
        )
        t, p = torch.from_numpy(true), torch.from_numpy(pred)
        sc = segmentation_covering(t, p, ignore_background, num_slots)
        msc = mean_segmentation_covering(t, p, ignore_background, num_slots)
        mbo = mean_best_overlap(t, p, ignore_background, num_slots)
        for b in range(true.shape[0]):
            want_sc, want_msc = _ref_covering(true[b], pred[b], num_slots, ignore_background)
            want_mbo = _ref_mbo(true[b], pred[b], num_slots, ignore_background)
            for got, want in ((sc[b], want_sc), (msc[b], want_msc), (mbo[b], want_mbo)):
                if math.isnan(want):
                    assert math.isnan(got.item()), (trial, b)
                else:
                    assert got.item() == pytest.approx(want, abs=1e-12), (trial, b)


@pytest.mark.parametrize("ignore_background", [True, False])
@pytest.mark.parametrize("per_true_object", [False, True])
def test_hungarian_miou_matches_brute_force(ignore_background, per_true_object):
    gen = np.random.default_rng(1)
    for trial in range(8):
        num_slots = int(gen.integers(1, 5))
        true, pred = _random_batch(
            gen, batch=4, shape=(4, 5), num_true=int(gen.integers(1, 5)), num_slots=num_slots
        )
        got = hungarian_miou(
            torch.from_numpy(true),
            torch.from_numpy(pred),
            ignore_background,
            num_slots,
            per_true_object=per_true_object,
        )
        for b in range(true.shape[0]):
            allowed = _ref_hungarian_scores(
                true[b], pred[b], num_slots, ignore_background, per_true_object
            )
            if allowed is None:
                assert math.isnan(got[b].item()), (trial, b)
            else:
                assert any(abs(got[b].item() - a) < 1e-12 for a in allowed), (trial, b, allowed)


def test_scipy_matching_equals_permutations():
    # The solver itself, on the rectangular IoU matrices the metric passes it.
    gen = np.random.default_rng(2)
    for _ in range(20):
        rows, cols = (int(x) for x in gen.integers(1, 6, size=2))
        cost = gen.random((rows, cols))
        r, c = linear_sum_assignment(cost, maximize=True)
        if rows <= cols:
            best = max(
                sum(cost[i, p[i]] for i in range(rows))
                for p in itertools.permutations(range(cols), rows)
            )
        else:
            best = max(
                sum(cost[p[j], j] for j in range(cols))
                for p in itertools.permutations(range(rows), cols)
            )
        assert cost[r, c].sum() == pytest.approx(best)


def test_count_accuracy_matches_unique_counts():
    gen = np.random.default_rng(3)
    true, pred = _random_batch(gen, batch=12, num_true=4, num_slots=5)
    pred[3] = 0  # a single winning slot
    got = object_count_accuracy(torch.from_numpy(true), torch.from_numpy(pred), num_slots=5)
    for b in range(true.shape[0]):
        want = len(np.unique(pred[b])) == len(np.unique(true[b]))
        assert got[b].item() == float(want)


def test_scores_bundle_equals_individual_functions():
    gen = np.random.default_rng(4)
    true, pred = (torch.from_numpy(x) for x in _random_batch(gen, batch=8, negatives=True))
    for ignore_background in (True, False):
        scores = segmentation_scores(true, pred, ignore_background, num_slots=4)
        singles = {
            "sc": segmentation_covering(true, pred, ignore_background, 4),
            "msc": mean_segmentation_covering(true, pred, ignore_background, 4),
            "mbo": mean_best_overlap(true, pred, ignore_background, 4),
            "miou": hungarian_miou(true, pred, ignore_background, 4),
            "count_acc": object_count_accuracy(true, pred, 4),
        }
        assert scores.keys() == singles.keys()
        for key, value in singles.items():
            assert scores[key].shape == (8,) and scores[key].dtype == torch.float64
            torch.testing.assert_close(scores[key], value, equal_nan=True)


# --- hand-made label maps with numbers worked out by hand ------------------------------------


def test_hand_made_three_segments():
    # bg {0..3}, object 1 {4, 5}, object 2 {6, 7}; slots: 0 {0..2}, 1 {3..6}, 2 {7}.
    true = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]])
    pred = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2]])
    # IoU rows bg, o1, o2 / columns s0, s1, s2: [3/4, 1/7, 0], [0, 2/4, 0], [0, 1/5, 1/2].
    assert segmentation_covering(true, pred).item() == pytest.approx(0.5)  # (2*.5 + 2*.5) / 4
    assert mean_segmentation_covering(true, pred).item() == pytest.approx(0.5)
    assert mean_best_overlap(true, pred).item() == pytest.approx(0.5)
    assert segmentation_covering(true, pred, False).item() == pytest.approx(5 / 8)  # 3+1+1 / 8
    assert mean_segmentation_covering(true, pred, False).item() == pytest.approx(7 / 12)
    # Matching bg-s0, o1-s1, o2-s2; foreground pairs: 3 - 1 background pair.
    assert hungarian_miou(true, pred).item() == pytest.approx(0.5)
    assert hungarian_miou(true, pred, False).item() == pytest.approx(1.75 / 3)
    assert object_count_accuracy(true, pred).item() == 1.0


def test_hand_made_more_objects_than_slots():
    true = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    pred = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    # Each object has IoU 2/6 with slot 1; only one of them gets it in the matching.
    assert mean_segmentation_covering(true, pred).item() == pytest.approx(1 / 3)
    assert segmentation_covering(true, pred).item() == pytest.approx(1 / 3)
    assert hungarian_miou(true, pred).item() == pytest.approx(1 / 9)  # (1/3 + 0 + 0) / 3
    assert hungarian_miou(true, pred, per_true_object=True).item() == pytest.approx(1 / 9)
    assert object_count_accuracy(true, pred).item() == 0.0


def test_hand_made_split_object_and_empty_slot():
    # Background and the object are each split in two halves; slot 4 wins no pixel.
    true = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    assert mean_best_overlap(true, pred, num_slots=5).item() == pytest.approx(0.5)
    # ClevrTex: pairs bg-s0, o1-s2, (empty)-s1, (empty)-s3 have a non-empty side: 4 - 1 = 3.
    assert hungarian_miou(true, pred, num_slots=5).item() == pytest.approx(0.5 / 3)
    assert hungarian_miou(true, pred, num_slots=5, per_true_object=True).item() == 0.5
    assert object_count_accuracy(true, pred, num_slots=5).item() == 0.0
    # An empty slot changes nothing.
    assert hungarian_miou(true, pred).item() == pytest.approx(0.5 / 3)


def test_perfect_segmentation_without_background_pixels():
    # Every pixel is an object: no background pair to subtract (ClevrTex would divide by 2).
    true = torch.tensor([[[1, 1], [2, 3]]])
    pred = torch.tensor([[[2, 2], [0, 1]]])
    for metric in (segmentation_covering, mean_segmentation_covering, hungarian_miou):
        assert metric(true, pred).item() == pytest.approx(1.0), metric.__name__
    assert object_count_accuracy(true, pred).item() == 1.0


def test_single_segment_and_no_foreground():
    true = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [3, 3, 3, 3]])
    pred = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    for metric in (segmentation_covering, mean_segmentation_covering, hungarian_miou):
        got = metric(true, pred)
        assert math.isnan(got[0].item()) and math.isnan(got[1].item()), metric.__name__
        assert got[2].item() == pytest.approx(1.0), metric.__name__
    # With the background scored, the all-background images are defined: the background's best
    # IoU is 1/2 in image 1; for the mIoU the second slot is a surplus pair, (1/2 + 0) / 2.
    for metric, want in (
        (segmentation_covering, 0.5),
        (mean_segmentation_covering, 0.5),
        (hungarian_miou, 0.25),
    ):
        full = metric(true, pred, False)
        assert full[0].item() == pytest.approx(1.0), metric.__name__
        assert full[1].item() == pytest.approx(want), metric.__name__
    assert object_count_accuracy(true, pred).tolist() == [1.0, 0.0, 1.0]


def test_unlabelled_pixels_are_dropped_from_both_sides():
    # Slot 1 also wins the unlabelled pixels; they do not enlarge its segment.
    true = torch.tensor([[0, 0, 1, 1, -1, -1]])
    pred = torch.tensor([[0, 0, 1, 1, 1, 2]])
    assert mean_segmentation_covering(true, pred).item() == pytest.approx(1.0)
    assert hungarian_miou(true, pred).item() == pytest.approx(1.0)
    # Slot 2 wins only an unlabelled pixel: it is not a predicted segment.
    assert object_count_accuracy(true, pred).item() == 1.0


def test_contingency_table_counts_pairs():
    true = torch.tensor([[[0, 2], [2, -1]]])
    pred = torch.tensor([[[1, 1], [0, 1]]])
    want = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    torch.testing.assert_close(contingency_table(true, pred), want)
    assert contingency_table(true, pred, num_slots=4).shape == (1, 3, 4)


# --- foreground MSE -------------------------------------------------------------------------


def test_foreground_mse_hand_made_and_steps():
    images = torch.zeros(2, 2, 2, 2)
    labels = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])
    recon = torch.full((2, 2, 2, 2), 5.0)
    recon[0, 0] = torch.tensor([[5.0, 1.0], [2.0, 5.0]])
    recon[0, 1] = torch.tensor([[5.0, 3.0], [0.0, 5.0]])
    got = foreground_mse(images, recon, labels)
    assert got[0].item() == pytest.approx((1 + 4 + 9 + 0) / 4)  # 2 pixels x 2 channels
    assert math.isnan(got[1].item())  # no foreground
    steps = foreground_mse(images, torch.stack([recon, 2 * recon], dim=1), labels)
    assert steps.shape == (2, 2)
    assert steps[0, 1].item() == pytest.approx(4 * (1 + 4 + 9 + 0) / 4)


def test_foreground_mse_matches_loop():
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(4, 3, 5, 6, generator=gen)
    recon = torch.rand(4, 3, 5, 6, generator=gen)
    labels = torch.randint(-1, 3, (4, 5, 6), generator=gen)
    got = foreground_mse(images, recon, labels)
    for b in range(4):
        fg = labels[b] > 0
        want = ((recon[b] - images[b]) ** 2)[:, fg].mean().item()
        assert got[b].item() == pytest.approx(want, rel=1e-6)


# --- errors ---------------------------------------------------------------------------------


def test_shape_and_type_errors():
    labels = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        segmentation_covering(labels, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        hungarian_miou(labels, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_slots"):
        object_count_accuracy(labels, torch.full((2, 3), 4), num_slots=4)
    with pytest.raises(ValueError, match="labels"):
        foreground_mse(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4))
