"""Segment-matching metrics against per-image loops, brute-force matching and hand-made cases."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from lib.evaluation.ari import contingency_table
from lib.evaluation.segmentation import SCORE_KEYS, foreground_mse, segmentation_scores

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


def _ref_clevrtex_miou(true, pred, num_slots, num_rows, ignore_background):
    """ClevrTex's mIoU_fg (mIoU without ignore_background) of one image, from its evaluator's
    documented steps: one-hot masks padded to n = max(rows, K), float32 IoU (0 for an empty
    side), scipy's matching of true x predicted, the matched IoUs summed over the pairs with a
    non-empty side (minus the background pair, always)."""
    n = max(num_rows, num_slots)
    trues = [(true == g) for g in range(n)]
    empty = np.zeros_like(true, bool)
    preds = [(pred == k) for k in range(num_slots)] + [empty] * (n - num_slots)
    iou = np.zeros((n, n), np.float32)
    for g, t in enumerate(trues):
        for k, p in enumerate(preds):
            if t.any() and p.any():
                iou[g, k] = np.float32((t & p).sum()) / np.float32((t | p).sum())
    rows, cols = linear_sum_assignment(iou, maximize=True)
    pairs = sum(trues[g].any() or preds[k].any() for g, k in zip(rows, cols))
    start = 1 if ignore_background else 0
    if pairs - start == 0 or not (true >= start).any():
        return math.nan, iou
    return float(iou[rows, cols].astype(np.float64)[start:].sum()) / (pairs - start), iou


def _ref_oclf_fg_miou(true, pred, num_slots):
    """OCLF UnsupervisedMaskIoUMetric(matching="hungarian", ignore_background=True) on one
    image, the matching by brute force over injective assignments of objects to slots."""
    labels = [g for g in np.unique(true) if g > 0]
    if not labels:
        return math.nan
    preds = [(pred == k) & (true >= 0) for k in range(num_slots)]
    iou = np.array([[_iou(true == g, p) for p in preds] for g in labels])
    best = 0.0
    for perm in itertools.permutations(range(max(len(labels), num_slots)), len(labels)):
        best = max(best, sum(iou[i, k] for i, k in enumerate(perm) if k < num_slots))
    return best / len(labels)


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


def _score(key, true, pred, ignore_background=True, num_slots=None):
    return segmentation_scores(true, pred, ignore_background, num_slots)[key].double()


# --- agreement with the references on random label maps --------------------------------------


@pytest.mark.parametrize("ignore_background", [True, False])
def test_every_score_matches_its_reference(ignore_background):
    gen = np.random.default_rng(0)
    for trial in range(12):
        num_slots = int(gen.integers(1, 6))
        negatives = trial % 2 == 1
        true, pred = _random_batch(
            gen, num_true=int(gen.integers(1, 6)), num_slots=num_slots, negatives=negatives
        )
        true[1][true[1] == 0] = 1  # an image without background pixels
        t, p = torch.from_numpy(true), torch.from_numpy(pred)
        got = segmentation_scores(t, p, ignore_background, num_slots)
        assert list(got) == list(SCORE_KEYS)
        for b in range(true.shape[0]):
            want = dict(
                zip(("sc", "msc"), _ref_covering(true[b], pred[b], num_slots, ignore_background))
            )
            want["mbo"] = _ref_mbo(true[b], pred[b], num_slots, ignore_background)
            want["fg_miou"] = _ref_oclf_fg_miou(true[b], pred[b], num_slots)
            if not negatives:  # ClevrTex has no unlabelled pixels
                rows = int(true.max()) + 1
                want["miou"] = _ref_clevrtex_miou(
                    true[b], pred[b], num_slots, rows, ignore_background
                )[0]
            kept = true[b][true[b] >= 0], pred[b][true[b] >= 0]
            fg = kept[0] > 0
            want["ari"] = adjusted_rand_score(*kept)
            want["fg_ari"] = adjusted_rand_score(kept[0][fg], kept[1][fg]) if fg.any() else math.nan
            want["count_acc"] = float(len(np.unique(kept[1])) == len(np.unique(kept[0])))
            for key, value in want.items():
                if math.isnan(value):
                    assert math.isnan(got[key][b].item()), (trial, b, key)
                else:
                    assert got[key][b].item() == pytest.approx(value, abs=1e-10), (trial, b, key)


def test_clevrtex_miou_ties_follow_the_solver_and_stay_optimal():
    # Random 6x6 maps: zero-IoU ties are frequent. Every value must be ClevrTex's, and the
    # matching it rests on must have the maximal total IoU (brute force).
    gen = np.random.default_rng(7)
    true = gen.integers(0, 4, size=(40, 6, 6))
    pred = gen.integers(0, 5, size=(40, 6, 6))
    got = _score("miou", torch.from_numpy(true), torch.from_numpy(pred), num_slots=5)
    for b in range(40):
        want, iou = _ref_clevrtex_miou(true[b], pred[b], 5, 4, True)
        assert got[b].item() == pytest.approx(want, abs=1e-12)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        best = max(sum(iou[i, q[i]] for i in range(5)) for q in itertools.permutations(range(5)))
        assert iou[rows, cols].sum() == pytest.approx(best, abs=1e-6)


# --- hand-made label maps with numbers worked out by hand ------------------------------------


def test_hand_made_three_segments():
    # bg {0..3}, object 1 {4, 5}, object 2 {6, 7}; slots: 0 {0..2}, 1 {3..6}, 2 {7}.
    true = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]])
    pred = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2]])
    # IoU rows bg, o1, o2 / columns s0, s1, s2: [3/4, 1/7, 0], [0, 2/4, 0], [0, 1/5, 1/2].
    fg, full = segmentation_scores(true, pred), segmentation_scores(true, pred, False)
    assert fg["sc"].item() == pytest.approx(0.5)  # (2 * .5 + 2 * .5) / 4
    assert fg["msc"].item() == fg["mbo"].item() == pytest.approx(0.5)
    assert full["sc"].item() == pytest.approx(5 / 8)  # (3 + 1 + 1) / 8
    assert full["msc"].item() == pytest.approx(7 / 12)
    # Matching bg-s0, o1-s1, o2-s2; foreground pairs: 3 - 1 background pair.
    assert fg["miou"].item() == pytest.approx(0.5)
    assert full["miou"].item() == pytest.approx(1.75 / 3)
    assert fg["fg_miou"].item() == pytest.approx(0.5)  # o1-s1 1/2, o2-s2 1/2
    assert fg["count_acc"].item() == 1.0


def test_hand_made_more_objects_than_slots():
    true = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    pred = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    # Each object has IoU 2/6 with slot 1; only one of them gets it in a matching.
    got = segmentation_scores(true, pred)
    assert got["msc"].item() == got["sc"].item() == pytest.approx(1 / 3)
    assert got["miou"].item() == pytest.approx(1 / 9)  # (1/3 + 0 + 0) / (4 pairs - 1)
    assert got["fg_miou"].item() == pytest.approx(1 / 9)  # (1/3 + 0 + 0) / 3 objects
    assert got["count_acc"].item() == 0.0


def test_hand_made_split_object_and_surplus_slots():
    # Background and the object are each split in two halves; slot 4 wins no pixel.
    true = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    got = segmentation_scores(true, pred, num_slots=5)
    assert got["mbo"].item() == pytest.approx(0.5)
    # ClevrTex: pairs with a non-empty side bg-s, o1-s, (empty)-s, (empty)-s: 4 - 1 = 3.
    assert got["miou"].item() == pytest.approx(0.5 / 3)
    assert got["fg_miou"].item() == 0.5  # OCLF does not count surplus slots
    assert got["count_acc"].item() == 0.0
    assert _score("miou", true, pred).item() == pytest.approx(0.5 / 3)  # the empty slot: same


def test_no_background_pixels_subtracts_the_background_pair_as_clevrtex():
    # Every pixel is an object: ClevrTex still subtracts one pair, 3 / (3 - 1).
    true = torch.tensor([[[1, 1], [2, 3]]])
    pred = torch.tensor([[[2, 2], [0, 1]]])
    got = segmentation_scores(true, pred)
    for key in ("sc", "msc", "fg_miou", "count_acc"):
        assert got[key].item() == pytest.approx(1.0), key
    assert got["miou"].item() == pytest.approx(1.5)


def test_single_segment_and_no_foreground():
    true = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [3, 3, 3, 3]])
    pred = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    got = segmentation_scores(true, pred)
    for key in ("fg_ari", "sc", "msc", "mbo", "miou", "fg_miou"):
        assert math.isnan(got[key][0].item()) and math.isnan(got[key][1].item()), key
    for key in ("sc", "msc", "fg_miou", "fg_ari"):
        assert got[key][2].item() == pytest.approx(1.0), key
    # One object filling the image, one slot: a single non-empty pair; ClevrTex divides by 0.
    assert math.isnan(got["miou"][2].item())
    # With the background scored, the all-background images are defined: the background's best
    # IoU is 1/2 in image 1; for the mIoU the second slot is a surplus pair, (1/2 + 0) / 2.
    full = segmentation_scores(true, pred, False)
    for key, want in (("sc", 0.5), ("msc", 0.5), ("miou", 0.25)):
        assert full[key][0].item() == pytest.approx(1.0), key
        assert full[key][1].item() == pytest.approx(want), key
    assert got["count_acc"].tolist() == [1.0, 0.0, 1.0]


def test_unlabelled_pixels_are_dropped_from_both_sides():
    # Slot 1 also wins the unlabelled pixels; they do not enlarge its segment.
    true = torch.tensor([[0, 0, 1, 1, -1, -1]])
    pred = torch.tensor([[0, 0, 1, 1, 1, 2]])
    got = segmentation_scores(true, pred)
    assert got["msc"].item() == got["miou"].item() == got["fg_miou"].item() == pytest.approx(1.0)
    # Slot 2 wins only an unlabelled pixel: it is not a predicted segment.
    assert got["count_acc"].item() == 1.0


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
    library, per_pixel = foreground_mse(images, recon, labels)
    assert library[0].item() == pytest.approx((1 + 4 + 9 + 0) / 8)  # all 2 x 2 x 2 values
    assert per_pixel[0].item() == pytest.approx((1 + 4 + 9 + 0) / 4)  # 2 pixels x 2 channels
    assert library[1].item() == 0.0 and math.isnan(per_pixel[1].item())  # no foreground
    steps, _ = foreground_mse(images, torch.stack([recon, 2 * recon], dim=1), labels)
    assert steps.shape == (2, 2)
    assert steps[0, 1].item() == pytest.approx(4 * (1 + 4 + 9 + 0) / 8)


def test_foreground_mse_matches_loops():
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(4, 3, 5, 6, generator=gen)
    recon = torch.rand(4, 3, 5, 6, generator=gen)
    labels = torch.randint(-1, 3, (4, 5, 6), generator=gen)
    library, per_pixel = foreground_mse(images, recon, labels)
    for b in range(4):
        fg = labels[b] > 0
        squared = (recon[b] - images[b]) ** 2
        # The object-centric library: (squared error x foreground mask).mean over C, H, W.
        assert library[b].item() == pytest.approx((squared * fg).mean().item(), rel=1e-6)
        assert per_pixel[b].item() == pytest.approx(squared[:, fg].mean().item(), rel=1e-6)
        fraction = fg.double().mean().item()
        assert library[b].item() == pytest.approx(per_pixel[b].item() * fraction, rel=1e-6)


# --- errors ---------------------------------------------------------------------------------


def test_shape_and_type_errors():
    labels = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        segmentation_scores(labels, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        segmentation_scores(labels, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_slots"):
        segmentation_scores(labels, torch.full((2, 3), 4), num_slots=4)
    with pytest.raises(ValueError, match="labels"):
        foreground_mse(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4))
