"""do_evaluate: metrics, missing masks, predictions, batch and process independence."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from lib.engine.inference import do_evaluate, metrics_document, sanitize_name
from lib.model import build_model
from lib.utils import comm
from tests.engine.engine_helpers import StandIn, join_or_kill, labelled_images, tiny_cfg

CPU = torch.device("cpu")


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
        for key in ("fg_ari", "ari", "mse"):
            assert results[rank]["toy"][key] == pytest.approx(single["toy"][key], abs=1e-12)
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
