"""lib/analysis/figures.py: panel counts, sizes and the numbers printed on the panels,
checked against the layout rules, numpy and scikit-learn."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import adjusted_rand_score

from lib.analysis.figures import (
    curves_figure,
    dataset_figure,
    decomposition_figure,
    generalisation_figure,
    refinement_figure,
    traversal_figure,
)
from lib.analysis.layout import GAP_PX, ROW_LABEL_PX, figure_pixel_size
from lib.analysis.traversal import traversal_offsets, traverse_slot

from .conftest import D, K

CELL, DPI, S = 96, 50, 8  # 96 px at 50 dpi: labels of up to 33 characters do not wrap


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.texts]


def _images(fig: Figure) -> int:
    return sum(len(ax.images) for ax in fig.axes)


def _width(columns: int, row_labels: bool = True) -> int:
    return (ROW_LABEL_PX if row_labels else 0) + columns * (CELL + GAP_PX) + GAP_PX


def _outputs(n: int, steps: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, S, S, generator=gen)
    masks = torch.softmax(3 * torch.randn(n, steps, k, S, S, generator=gen), dim=2)
    recon = torch.rand(n, steps, 3, S, S, generator=gen)
    components = torch.rand(n, steps, k, 3, S, S, generator=gen)
    true = torch.randint(0, 4, (n, S, S), generator=gen)
    return images, masks, recon, components, true


def _ari_text(true: np.ndarray, pred: np.ndarray) -> str:
    ari = adjusted_rand_score(true.ravel(), pred.ravel())
    fg = true > 0
    fg_ari = adjusted_rand_score(true[fg], pred[fg])
    return f"ARI {100 * ari:.1f}\nfg ARI {100 * fg_ari:.1f}"


def test_decomposition_figure_panels_and_scores():
    n, steps = 2, 3
    images, masks, recon, components, true = _outputs(n, steps, K)
    fig = decomposition_figure(
        images, masks, recon, components, true, "title", ["#0", "#1"], steps_for=1,
        cell_px=CELL, dpi=DPI,
    )  # fmt: skip
    # input, recon, argmax, truth, K slots; N final rows + one per step of image 1.
    assert figure_pixel_size(fig)[0] == _width(4 + K)
    assert _images(fig) == (n + steps) * (4 + K)
    texts = "\n".join(_texts(fig))
    for i in range(n):
        pred = masks[i, -1].argmax(dim=0).numpy()
        assert _ari_text(true[i].numpy(), pred) in texts
        mse = float(((recon[i, -1] - images[i]) ** 2).mean())
        assert f"recon\nMSE {mse:.4f}" in texts
        assert f"{len(np.unique(true[i][true[i] > 0]))} objects" in texts
    for t in range(steps):
        pred = masks[1, t].argmax(dim=0).numpy()
        assert f"t={t} argmax slot\n" + _ari_text(true[1].numpy(), pred) in texts
    area = 100 * masks[0, -1].mean(dim=(1, 2))
    assert f"slot {K - 1} ({float(area[K - 1]):.0f}%)" in texts


def test_decomposition_figure_without_true_masks():
    images, masks, recon, components, _ = _outputs(1, 2, K)
    fig = decomposition_figure(
        images, masks, recon, components, None, "t", ["#0"], cell_px=CELL, dpi=DPI
    )
    assert figure_pixel_size(fig)[0] == _width(3 + K)
    assert not any("ARI" in t for t in _texts(fig))


def test_refinement_figure_shows_every_step():
    steps = 4
    images, masks, recon, _, true = _outputs(1, steps, K)
    fig = refinement_figure(images[0], masks[0], recon[0], true[0], "t", cell_px=CELL, dpi=DPI)
    assert figure_pixel_size(fig)[0] == _width(steps + 1)
    # Column 0: input and truth; each step: recon, argmax and K masks.
    assert _images(fig) == 2 + steps * (2 + K)
    texts = "\n".join(_texts(fig))
    for t in range(steps):
        mse = float(((recon[0, t] - images[0]) ** 2).mean())
        assert f"t={t} recon\nMSE {mse:.4f}" in texts
        pred = masks[0, t].argmax(dim=0).numpy()
        assert f"t={t} argmax\n" + _ari_text(true[0].numpy(), pred) in texts


def test_traversal_figure(tiny_model):
    loc = torch.randn(K, D)
    offsets = traversal_offsets(1.0, 3)
    dims = [1, 2]
    out = traverse_slot(tiny_model, loc, 0, dims, offsets, S, S)
    kl = torch.arange(D, dtype=torch.float32) / 4
    for show, rows in ((True, 1 + 2 * len(dims)), (False, 1 + len(dims))):
        fig = traversal_figure(
            torch.rand(3, S, S), out, 0, dims, kl, offsets, "absolute units", "t",
            show_component=show, cell_px=CELL, dpi=DPI,
        )  # fmt: skip
        # 4 reference panels > 3 offsets: 4 columns.
        assert figure_pixel_size(fig)[0] == _width(4)
        assert _images(fig) == 4 + (rows - 1) * 3
        texts = _texts(fig)
        assert "dim 2\nKL 0.50" in texts and "z1 +1.00\nrecon" in texts


def test_generalisation_figure_pads_the_smaller_run():
    n = 2
    images, masks, recon, components, true = _outputs(n, 1, 5)
    runs = [
        ("K=3", {"masks": masks[:, 0, :3], "recon": recon[:, 0], "components": components[:, 0, :3]}),
        ("K=5", {"masks": masks[:, 0], "recon": recon[:, 0], "components": components[:, 0]}),
    ]  # fmt: skip
    fig = generalisation_figure(images, runs, true, "t", ["#0", "#1"], cell_px=CELL, dpi=DPI)
    assert figure_pixel_size(fig)[0] == _width(4 + 5)
    assert _images(fig) == n * ((4 + 3) + (4 + 5))


@pytest.mark.parametrize(("with_masks", "columns"), [(True, 4), (False, 2)])
def test_dataset_figure(with_masks, columns):
    images, _, _, _, true = _outputs(5, 1, 1)
    fig = dataset_figure(
        images, true if with_masks else None, "t", [f"#{i}" for i in range(5)],
        pairs_per_row=2, cell_px=CELL, dpi=DPI,
    )  # fmt: skip
    assert figure_pixel_size(fig)[0] == _width(columns, row_labels=False)
    assert _images(fig) == 5 * (2 if with_masks else 1)


def test_curves_figure_plots_what_is_logged():
    scalars = {
        "loss/total": ([1, 2, 3], [3.0, 2.0, 1.0]),
        "loss/nll_t0": ([1, 2], [5.0, 4.0]),
        "loss/nll_t1": ([1, 2], [4.0, 3.0]),
        "eval/fg_ari": ([2], [0.5]),
    }
    fig = curves_figure(scalars, "curves", dpi=DPI, size_px=(400, 300))
    assert figure_pixel_size(fig) == (400, 300)
    lines = {ax.get_title(): [line.get_ydata().tolist() for line in ax.lines] for ax in fig.axes}
    assert lines["total loss"] == [[3.0, 2.0, 1.0]]
    assert lines["evaluation ARI"] == [[0.5]]
    assert lines["NLL per refinement step"] == [[5.0, 4.0], [4.0, 3.0]]
    assert lines["KL per refinement step"] == []
    kl_axis = next(ax for ax in fig.axes if ax.get_title() == "KL per refinement step")
    assert any("loss/kl_t<t> not logged" in t.get_text() for t in kl_axis.texts)
