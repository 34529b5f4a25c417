"""do_evaluate reports the factor regressor's scores over a whole test set, exactly."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, r2_score
from torch.utils.data import DataLoader

from lib.data.build import collate, make_data_loader, make_dataset
from lib.engine.inference import do_evaluate, format_metrics
from lib.model import build_model
from tests.data.conftest import data_cfg
from tests.data.test_factors import _write_folder
from tests.model.conftest import tiny_cfg


def _factor_folder(tmp_path, n=5, size=16, n_ent=4):
    """A prepared tetrominoes folder with random factors, labels and images."""
    rng = np.random.default_rng(1)
    factors = {
        "x": rng.random((n, n_ent), dtype=np.float32),
        "y": rng.random((n, n_ent), dtype=np.float32),
        "shape": rng.integers(0, 20, (n, n_ent)).astype(np.float32),
        "color": rng.random((n, n_ent, 3), dtype=np.float32),
        "visibility": (rng.random((n, n_ent)) > 0.3).astype(np.float32),
    }
    _write_folder(tmp_path, "tetrominoes", factors, n=n, size=size)
    labels = rng.integers(0, n_ent, (n, size, size)).astype(np.uint8)
    np.save(tmp_path / "tetrominoes" / "masks.npy", labels)
    images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    np.save(tmp_path / "tetrominoes" / "images.npy", images)
    return factors, labels, images


def _factor_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg(**{"DATASETS.TRAIN": ("tetrominoes_train",)}))


def test_factor_scores_over_the_set_match_sklearn(tmp_path):
    n, size, n_ent = 5, 16, 4
    factors, labels, images = _factor_folder(tmp_path, n, size, n_ent)
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=size)
    dataset = make_dataset("tetrominoes", cfg, False, with_factors=True)
    model = _factor_model()
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate)
    result = do_evaluate(model, [("t", loader)], torch.device("cpu"))["t"]
    # Asked for at construction, never switched: a loader without factors gets none.
    plain = DataLoader(make_dataset("tetrominoes", cfg, False), batch_size=3, collate_fn=collate)
    assert "factors" not in do_evaluate(model, [("t", plain)], torch.device("cpu"))["t"]

    # Reference: one forward over the whole set, explicit matching loops, sklearn.
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    model.eval()
    with torch.no_grad():
        out = model(x)
    z, masks = out["z"][:, -1].double().numpy(), out["masks"][:, -1].double().numpy()
    w = model.factor_regressor.predict_latents.weight.detach().double().numpy()
    b = model.factor_regressor.predict_latents.bias.detach().double().numpy()
    ys = {"position": [], "color": [], "shape": []}
    ps = {"position": [], "color": [], "shape": []}
    for i in range(n):
        for obj in range(n_ent):
            if factors["visibility"][i, obj] == 0:
                continue
            overlap = [(masks[i, k] * (labels[i] == obj)).sum() for k in range(masks.shape[1])]
            pred = w @ z[i, int(np.argmax(overlap))] + b
            ys["position"].append([factors["x"][i, obj], factors["y"][i, obj]])
            ps["position"].append(pred[0:2])
            ys["color"].append(factors["color"][i, obj])
            ps["color"].append(pred[2:5])
            ys["shape"].append(int(factors["shape"][i, obj]))
            ps["shape"].append(int(np.argmax(pred[5:25])))
    got = result["factors"]
    assert got["position"] == pytest.approx(r2_score(ys["position"], ps["position"]), rel=1e-5)
    assert got["color"] == pytest.approx(r2_score(ys["color"], ps["color"]), rel=1e-5)
    assert got["shape"] == pytest.approx(accuracy_score(ys["shape"], ps["shape"]))
    assert result["factor_loss"] > 0 and "factors:" in format_metrics({"t": result})


def test_factor_metrics_survive_earlier_passes_with_persistent_workers(tmp_path):
    # Worker processes copy the dataset when they start and are kept between passes: the
    # batches' fields must be decided when the loader is built, not switched afterwards.
    _factor_folder(tmp_path, n=6)
    cfg = data_cfg(
        tmp_path,
        INPUT__IMAGE_SIZE=16,
        DATASETS__TEST=("tetrominoes",),
        DATALOADER__NUM_WORKERS=2,
        TEST__IMS_PER_BATCH=2,
    )
    [(name, loader)] = make_data_loader(cfg, False, with_factors=True)
    assert loader.persistent_workers and loader.num_workers == 2
    assert all(len(batch) == 3 for batch in loader)  # an earlier pass starts the workers
    model = _factor_model()
    first = do_evaluate(model, [(name, loader)], torch.device("cpu"))[name]
    second = do_evaluate(model, [(name, loader)], torch.device("cpu"))[name]
    cfg.DATALOADER.NUM_WORKERS = 0
    [(_, in_process)] = make_data_loader(cfg, False, with_factors=True)
    reference = do_evaluate(model, [(name, in_process)], torch.device("cpu"))[name]
    assert reference["factors"] is not None and None not in reference["factors"].values()
    assert first["factors"] == pytest.approx(reference["factors"])
    assert second["factors"] == pytest.approx(reference["factors"])
