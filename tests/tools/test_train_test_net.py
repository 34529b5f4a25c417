"""End to end on a tiny generated Tetrominoes set: train, resume, evaluate, read TensorBoard."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lib.config import load_cfg
from lib.data import make_dataset
from lib.engine.checkpoint import Checkpointer
from lib.model import build_model
from tests.tools.tools_helpers import load_tool, write_config

train_net = load_tool("train_net")
test_net = load_tool("test_net")

METRIC_KEYS = {
    "fg_ari",
    "ari",
    "mse",
    "num_images",
    "fg_ari_per_iter",
    "ari_per_iter",
    "mse_per_iter",
}
NEW_KEYS = ("sc", "msc", "mbo", "miou", "count_acc", "fg_mse")
METRIC_KEYS |= set(NEW_KEYS) | {f"{key}_per_iter" for key in NEW_KEYS}


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow  # end to end: two trainings, a resume and an evaluation
def test_train_resume_evaluate(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")

    # Train 4 iterations.
    assert train_net.main(["--config-file", config, "OUTPUT_DIR", out]) == 0
    files = set(os.listdir(out))
    assert {
        "config.yaml",
        "log.txt",
        "last_checkpoint",
        "model_0000002.pth",
        "model_0000004.pth",
    } <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    log = open(os.path.join(out, "log.txt")).read()
    for text in (
        "git commit:",
        "torch:",
        "python:",
        "device: cpu",
        "provenance",
        "'source': 'generated'",
        "images per process",
    ):
        assert text in log, text
    assert "MAX_ITER: 4" in open(os.path.join(out, "config.yaml")).read()

    # Rerun with more iterations: resumes at 4, the lr continues its decay.
    assert train_net.main(["--config-file", config, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "6"]) == 0
    assert "resumed from" in open(os.path.join(out, "log.txt")).read()
    state = torch.load(os.path.join(out, "model_0000006.pth"), weights_only=True)
    assert state["iteration"] == 6 and state["scheduler"]["last_epoch"] == 6
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 ** (6 / 4))

    # An uninterrupted run to 6 gives the same weights (RNG, data order and optimiser resume).
    straight = str(tmp_path / "straight")
    assert (
        train_net.main(["--config-file", config, "OUTPUT_DIR", straight, "SOLVER.MAX_ITER", "6"])
        == 0
    )
    resumed, direct = (
        _weights(os.path.join(out, "model_0000006.pth")),
        _weights(os.path.join(straight, "model_0000006.pth")),
    )
    for key in direct:
        assert torch.allclose(resumed[key], direct[key], atol=1e-6), key

    # TensorBoard: scalars and images of both runs, the resumed steps after the first ones.
    events = EventAccumulator(out, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    expected = {
        "loss/total",
        "train/lr",
        "train/grad_norm",
        "train/images_per_s",
        "eval/tetrominoes_synth_test/fg_ari",
        "eval/tetrominoes_synth_test/ari",
        "eval/tetrominoes_synth_test/mse",
    }
    expected |= {f"eval/tetrominoes_synth_test/{key}" for key in NEW_KEYS}
    expected |= {f"loss/{kind}_t{t}" for kind in ("nll", "kl") for t in range(3)}
    assert expected <= scalars, expected - scalars
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4, 5, 6]
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs == pytest.approx([1e-3 * 0.5 ** (it / 4) for it in range(6)], rel=1e-5)
    assert [e.step for e in events.Scalars("eval/tetrominoes_synth_test/fg_ari")] == [2, 4, 6]
    for name in ("inputs", "reconstructions", "masks", "slots", "refinement"):
        assert (
            f"train_images/{name}" in images
            and f"eval_images/tetrominoes_synth_test/{name}" in images
        )
    # The slot grid (2 images x K = 3 tiles of 16 px, 1 px padding) upscaled 4x to 64 px tiles.
    slots = events.Images("train_images/slots")[0]
    assert (slots.width, slots.height) == (4 * (1 + 3 * 17), 4 * (1 + 2 * 17))

    # Evaluate the last checkpoint with predictions.
    capsys.readouterr()
    assert (
        test_net.main(["--config-file", config, "OUTPUT_DIR", out, "TEST.SAVE_PREDICTIONS", "True"])
        == 0
    )
    assert "fg_ari" in capsys.readouterr().out
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert METRIC_KEYS <= set(metrics)
    assert metrics["num_images"] == 6 and metrics["iteration"] == 6
    assert metrics["checkpoint"].endswith("model_0000006.pth")
    assert (
        len(metrics["fg_ari_per_iter"]) == 3 and metrics["fg_ari"] == metrics["fg_ari_per_iter"][-1]
    )
    assert metrics["mse"] > 0
    assert metrics["provenance"]["source"] == "generated"
    assert METRIC_KEYS <= set(metrics["datasets"]["tetrominoes_synth_test"])
    folder = os.path.join(out, "predictions", "tetrominoes_synth_test")
    names = sorted(os.listdir(folder))
    assert names == [f"{i:06d}.png" for i in range(6)]
    predictions = []
    for name in names:
        png = Image.open(os.path.join(folder, name))
        assert png.mode == "L" and png.size == (16, 16) and np.array(png).max() < 3
        predictions.append(np.array(png))
    # The ARIs of metrics.json again, from the saved argmax PNGs and the true label maps, by
    # scikit-learn (the predictions are the final step's, as fg_ari and ari are).
    test_set = make_dataset("tetrominoes_synth_test", load_cfg(config), False)
    fg_scores, scores = [], []
    for index, pred in enumerate(predictions):
        labels = np.asarray(test_set[index][1])
        scores.append(adjusted_rand_score(labels.ravel(), pred.ravel()))
        fg = labels > 0
        if fg.any():
            fg_scores.append(adjusted_rand_score(labels[fg], pred[fg]))
    assert metrics["ari"] == pytest.approx(np.mean(scores), abs=1e-6)
    assert metrics["fg_ari"] == pytest.approx(np.mean(fg_scores), abs=1e-6)
    assert metrics["fg_ari_num_images"] == len(fg_scores)
    for key in NEW_KEYS:
        assert len(metrics[f"{key}_per_iter"]) == 3
        assert metrics[key] == metrics[f"{key}_per_iter"][-1] and metrics[key] >= 0
        assert key == "fg_mse" or metrics[key] <= 1

    # More slots and steps at test time; the predictions folder is rewritten.
    opts = ["TEST.NUM_SLOTS", "5", "TEST.NUM_ITERS", "3", "TEST.SAVE_PREDICTIONS", "True"]
    assert test_net.main(["--config-file", config, "OUTPUT_DIR", out, *opts]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert len(metrics["fg_ari_per_iter"]) == 4 and metrics["num_slots"] == 5
    assert len(os.listdir(folder)) == 6
    assert max(np.array(Image.open(os.path.join(folder, n))).max() for n in names) < 5


def test_dataset_without_masks_reports_null_ari(tmp_path, data_root):
    # A folder dataset of PNGs without masks, evaluated from MODEL.WEIGHT.
    images = tmp_path / "plain" / "images"
    images.mkdir(parents=True)
    gen = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(gen.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    config = write_config(str(tmp_path), data_root)
    cfg = load_cfg(config)
    weight = str(tmp_path / "weights")
    Checkpointer(build_model(cfg), save_dir=weight).save(0)
    out = str(tmp_path / "eval")
    argv = [
        "--config-file",
        config,
        "OUTPUT_DIR",
        out,
        "DATASETS.TEST",
        f"folder:{tmp_path / 'plain'}",
    ]
    argv += ["MODEL.WEIGHT", os.path.join(weight, "model_0000000.pth")]
    assert test_net.main(argv) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert METRIC_KEYS <= set(metrics)
    assert metrics["fg_ari"] is None and metrics["ari"] is None and metrics["num_images"] == 3
    assert metrics["fg_ari_per_iter"] == [None, None, None] and len(metrics["mse_per_iter"]) == 3
    assert "masks" in metrics["reason"]
    for key in NEW_KEYS:
        assert metrics[key] is None and metrics[f"{key}_per_iter"] == [None, None, None]
