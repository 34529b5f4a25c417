"""lib/analysis/layout.py: panel grids have the pixel size promised, written atomically."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lib.analysis.layout import (
    GAP_PX,
    ROW_LABEL_PX,
    Panel,
    auto_cell_px,
    figure_pixel_size,
    render_panels,
    save_figure,
)
from lib.utils.palette import slot_tile


def _png(path):
    with Image.open(path) as image:
        return image.size, np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    ("size", "cell"), [(16, 96), (35, 105), (64, 128), (128, 128), (240, 160), (100, 100)]
)
def test_auto_cell_px(size, cell):
    assert auto_cell_px(size) == cell
    if size < 96:  # small images: an integer multiple, so every pixel is repeated equally
        assert cell % size == 0


def test_panel_grid_png_has_the_promised_size(tmp_path):
    image = torch.rand(3, 8, 8)
    one_row = [[Panel(image, "a"), Panel(image, "b\nsecond line")]]
    wider = [[Panel(image, "a"), None, Panel(image[0], "grey")]]
    taller = [*one_row, [Panel(slot_tile(image[0], image), "tall")]]
    sizes = {}
    for name, rows in (("one", one_row), ("wider", wider), ("taller", taller)):
        labels = [f"row {i}" for i in range(len(rows))]
        fig = render_panels(rows, "a title", labels, cell_px=40, dpi=80)
        path = str(tmp_path / f"{name}.png")
        sizes[name] = save_figure(fig, path)
        assert sizes[name] == figure_pixel_size(fig) == _png(path)[0], name
    # Width from the layout rules: row-label column, then (cell + gap) per column, then a gap.
    step = 40 + GAP_PX
    assert sizes["one"][0] == ROW_LABEL_PX + 2 * step + GAP_PX
    assert sizes["wider"][0] == sizes["one"][0] + step
    # A second row, twice as tall as wide (mask above component), adds at least 2 cells.
    assert sizes["taller"][1] >= sizes["one"][1] + 2 * 40
    # Atomic save into a new folder: no temporary file left behind; saving again replaces.
    nested = tmp_path / "new" / "one.png"
    save_figure(render_panels(one_row, "t", cell_px=40, dpi=80), str(nested))
    save_figure(render_panels(one_row, "t", cell_px=40, dpi=80), str(nested))
    assert os.listdir(tmp_path / "new") == ["one.png"]


def test_panel_pixels_are_the_image_upscaled_by_nearest(tmp_path):
    # A 4x4 picture in a 40-pixel cell: the centre of each 10x10 block carries its input
    # pixel's value exactly (nearest interpolation, no smoothing).
    gen = np.random.default_rng(0)
    image = torch.from_numpy(gen.integers(0, 2, (4, 4)).astype(np.float32))
    fig = render_panels([[Panel(image, "")]], "", None, cell_px=40, dpi=80)
    path = str(tmp_path / "p.png")
    save_figure(fig, path)
    (_, height), pixels = _png(path)
    # The only row ends one gap above the bottom margin (one more gap).
    top, left = height - 2 * GAP_PX - 40, GAP_PX
    for by in range(4):
        for bx in range(4):
            y, x = top + 10 * by + 5, left + 10 * bx + 5
            assert pixels[y, x].tolist() == [255 * int(image[by, bx])] * 3, (by, bx)
    # The gap left of the cell is white.
    assert (pixels[top : top + 40, : GAP_PX - 1] == 255).all()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least one panel"):
        render_panels([], "t")
    with pytest.raises(ValueError, match="2 row labels for 1 rows"):
        render_panels([[Panel(torch.rand(3, 4, 4), "a")]], "t", ["x", "y"])
    with pytest.raises(ValueError, match=r"\(3, H, W\) or \(H, W\), got \(4, 4, 4\)"):
        render_panels([[Panel(torch.rand(4, 4, 4), "a")]], "t")
