"""do_evaluate: metrics, missing masks, predictions, batch and process independence."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from sklearn.metrics import adjusted_rand_score
from torch import nn

from lib.engine.inference import (
    METRIC_KEYS,
    do_evaluate,
    format_metrics,
    metrics_document,
    sanitize_name,
)
from lib.model import build_model
from lib.utils import comm
from tests.engine.engine_helpers import StandIn, join_or_kill, labelled_images, tiny_cfg
from tests.evaluation.test_segmentation import _ref_clevrtex_miou, _ref_oclf_fg_miou

CPU = torch.device("cpu")
NEW_KEYS = ("sc", "msc", "mbo", "miou", "fg_miou", "count_acc", "fg_mse", "fg_pixel_mse")


def _data(num: int = 6, size: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (num, size, size), generator=gen)
    return labelled_images(labels), labels


def _batches(images, labels, batch: int, with_masks: bool = True):
    return [
        (images[i : i + batch], labels[i : i + batch] if with_masks else None)
        for i in range(0, len(images), batch)
    ]


def test_perfect_segmentation_scores_one():
    images, labels = _data()
    labels[0] = 0  # one image without foreground: no fg ARI, still an ARI of 1
    images = labelled_images(labels)
    model = StandIn(num_slots=4, num_iters=2)
    model.train()
    result = do_evaluate(model, [("toy", _batches(images, labels, 4))], CPU)["toy"]
    assert result["fg_ari"] == pytest.approx(1.0) and result["ari"] == pytest.approx(1.0)
    assert result["mse"] == 0.0
    assert result["num_images"] == 6 and result["fg_ari_num_images"] == 5
    for key in ("fg_ari_per_iter", "ari_per_iter", "mse_per_iter"):
        assert len(result[key]) == 3
    assert "reason" not in result
    assert model.training  # mode restored


def test_wrong_segmentation_and_step_override():
    images, labels = _data()
    model = StandIn(num_slots=2, num_iters=2)  # labels mod 2: two objects share a slot
    result = do_evaluate(model, [("toy", _batches(images, labels, 4))], CPU, num_iters=4)["toy"]
    assert result["fg_ari"] < 0.9 and result["ari"] < 0.9
    assert len(result["fg_ari_per_iter"]) == 5


def test_without_masks_every_key_is_present():
    images, labels = _data()
    result = do_evaluate(StandIn(), [("nomask", _batches(images, labels, 4, False))], CPU)
    result = result["nomask"]
    assert result["fg_ari"] is None and result["ari"] is None
    assert result["fg_ari_per_iter"] == [None] * 3 and result["ari_per_iter"] == [None] * 3
    assert result["mse"] == 0.0 and result["num_images"] == 6
    assert "masks" in result["reason"]
    for key in NEW_KEYS:
        assert result[key] is None and result[f"{key}_per_iter"] == [None] * 3
    doc = metrics_document({"nomask": result}, "w.pth", None, num_slots=4, num_iters=2)
    assert set(METRIC_KEYS) <= set(doc) and all(doc[k] is None for k in NEW_KEYS)


def test_predictions_in_dataset_order_and_folder_cleared(tmp_path):
    images, labels = _data(num=5)
    folder = tmp_path / "predictions" / sanitize_name("folder:/x/y")
    folder.mkdir(parents=True)
    (folder / "999999.png").write_bytes(b"stale")
    do_evaluate(
        StandIn(num_slots=4),
        [("folder:/x/y", _batches(images, labels, 2))],
        CPU,
        predictions_dir=str(tmp_path / "predictions"),
    )
    assert sorted(os.listdir(folder)) == [f"{i:06d}.png" for i in range(5)]
    for i in range(5):
        png = Image.open(folder / f"{i:06d}.png")
        assert png.mode == "L" and png.size == (8, 8)
        assert np.array_equal(np.array(png), labels[i].numpy())


def test_real_model_is_batch_independent():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 16, 16, generator=gen)
    labels = torch.randint(0, 3, (4, 16, 16), generator=gen)
    one = do_evaluate(model, [("a", _batches(images, labels, 4))], CPU)["a"]
    two = do_evaluate(model, [("a", _batches(images, labels, 1))], CPU, num_slots=3)["a"]
    for key in ("fg_ari", "ari", "mse"):
        assert one[key] == pytest.approx(two[key], abs=1e-4)
    assert model.training


class _Recorder(nn.Module):
    """The wrapped model, keeping every forward's masks and reconstructions."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.outputs = []

    def forward(self, images, **kwargs):
        out = self.inner(images, **kwargs)
        self.outputs.append((out["masks"].clone(), out["recon"].clone()))
        return out


def _reference_scores(true: np.ndarray, pred: np.ndarray, num_slots: int) -> dict:
    """One image's scores by plain numpy / scipy / scikit-learn, from the sources' definitions.

    true: (H, W) labels 0..3, 0 = background; pred: (H, W) argmax slot. None = undefined.
    """
    t, p = true.ravel(), pred.ravel()
    fg = t > 0
    segments = [t == g for g in np.unique(t)]  # every non-empty true segment, background first
    slots = [p == k for k in np.unique(p)]  # every slot that wins a pixel
    iou = np.array([[(g & k).sum() / (g | k).sum() for k in slots] for g in segments])
    out = {"ari": adjusted_rand_score(t, p), "count_acc": float(len(segments) == len(slots))}
    if not fg.any():
        return {**out, **dict.fromkeys(("fg_ari", "sc", "msc", "mbo", "miou", "fg_miou"))}
    objects = slice(1 if (t == 0).any() else 0, None)
    best = iou.max(axis=1)[objects]
    sizes = np.array([g.sum() for g in segments])[objects]
    miou = _ref_clevrtex_miou(true, pred, num_slots, 4, True)[0]  # 4 label rows in each batch
    return {
        **out,
        "fg_ari": adjusted_rand_score(t[fg], p[fg]),
        "sc": float((sizes * best).sum() / sizes.sum()),
        "msc": float(best.mean()),
        "mbo": float(best.mean()),
        "miou": None if np.isnan(miou) else miou,
        "fg_miou": _ref_oclf_fg_miou(true, pred, num_slots),
    }


def _mean_defined(values):
    defined = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(defined)) if defined else None


def test_new_metrics_match_a_per_image_reference():
    # The real (untrained) model: masks that neither match the labels nor are degenerate.
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = _Recorder(build_model(cfg))
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(7, 3, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (7, 16, 16), generator=gen)
    labels[2] = 0  # no foreground: left out of every mean but ari and count_acc
    labels[4, :8] = 1  # large objects, so some slots cover one well
    labels[4, 8:] = 2  # and no background pixel
    batches = _batches(images, labels, 3)
    result = do_evaluate(model, [("toy", batches)], CPU, num_iters=3)["toy"]
    masks = torch.cat([m for m, _ in model.outputs])  # (7, T+1, K, H, W)
    recon = torch.cat([r for _, r in model.outputs])
    steps = masks.shape[1]
    assert steps == 4
    reference = {key: [] for key in ("fg_ari", "ari", *NEW_KEYS)}
    for t in range(steps):
        per_image = []
        for i in range(len(images)):
            pred = masks[i, t].argmax(dim=0).numpy()
            scores = _reference_scores(labels[i].numpy(), pred, masks.shape[2])
            fg = (labels[i] > 0).numpy()
            squared = ((recon[i, t] - images[i]) ** 2).numpy()  # (3, H, W)
            scores["fg_mse"] = float((squared * fg).mean())  # the library's: over C x H x W
            scores["fg_pixel_mse"] = float(squared[:, fg].mean()) if fg.any() else None
            per_image.append(scores)
        for key in reference:
            reference[key].append(_mean_defined([s[key] for s in per_image]))
    assert reference["count_acc"][-1] is not None
    for key in ("fg_ari", "ari", *NEW_KEYS):
        # fg_mse: float32 squares summed in a different order; the rest are exact counts.
        tol = 1e-6 if "mse" in key else 1e-9
        assert result[f"{key}_per_iter"] == pytest.approx(reference[key], abs=tol), key
        assert result[key] == result[f"{key}_per_iter"][-1]
    assert result["fg_ari_num_images"] == 6
    assert result["left_out"]["fg_ari"] == 1 and result["left_out"]["fg_mse"] == 0
    assert "foreground" in result["left_out_reason"]
    # Not trivially equal keys: the untrained model is far from a perfect segmentation.
    assert 0 < result["miou"] < 1 and result["sc"] != result["msc"]
    assert result["msc"] == result["mbo"]
    line = format_metrics({"toy": result})
    assert "miou" in line and "count_acc" in line and "fg_mse" in line
    assert reference["miou"][-1] != reference["fg_miou"][-1]
    doc = metrics_document({"toy": result}, "w.pth", 1, num_slots=3, num_iters=3)
    assert list(doc)[: len(METRIC_KEYS)] == list(METRIC_KEYS)
    assert all(doc[k] == result[k] for k in METRIC_KEYS)


def test_perfect_segmentation_new_metrics():
    images, labels = _data()
    labels[0] = 0
    images = labelled_images(labels)
    result = do_evaluate(StandIn(num_slots=4), [("toy", _batches(images, labels, 4))], CPU)["toy"]
    for key in ("sc", "msc", "mbo", "fg_miou", "count_acc"):
        assert result[key] == pytest.approx(1.0) and len(result[f"{key}_per_iter"]) == 3
    assert 0 < result["miou"] <= 1  # ClevrTex: a pair less for images without background
    assert result["fg_mse"] == 0.0 and result["fg_pixel_mse"] == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_worker(rank, world, port, out_dir, queue):
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    comm.init_distributed(use_cuda=False)
    images, labels = _data(num=7)
    # Rank r's shard is r::world (no padding); rank 1 gets one image fewer.
    shard = _batches(images[rank::world], labels[rank::world], 2)
    result = do_evaluate(StandIn(num_slots=3), [("toy", shard)], CPU, predictions_dir=out_dir)
    comm.destroy_distributed()
    queue.put((rank, result))


def test_two_processes_match_one(tmp_path):
    images, labels = _data(num=7)
    single = do_evaluate(
        StandIn(num_slots=3),
        [("toy", _batches(images, labels, 3))],
        CPU,
        predictions_dir=str(tmp_path / "one"),
    )
    # fork: the children need no fresh interpreter (no CUDA here), and start in ms, not s.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    queue = ctx.SimpleQueue()
    context = mp.start_processes(
        _eval_worker,
        args=(2, _free_port(), str(tmp_path / "two"), queue),
        nprocs=2,
        start_method=method,
        join=False,
    )
    join_or_kill(context)
    results = dict(queue.get() for _ in range(2))
    for rank in (0, 1):
        assert results[rank]["toy"]["num_images"] == 7
        for key in ("fg_ari", "ari", "mse", *NEW_KEYS):
            assert results[rank]["toy"][key] == pytest.approx(single["toy"][key], abs=1e-12)
            per_iter = f"{key}_per_iter"
            assert results[rank]["toy"][per_iter] == pytest.approx(single["toy"][per_iter])
    assert 0 < single["toy"]["miou"] < 1  # a non-trivial segmentation (label 3 shares slot 0)
    one = sorted(os.listdir(tmp_path / "one" / "toy"))
    assert one == sorted(os.listdir(tmp_path / "two" / "toy")) and len(one) == 7
    for name in one:
        a = np.array(Image.open(tmp_path / "one" / "toy" / name))
        b = np.array(Image.open(tmp_path / "two" / "toy" / name))
        assert np.array_equal(a, b)


def test_metrics_document_turns_non_finite_values_into_null():
    result = {
        "fg_ari": 0.5,
        "ari": float("nan"),
        "mse": float("inf"),
        "num_images": 2,
        "fg_ari_per_iter": [0.1, float("nan")],
        "ari_per_iter": [0.0, 0.0],
        "mse_per_iter": [1.0, 1.0],
        **{key: 0.5 for key in NEW_KEYS},
        **{f"{key}_per_iter": [0.5, 0.5] for key in NEW_KEYS},
    }
    doc = metrics_document({"d": result}, "w.pth", 3, num_slots=4, num_iters=1)
    text = json.dumps(doc, allow_nan=False)  # would raise on any NaN left
    back = json.loads(text)
    assert back["ari"] is None and back["mse"] is None and back["fg_ari"] == 0.5
    assert back["fg_ari_per_iter"] == [0.1, None]
    assert set(back["non_finite"]) == {
        "ari",
        "mse",
        "fg_ari_per_iter[1]",
        "datasets.d.ari",
        "datasets.d.mse",
        "datasets.d.fg_ari_per_iter[1]",
    }


class _Broken(StandIn):
    """A model whose outputs are NaN (e.g. NaN weights)."""

    def forward(self, images, **kwargs):
        out = super().forward(images, **kwargs)
        return {**out, "masks": out["masks"] * float("nan"), "recon": out["recon"] * float("nan")}


def test_non_finite_outputs_give_null_metrics_never_zero(tmp_path):
    images, labels = _data()
    result = do_evaluate(_Broken(), [("toy", _batches(images, labels, 4))], CPU)["toy"]
    for key in ("fg_ari", "ari", "mse", *NEW_KEYS):
        assert result[key] is None and result[f"{key}_per_iter"] == [None] * 3, key
    assert result["non_finite_images"] == 6 and "not finite" in result["reason"]
    doc = metrics_document({"toy": result}, "w.pth", None, num_slots=4, num_iters=2)
    assert doc["fg_ari"] is None and doc["non_finite_images"] == 6
    json.dumps(doc, allow_nan=False)


def test_native_labels_upsample_the_masks_as_efficientmorl():
    # Labels at 12x12, model at 8x8: each soft mask is resized with PIL's default (bicubic)
    # filter, as EfficientMORL's evaluation does, then argmax; fg_mse uses the labels at 8x8.
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 3, (2, 12, 12), generator=gen)
    images = torch.rand(2, 3, 8, 8, generator=gen)
    model = _Recorder(
        build_model(tiny_cfg(**{"INPUT.IMAGE_SIZE": 8, "MODEL.REFINEMENT.CONV_CHANNELS": (8,)}))
    )
    result = do_evaluate(model, [("toy", [(images, labels)])], CPU, num_iters=1)["toy"]
    masks = model.outputs[0][0][:, -1]  # (2, K, 8, 8)
    want = []
    for b in range(2):
        big = [np.asarray(Image.fromarray(m.numpy(), mode="F").resize((12, 12))) for m in masks[b]]
        pred = np.argmax(np.stack(big), axis=0)
        want.append(adjusted_rand_score(labels[b].numpy().ravel(), pred.ravel()))
    assert result["ari"] == pytest.approx(np.mean(want), abs=1e-9)
