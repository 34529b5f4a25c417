"""Drawing helpers of lib/utils/visualize.py: palette, panel grids, saving, traversal tensors,
TensorBoard scalars."""

import os

import pytest
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from lib.model.iodine import IODINE
from lib.utils import visualize as vis


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine's few cores are shared; oversubscribed threads slow tiny models a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_model(num_slots: int = 3, latent_dim: int = 6) -> IODINE:
    torch.manual_seed(0)
    model = IODINE(
        num_slots=num_slots,
        num_iters=2,
        latent_dim=latent_dim,
        refine_conv_channels=(8, 8),
        refine_mlp_sizes=(16,),
        refine_lstm_size=16,
        decoder_conv_channels=(8, 8),
    )
    return model.eval()


def _png_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_colorize_labels_uses_the_fixed_palette():
    labels = torch.tensor([[[0, 1], [2, len(vis.PALETTE) + 1]]])  # (1, 2, 2)
    rgb = vis.colorize_labels(labels)
    assert rgb.shape == (1, 3, 2, 2) and rgb.dtype == torch.float32
    for (y, x), index in {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 1}.items():
        expected = torch.tensor(vis.PALETTE[index], dtype=torch.float32) / 255
        assert torch.equal(rgb[0, :, y, x], expected)
    with pytest.raises(TypeError):
        vis.colorize_labels(labels.float())


def test_auto_cell_px():
    assert vis.auto_cell_px(16) == 96 and vis.auto_cell_px(35) == 105
    assert vis.auto_cell_px(64) == 128 and vis.auto_cell_px(128) == 128
    assert vis.auto_cell_px(240) == 160


def test_masked_components_on_white_and_black():
    masks = torch.tensor([1.0, 0.0, 0.25]).view(3, 1, 1).expand(3, 2, 2)  # (K, H, W)
    comps = torch.full((3, 3, 2, 2), 0.5)
    white = vis.masked_components(masks, comps, "white")
    black = vis.masked_components(masks, comps, "black")
    assert white.shape == (3, 3, 2, 2)
    assert torch.allclose(white[:, 0, 0, 0], torch.tensor([0.5, 1.0, 0.875]))
    assert torch.allclose(black[:, 0, 0, 0], torch.tensor([0.5, 0.0, 0.125]))
    tile = vis.slot_tile(masks[2], white[2])
    assert tile.shape == (3, 2 * 2 + 3, 2 + 2)


def test_panel_grid_png_has_the_promised_size(tmp_path):
    image = torch.rand(3, 8, 8)
    one_row = [[vis.Panel(image, "a"), vis.Panel(image, "b\nsecond line")]]
    wider = [[vis.Panel(image, "a"), None, vis.Panel(image[0], "grey")]]
    taller = [*one_row, [vis.Panel(vis.slot_tile(image[0], image), "tall")]]
    sizes = {}
    for name, rows in (("one", one_row), ("wider", wider), ("taller", taller)):
        labels = [f"row {i}" for i in range(len(rows))]
        fig = vis.render_panels(rows, "a title", labels, cell_px=40, dpi=80)
        path = str(tmp_path / f"{name}.png")
        written = vis.save_figure(fig, path)
        promised = vis.panel_grid_size(rows, "a title", labels, cell_px=40, dpi=80)
        assert written == promised == _png_size(path), name
        sizes[name] = promised
    step = 40 + vis.GAP_PX
    assert sizes["one"][0] == vis.ROW_LABEL_PX + 2 * step + vis.GAP_PX
    assert sizes["wider"][0] == sizes["one"][0] + step
    # A second row, twice as tall as wide (mask above component), adds at least 2 cells.
    assert sizes["taller"][1] >= sizes["one"][1] + 2 * 40
    # Atomic save: no temporary file left behind; saving again replaces the file.
    vis.save_figure(vis.render_panels(one_row, "t", cell_px=40, dpi=80), str(tmp_path / "one.png"))
    assert sorted(os.listdir(tmp_path)) == ["one.png", "taller.png", "wider.png"]


def test_traverse_slot_changes_only_the_chosen_slot():
    model = _tiny_model(num_slots=3, latent_dim=6)
    torch.manual_seed(1)
    loc = torch.randn(3, 6)
    slot, dims = 1, [4, 0]
    offsets = vis.traversal_offsets(2.0, 5)
    unit = torch.linspace(0.5, 1.0, 6)
    out = vis.traverse_slot(model, loc, slot, dims, offsets, 12, 10, unit=unit)
    r, s = len(dims), 5
    assert out["mask_logits"].shape == (r, s, 3, 12, 10)
    assert out["components"].shape == (r, s, 3, 3, 12, 10)
    assert out["masks"].shape == (r, s, 3, 12, 10)
    assert out["recon"].shape == (r, s, 3, 12, 10)

    # z: only (slot, dim) of each row changes, by offset * unit.
    for i, dim in enumerate(dims):
        expected = loc.expand(s, 3, 6).clone()
        expected[:, slot, dim] = loc[slot, dim] + offsets * unit[dim]
        assert torch.equal(out["z"][i], expected)

    base = model.decode(loc[None], 12, 10)
    others = [k for k in range(3) if k != slot]
    for i in range(r):
        for j in range(s):
            # The other slots' decoded means and mask logits: bit-identical to z = loc.
            for k in others:
                assert torch.equal(out["mask_logits"][i, j, k], base["mask_logits"][0, k])
                assert torch.equal(out["components"][i, j, k], base["components"][0, k])
            # Everything agrees with decoding the traversed z directly.
            direct = model.decode(out["z"][i, j][None], 12, 10)
            for key in ("mask_logits", "components", "masks", "recon"):
                assert torch.allclose(out[key][i, j], direct[key][0], atol=1e-5), key
    # The chosen slot's outputs change along each row (offsets differ), and so does the recon.
    chosen = out["mask_logits"][:, :, slot]
    assert not torch.allclose(chosen[:, 0], chosen[:, -1])
    assert not torch.allclose(out["components"][:, 0, slot], out["components"][:, -1, slot])
    assert not torch.allclose(out["recon"][:, 0], out["recon"][:, -1])
    # The other slots' masks change only through the softmax.
    assert not torch.allclose(out["masks"][:, 0, others[0]], out["masks"][:, -1, others[0]])

    with pytest.raises(ValueError, match="slot"):
        vis.traverse_slot(model, loc, 3, dims, offsets, 12, 10)
    with pytest.raises(ValueError, match="dimensions"):
        vis.traverse_slot(model, loc, 0, [6], offsets, 12, 10)


def test_traversal_figure_size(tmp_path):
    model = _tiny_model()
    loc = torch.randn(3, 6)
    offsets = vis.traversal_offsets(1.0, 3)
    out = vis.traverse_slot(model, loc, 0, [1, 2], offsets, 8, 8)
    kl = model.latent_kl(loc, torch.full_like(loc, 0.5))[0]
    fig = vis.traversal_figure(
        torch.rand(3, 8, 8), out, 0, [1, 2], kl, offsets, "absolute units", "t",
        show_component=True, cell_px=40, dpi=80,
    )  # fmt: skip
    path = str(tmp_path / "traversal.png")
    width, height = vis.save_figure(fig, path)
    assert (width, height) == _png_size(path)
    # 4 reference panels > 3 offsets: 4 columns.
    assert width == vis.ROW_LABEL_PX + 4 * (40 + vis.GAP_PX) + vis.GAP_PX


def test_choose_slot_and_rank_dims():
    masks = torch.zeros(4, 4, 4)
    masks[0] = 1.0  # slot 0 covers everything but the object pixels below
    masks[0, :2, :3] = 0.0
    masks[2, :2, :2] = 1.0  # object of 4 pixels
    masks[3, :2, 2] = 1.0  # object of 2 pixels
    assert vis.choose_traversal_slot(masks) == 2
    true = torch.zeros(4, 4, dtype=torch.long)
    true[:2, :3] = 1
    assert vis.choose_traversal_slot(masks, true) == 2
    # Without true background, the largest slot is taken as the background.
    assert vis.choose_traversal_slot(masks, torch.ones(4, 4, dtype=torch.long)) == 2
    assert vis.choose_traversal_slot(masks[:1]) == 0

    kl = torch.tensor([0.1, 3.0, 0.5, 3.0, 2.0])
    assert vis.rank_latent_dims(kl, 3) == [1, 3, 4]
    assert vis.rank_latent_dims(kl, 10) == [1, 3, 4, 2, 0]
    assert torch.equal(vis.traversal_offsets(2.0, 5), torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    assert torch.equal(vis.traversal_offsets(2.0, 1), torch.zeros(1))


def test_step_metrics_perfect_segmentation():
    true = torch.zeros(6, 6, dtype=torch.long)
    true[1:3, 1:3] = 1
    true[4:, 4:] = 2
    perfect = torch.nn.functional.one_hot(true, 3).permute(2, 0, 1).float()  # (K, H, W)
    uniform = torch.full((3, 6, 6), 1 / 3)
    masks = torch.stack([uniform, perfect])  # (T+1, K, H, W)
    image = torch.rand(3, 6, 6)
    recon = torch.stack([torch.zeros(3, 6, 6), image])
    metrics = vis.step_metrics(image, masks, recon, true)
    assert metrics["mse"][1] == 0.0 and metrics["mse"][0] > 0
    assert metrics["ari"][1] == pytest.approx(1.0) and metrics["fg_ari"][1] == pytest.approx(1.0)
    no_masks = vis.step_metrics(image, masks, recon, None)
    assert all(v != v for v in no_masks["fg_ari"])  # NaN
    assert vis.fmt_score(float("nan")) == "n/a" and vis.fmt_score(0.5) == "50.0"


def test_read_scalars_and_curves(tmp_path):
    logdir = str(tmp_path)
    writer = SummaryWriter(logdir)
    for step in range(1, 5):
        writer.add_scalar("loss/total", 10.0 - step, step)
        writer.add_scalar("loss/nll_t0", 20.0 - step, step)
        writer.add_scalar("loss/nll_t1", 15.0 - step, step)
    writer.add_scalar("eval/fg_ari", 0.25, 4)
    writer.close()
    # A resumed run writes a second event file; step 4 logged again keeps the newer value.
    writer = SummaryWriter(logdir, filename_suffix=".resumed")
    writer.add_scalar("loss/total", 1.5, 4)
    writer.add_scalar("loss/total", 0.5, 6)
    writer.close()

    scalars = vis.read_scalars(logdir)
    assert scalars["loss/total"] == ([1, 2, 3, 4, 6], [9.0, 8.0, 7.0, 1.5, 0.5])
    assert scalars["eval/fg_ari"] == ([4], [0.25])
    assert "loss/kl_t0" not in scalars

    # Missing tags (KL, eval/ari) are reported on their panel, not an error.
    fig = vis.curves_figure(scalars, "curves", dpi=50, size_px=(400, 300))
    path = str(tmp_path / "curves.png")
    assert vis.save_figure(fig, path) == (400, 300) == _png_size(path)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("loss/kl_t<t>" in t for t in texts)
    os.makedirs(tmp_path / "empty")
    assert vis.read_scalars(str(tmp_path / "empty")) == {}
    with pytest.raises(FileNotFoundError):
        vis.read_scalars(str(tmp_path / "missing"))
