"""lib/analysis/run_figures.py: the numbers and titles of the run figures, against sklearn,
numpy and hand-written strings."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch.utils.tensorboard import SummaryWriter

from lib.analysis import run_figures
from lib.analysis.layout import figure_pixel_size
from lib.analysis.loading import ImageBatch, LoadedModel, ModelInputs, run_model
from lib.errors import RunError

from .conftest import K, T

CPU = torch.device("cpu")


def _batch(n=2, with_masks=True):
    g = torch.Generator().manual_seed(4)
    masks = torch.zeros(n, 8, 8, dtype=torch.int64)
    masks[:, 1:4, 1:5] = 1
    masks[:, 5:8, 3:8] = 2
    masks[-1, 0:2, 6:8] = 3  # the images differ
    return ImageBatch("toy", torch.rand(n, 3, 8, 8, generator=g), masks if with_masks else None,
                      list(range(5, 5 + n)))  # fmt: skip


def _inputs(model, batch, num_slots=None):
    loaded = LoadedModel(model, "/x/model_0000001.pth", 1, CPU)
    return ModelInputs(loaded, batch, "H", num_slots, None)


def _texts(fig):
    return " ".join(t.get_text() for t in fig.texts)


def test_decomposition_title():
    masks = torch.zeros(2, T + 1, K, 4, 4)
    assert (
        run_figures.decomposition_title("H", masks, True)
        == f"H\nK={K} slots, T={T} steps; ARI in %"
    )
    assert run_figures.decomposition_title("H", masks, False).endswith(
        "; ARI in % (no true masks: ARI not computed)"
    )


def test_refinement_title():
    metrics = {"mse": [0.123456, 0.05, 0.01], "fg_ari": [0.5, 0.6, 0.9734]}
    assert (
        run_figures.refinement_title("H", 3, metrics, True)
        == "H\nimage #3: MSE 0.1235 -> 0.0100, fg ARI 50.0 -> 97.3 (%)"
    )
    assert (
        run_figures.refinement_title("H", 3, metrics, False) == "H\nimage #3: MSE 0.1235 -> 0.0100"
    )


def test_generalisation_runs_fg_ari_against_sklearn(tiny_model):
    batch = _batch()
    runs, line = run_figures.generalisation_runs(_inputs(tiny_model, batch), (K, 5))
    assert [tag for tag, _ in runs] == [f"K={K} (as trained)", "K=5"]
    expected = []
    for (tag, final), k in zip(runs, (K, 5)):
        assert final["masks"].shape == (2, k, 8, 8) and final["recon"].shape == (2, 3, 8, 8)
        assert final["components"].shape == (2, k, 3, 8, 8)
        # The final step of a full forward pass with that K.
        full = run_model(tiny_model, batch.images, CPU, k, None)
        assert torch.equal(final["masks"], full["masks"][:, -1])
        scores = []
        for i in range(2):
            true = batch.masks[i].numpy().ravel()
            pred = final["masks"][i].argmax(dim=0).numpy().ravel()
            scores.append(adjusted_rand_score(true[true > 0], pred[true > 0]))
        expected.append(f"{tag}: fg ARI {100 * np.mean(scores):.1f}")
    assert line == "fg ARI (%) computed directly on these 2 images: " + ", ".join(expected)

    inputs = _inputs(tiny_model, _batch(with_masks=False))
    _, line = run_figures.generalisation_runs(inputs, (K,))
    assert line == "no true masks: ARI not computed"


def test_full_evaluation_line(tiny_model, monkeypatch):
    calls = []

    def fake_evaluate(model, loaders, device, k, num_iters):
        calls.append((k, num_iters))
        return {"toy": {"fg_ari": 0.25 * k / K, "num_images": 30}}

    monkeypatch.setattr("lib.engine.inference.do_evaluate", fake_evaluate)
    line = run_figures.full_evaluation_line(tiny_model, [], CPU, "toy", (K, 6), 2)
    assert calls == [(K, 2), (6, 2)]
    assert line == f"do_evaluate on all 30 images of toy: K={K}: fg ARI 25.0, K=6: fg ARI 50.0"


@pytest.mark.slow
def test_model_figures_panel_counts(tiny_model):
    inputs = _inputs(tiny_model, _batch())
    common = {"cell_px": 16, "dpi": 50}
    fig = run_figures.decomposition(inputs, steps=False, background="white", **common)
    assert len(fig.axes) == 2 * (4 + K)  # input, recon, argmax, truth, K slots per image
    fig = run_figures.decomposition(inputs, steps=True, background="white", **common)
    assert len(fig.axes) == (2 + T + 1) * (4 + K)  # and a row per step of the first image
    fig = run_figures.refinement(inputs, **common)
    assert len(fig.axes) == 2 + (T + 1) * (2 + K)  # input, truth; per step recon, argmax, masks
    recon = run_model(tiny_model, inputs.batch.images, CPU, None, None)["recon"][0].numpy()
    mse = ((recon - inputs.batch.images[0].numpy()[None]) ** 2).mean(axis=(1, 2, 3))
    assert f"image #5: MSE {mse[0]:.4f} -> {mse[-1]:.4f}, fg ARI" in _texts(fig)
    fig = run_figures.traversal(
        inputs, slot=0, num_dims=2, value_range=1.0, steps_per_dim=3, unit="prior",
        show_component=True, background="black", **common,
    )  # fmt: skip
    assert len(fig.axes) == 4 + 2 * 2 * 3  # reference row, then recon and component rows
    assert "rows = the 2 dimensions of largest KL of slot 0" in _texts(fig)
    fig = run_figures.generalisation(
        _inputs(tiny_model, _batch(), num_slots=5), full_eval_loaders=None, background="white",
        **common,
    )  # fmt: skip
    assert len(fig.axes) == 2 * ((4 + K) + (4 + 5))
    assert f"K={K} (as trained): fg ARI" in _texts(fig) and "K=5: fg ARI" in _texts(fig)


def test_dataset_figure_title():
    fig = run_figures.dataset(_batch(3), config_file="", pairs_per_row=2, cell_px=16, dpi=50)
    assert "dataset toy | config (defaults) | images 5..7 at 8x8" in _texts(fig)
    assert len(fig.axes) == 2 * 3
    fig = run_figures.dataset(_batch(1, False), config_file="c.yaml", pairs_per_row=2, cell_px=16,
                              dpi=50)  # fmt: skip
    assert "images 5..5 at 8x8 (no true masks)" in _texts(fig)


def test_curves(tmp_path):
    with pytest.raises(RunError, match="no run folder"):
        run_figures.curves(str(tmp_path / "x"), config_file="", train_datasets=["a"], dpi=100)
    with pytest.raises(RunError, match="no TensorBoard scalars"):
        run_figures.curves(str(tmp_path), config_file="", train_datasets=["a"], dpi=100)
    writer = SummaryWriter(str(tmp_path))
    for step in (1, 2, 9):
        writer.add_scalar("loss/total", 10.0 - step, step)
    writer.close()
    fig = run_figures.curves(str(tmp_path), config_file="c.yaml", train_datasets=["a", "b"], dpi=30)
    assert figure_pixel_size(fig) == (400, 288)  # never narrower than 400 px
    assert (
        f"curves | config c.yaml | run {tmp_path} (last logged iteration 9) | training data a, b"
        in _texts(fig)
    )
    fig = run_figures.curves(str(tmp_path), config_file="", train_datasets=["a"], dpi=60)
    assert figure_pixel_size(fig) == (600, 432)
