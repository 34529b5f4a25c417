"""lib/analysis/figures.py: panel counts, sizes, the numbers and titles printed, checked
against the layout rules, numpy, scikit-learn and hand-written strings."""

import os

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import adjusted_rand_score
from torch.utils.tensorboard import SummaryWriter

from lib.analysis import figures
from lib.analysis.layout import GAP_PX, ROW_LABEL_PX, figure_pixel_size
from lib.analysis.loading import ImageBatch
from lib.analysis.traversal import TraversalInputs, traversal_offsets, traverse_slot
from lib.errors import RunError

from .conftest import D, K

CELL, DPI, S = 96, 50, 8  # 96 px at 50 dpi: labels of up to 33 characters do not wrap
CPU = torch.device("cpu")


def _texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.texts)


def _images(fig: Figure) -> int:
    return sum(len(ax.images) for ax in fig.axes)


def _width(columns: int, row_labels: bool = True) -> int:
    return (ROW_LABEL_PX if row_labels else 0) + columns * (CELL + GAP_PX) + GAP_PX


def _case(n: int, steps: int, k: int, with_masks: bool = True, seed: int = 0):
    """An ImageBatch of n random images (indices 5..) and random outputs of `steps` steps."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, S, S, generator=gen)
    out = {
        "masks": torch.softmax(3 * torch.randn(n, steps, k, S, S, generator=gen), dim=2),
        "recon": torch.rand(n, steps, 3, S, S, generator=gen),
        "components": torch.rand(n, steps, k, 3, S, S, generator=gen),
    }
    true = torch.randint(0, 4, (n, S, S), generator=gen) if with_masks else None
    return ImageBatch("toy", images, true, list(range(5, 5 + n))), out


def _sklearn_aris(true: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    true, pred = true.numpy().ravel(), masks.argmax(dim=0).numpy().ravel()
    fg = true > 0
    fg_ari = adjusted_rand_score(true[fg], pred[fg]) if fg.any() else float("nan")
    return adjusted_rand_score(true, pred), fg_ari


def _percent(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{100 * value:.1f}"


def _ari_text(true: torch.Tensor, masks: torch.Tensor) -> str:
    ari, fg_ari = _sklearn_aris(true, masks)
    return f"ARI {_percent(ari)}\nfg ARI {_percent(fg_ari)}"


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [(0.5, 1, "50.0"), (0.97349, 1, "97.3"), (-0.0123, 2, "-1.23"), (1.0, 0, "100")],
)
def test_format_percent(value, decimals, text):
    assert figures.format_percent(value, decimals) == text


def test_format_percent_of_undefined_values():
    assert figures.format_percent(None) == "n/a" and figures.format_percent(float("nan")) == "n/a"


def test_decomposition_figure_panels_and_scores():
    n, steps = 3, 3
    batch, out = _case(n, steps, K)
    batch.masks[2] = 0  # no foreground: fg ARI undefined, ARI defined
    fig = figures.decomposition_figure(batch, out, "H", steps=True, cell_px=CELL, dpi=DPI)
    # input, recon, argmax, truth, K slots; N final rows + one per step of the first image.
    assert figure_pixel_size(fig)[0] == _width(4 + K)
    assert _images(fig) == (n + steps) * (4 + K)
    texts = _texts(fig)
    assert f"H\nK={K} slots, T={steps - 1} steps; ARI in %\n" in texts
    for i in range(n):
        masks = out["masks"][i, -1]
        assert _ari_text(batch.masks[i], masks) in texts
        mse = float(((out["recon"][i, -1] - batch.images[i]) ** 2).mean())
        assert f"recon\nMSE {mse:.4f}" in texts
        assert f"{len(np.unique(batch.masks[i][batch.masks[i] > 0]))} objects" in texts
        assert f"#{5 + i}\nfinal step" in texts
    assert "fg ARI n/a" in texts
    for t in range(steps):
        masks = out["masks"][0, t]
        assert f"t={t} argmax slot\n" + _ari_text(batch.masks[0], masks) in texts
        assert f"#5\nstep t={t}" in texts
    area = 100 * out["masks"][0, -1].mean(dim=(1, 2))
    assert f"slot {K - 1} ({float(area[K - 1]):.0f}%)" in texts


def test_decomposition_figure_without_true_masks():
    batch, out = _case(1, 2, K, with_masks=False)
    fig = figures.decomposition_figure(batch, out, "H", cell_px=CELL, dpi=DPI)
    assert figure_pixel_size(fig)[0] == _width(3 + K)
    texts = _texts(fig)
    assert "; ARI in % (no true masks: ARI not computed)" in texts
    assert "ARI " not in texts.replace("ARI in %", "").replace("ARI not computed", "")


@pytest.mark.parametrize("with_masks", [True, False])
def test_refinement_figure_shows_every_step(with_masks):
    steps = 4
    batch, out = _case(2, steps, K, with_masks=with_masks)
    fig = figures.refinement_figure(batch, out, "H", cell_px=CELL, dpi=DPI)
    assert figure_pixel_size(fig)[0] == _width(steps + 1)
    # Column 0: input and truth; each step: recon, argmax and K masks.
    assert _images(fig) == 1 + with_masks + steps * (2 + K)
    texts = _texts(fig)
    mse = [float(((out["recon"][0, t] - batch.images[0]) ** 2).mean()) for t in range(steps)]
    title = f"H\nimage #5: MSE {mse[0]:.4f} -> {mse[-1]:.4f}"
    for t in range(steps):
        assert f"t={t} recon\nMSE {mse[t]:.4f}" in texts
        assert f"t={t} mask {K - 1}\narea" in texts
        if with_masks:
            assert f"t={t} argmax\n" + _ari_text(batch.masks[0], out["masks"][0, t]) in texts
    if with_masks:
        first, last = (_sklearn_aris(batch.masks[0], out["masks"][0, t])[1] for t in (0, -1))
        assert f"{title}, fg ARI {_percent(first)} -> {_percent(last)} (%)\n" in texts
    else:
        assert f"{title}\n" in texts and "ARI" not in texts


def test_traversal_figure(tiny_model):
    loc = torch.randn(K, D)
    offsets = traversal_offsets(1.0, 3)
    dims = [1, 2]
    trav = traverse_slot(tiny_model, loc, 0, dims, offsets, S, S)
    kl = torch.arange(D, dtype=torch.float32) / 4
    drawn = TraversalInputs(trav, 0, dims, kl, offsets, "absolute units")
    batch, _ = _case(1, 1, K)
    for show, rows in ((True, 1 + 2 * len(dims)), (False, 1 + len(dims))):
        fig = figures.traversal_figure(
            batch, drawn, "H", show_component=show, cell_px=CELL, dpi=DPI
        )
        # 4 reference panels > 3 offsets: 4 columns.
        assert figure_pixel_size(fig)[0] == _width(4)
        assert _images(fig) == 4 + (rows - 1) * 3
        texts = _texts(fig)
        assert "dim 2\nKL 0.50" in texts and "z1 +1.00\nrecon" in texts
        assert ("z2 -1.00\nslot 0 m*mu" in texts) == show
        assert (
            "H\nimage #5, final step; rows = the 2 dimensions of largest KL of slot 0\n"
            "slot 0, offsets in absolute units around the posterior mean" in texts
        )


def test_generalisation_figure_pads_the_smaller_run_and_scores_the_final_step():
    n = 2
    batch, out5 = _case(n, 2, 5)
    out3 = {key: v[:, :, :3] if key != "recon" else v for key, v in out5.items()}
    runs = [(3, out3), (5, out5)]
    fig = figures.generalisation_figure(
        batch, runs, 3, "H", eval_line="full", cell_px=CELL, dpi=DPI
    )
    assert figure_pixel_size(fig)[0] == _width(4 + 5)
    assert _images(fig) == n * ((4 + 3) + (4 + 5))
    scores = []
    for tag, out in (("K=3 (as trained)", out3), ("K=5", out5)):
        fg = [_sklearn_aris(batch.masks[i], out["masks"][i, -1])[1] for i in range(n)]
        scores.append(f"{tag}: fg ARI {_percent(np.mean(fg))}")
        assert f"#6\n{tag}" in _texts(fig)
    line = "fg ARI (%) computed directly on these 2 images: " + ", ".join(scores)
    assert f"H\n{line}\nfull" in _texts(fig)

    batch, _ = _case(n, 2, 5, with_masks=False)
    fig = figures.generalisation_figure(batch, runs, 3, "H", cell_px=CELL, dpi=DPI)
    assert figure_pixel_size(fig)[0] == _width(3 + 5)
    assert "H\nno true masks: ARI not computed" in _texts(fig)


def test_full_evaluation_line(tiny_model, monkeypatch):
    calls = []

    def fake_evaluate(model, loaders, device, k, num_iters):
        calls.append((k, num_iters))
        return {"toy": {"fg_ari": 0.25 * k / K, "num_images": 30}}

    monkeypatch.setattr("lib.engine.inference.do_evaluate", fake_evaluate)
    line = figures.full_evaluation_line(tiny_model, [], CPU, "toy", (K, 6), 2)
    assert calls == [(K, 2), (6, 2)]
    assert line == f"do_evaluate on all 30 images of toy: K={K}: fg ARI 25.0, K=6: fg ARI 50.0"


@pytest.mark.parametrize(("with_masks", "columns"), [(True, 4), (False, 2)])
def test_dataset_figure(with_masks, columns):
    batch, _ = _case(5, 1, 1, with_masks=with_masks)
    fig = figures.dataset_figure(batch, config_file="", pairs_per_row=2, cell_px=CELL, dpi=DPI)
    assert figure_pixel_size(fig)[0] == _width(columns, row_labels=False)
    assert _images(fig) == 5 * (2 if with_masks else 1)
    title = "dataset toy | config (defaults) | images 5..9 at 8x8"
    title += "\n" if with_masks else " (no true masks)\n"
    assert title.replace("\n", " ") in _texts(fig).replace("\n", " ")  # the title may wrap


def test_read_scalars_of_a_resumed_run(tmp_path):
    logdir = str(tmp_path)
    written = {"loss/total": {}, "loss/nll_t0": {}, "eval/fg_ari": {}}
    writer = SummaryWriter(logdir)
    for step in range(1, 5):
        for tag in ("loss/total", "loss/nll_t0"):
            value = 0.25 * step + len(tag)
            writer.add_scalar(tag, value, step)
            written[tag][step] = value
    writer.add_scalar("eval/fg_ari", 0.25, 4)
    written["eval/fg_ari"][4] = 0.25
    writer.close()
    # A resumed run writes a second event file; step 4 logged again keeps the newer value.
    writer = SummaryWriter(logdir, filename_suffix=".resumed")
    for step, value in ((4, 1.5), (6, 0.5)):
        writer.add_scalar("loss/total", value, step)
        written["loss/total"][step] = value
    writer.close()
    scalars = figures.read_scalars(logdir)
    assert set(scalars) == set(written)
    for tag, by_step in written.items():
        steps = sorted(by_step)
        assert scalars[tag] == (steps, [pytest.approx(by_step[s]) for s in steps]), tag
    os.makedirs(tmp_path / "empty")
    assert figures.read_scalars(str(tmp_path / "empty")) == {}


def _curves(logdir, dpi=DPI, **kwargs):
    return figures.curves_figure(str(logdir), config_file="c.yaml", train_datasets=["a", "b"],
                                 dpi=dpi, **kwargs)  # fmt: skip


def _lines(fig):
    return {
        ax.get_title(): [(line.get_label(), line.get_ydata().tolist()) for line in ax.lines]
        for ax in fig.axes
    }


def test_curves_figure_plots_what_is_logged(tmp_path):
    with pytest.raises(RunError, match="no run folder"):
        _curves(tmp_path / "x")
    with pytest.raises(RunError, match="no TensorBoard scalars"):
        _curves(tmp_path)
    writer = SummaryWriter(str(tmp_path))
    for step in (1, 2, 9):
        writer.add_scalar("loss/total", 10.0 - step, step)
    # Per-step tags sorted by their number; tags whose rest is not a number are left out.
    for t in (10, 2, 0, "", "x"):
        writer.add_scalar(f"loss/nll_t{t}", t + 1.0 if isinstance(t, int) else -1.0, 1)
    writer.add_scalar("nll_t1", 7.0, 1)
    for name, value in (("zzz", 0.1), ("toy", 0.5)):
        writer.add_scalar(f"eval/{name}/fg_ari", value, 2)
        writer.add_scalar(f"eval/{name}/ari", value / 2, 2)
    writer.close()
    fig = _curves(tmp_path, dpi=30)
    assert figure_pixel_size(fig) == (400, 288)  # ten inches, never narrower than 400 px
    assert figure_pixel_size(_curves(tmp_path, dpi=60)) == (600, 432)
    assert fig.get_suptitle() == (
        f"curves | config c.yaml | run {tmp_path} (last logged iteration 9) | training data a, b"
    )
    lines = _lines(fig)
    assert lines["total loss"] == [("loss/total", [9.0, 8.0, 1.0])]
    assert lines["evaluation ARI (toy)"] == [("fg ARI", [0.5]), ("ARI", [0.25])]
    assert lines["NLL per refinement step"] == [("t=0", [1.0]), ("t=2", [3.0]), ("t=10", [11.0])]
    assert lines["KL per refinement step"] == []
    kl_axis = next(ax for ax in fig.axes if ax.get_title() == "KL per refinement step")
    assert any("loss/kl_t<t> not logged" in t.get_text() for t in kl_axis.texts)
    # An older run logged eval/fg_ari without the dataset.
    writer = SummaryWriter(str(tmp_path / "old"))
    writer.add_scalar("eval/fg_ari", 0.5, 2)
    writer.close()
    assert _lines(_curves(tmp_path / "old"))["evaluation ARI"] == [("fg ARI", [0.5])]
