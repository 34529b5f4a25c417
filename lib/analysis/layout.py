"""The panel-grid engine: labelled pictures laid out in whole pixels, saved atomically as PNG.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through ``pyplot``,
so nothing here touches global matplotlib state or needs a display. A grid's PNG is exactly
``panel_grid_size(...)`` (= ``figure_pixel_size(fig)``) pixels.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lib.utils.io import atomic_write_bytes
from lib.utils.palette import gray_to_rgb

# Layout of panel grids, in pixels at the figure's dpi (fonts in points).
PANEL_FONT_PT = 7.0
TITLE_FONT_PT = 8.5
GAP_PX = 6
ROW_LABEL_PX = 96


@dataclass
class Panel:
    """One labelled picture of a panel grid.

    Attributes:
        image: (3, H, W) RGB or (H, W) grey float tensor in [0, 1] (clamped when drawn).
        label: text above the picture; may hold several lines.
    """

    image: Tensor
    label: str


@dataclass
class _GridLayout:
    """Pixel positions of a panel grid (y measured from the top)."""

    size: tuple[int, int]  # (width, height)
    left: int  # width of the row-label column
    title_lines: list[str]
    rows: list[tuple[int, int, int]]  # per row: (top, label height, image height)


def auto_cell_px(image_size: int, target: int = 96, largest: int = 160) -> int:
    """A panel width that shows images of ``image_size`` pixels sharply.

    Args:
        image_size: side of the (square) images in pixels.
        target: smallest wanted panel width.
        largest: largest panel width (bigger images are shown downsampled).

    Returns:
        An integer multiple of ``image_size`` near ``target`` for small images (so nearest
        upsampling repeats every pixel equally), the image size itself up to ``largest``, else
        ``largest``.
    """
    if image_size >= target:
        return min(image_size, largest)
    return image_size * max(1, round(target / image_size))


def _line_px(font_pt: float, dpi: float) -> int:
    return int(math.ceil(font_pt * dpi / 72.0 * 1.3))


def _wrap(text: str, width_px: int, font_pt: float, dpi: float) -> list[str]:
    # DejaVu Sans averages about 0.6 em per character.
    chars = max(int(width_px / (0.6 * font_pt * dpi / 72.0)), 10)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        wrapped = textwrap.wrap(paragraph, chars, break_on_hyphens=False, break_long_words=False)
        lines.extend(wrapped or [""])
    return lines


def _as_rgb_array(image: Tensor) -> np.ndarray:
    image = image.detach().float().cpu()
    if image.dim() == 2:
        image = gray_to_rgb(image)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"panel images are (3, H, W) or (H, W), got {tuple(image.shape)}")
    return image.clamp(0.0, 1.0).permute(1, 2, 0).numpy()


def _layout(
    rows: Sequence[Sequence[Panel | None]],
    title: str,
    row_labels: Sequence[str] | None,
    cell_px: int,
    dpi: int,
) -> _GridLayout:
    ncols = max((len(r) for r in rows), default=0)
    if ncols == 0:
        raise ValueError("a panel grid needs at least one panel")
    left = ROW_LABEL_PX if row_labels else 0
    width = left + ncols * (cell_px + GAP_PX) + GAP_PX
    title_lines = _wrap(title, width - 2 * GAP_PX, TITLE_FONT_PT, dpi)
    title_h = len(title_lines) * _line_px(TITLE_FONT_PT, dpi) + GAP_PX
    line = _line_px(PANEL_FONT_PT, dpi)
    row_specs = []
    height = title_h
    for row in rows:
        panels = [p for p in row if p is not None]
        labels = [_wrap(p.label, cell_px, PANEL_FONT_PT, dpi) for p in panels]
        label_h = max((len(lines) for lines in labels), default=0) * line
        aspect = max((p.image.shape[-2] / p.image.shape[-1] for p in panels), default=1.0)
        image_h = int(round(cell_px * aspect))
        row_specs.append((height, label_h, image_h))
        height += label_h + image_h + GAP_PX
    height += GAP_PX
    return _GridLayout((width, height), left, title_lines, row_specs)


def panel_grid_size(
    rows: Sequence[Sequence[Panel | None]],
    title: str,
    row_labels: Sequence[str] | None = None,
    cell_px: int = 96,
    dpi: int = 100,
) -> tuple[int, int]:
    """Pixel size of the PNG that ``render_panels`` draws for these arguments.

    Args:
        rows, title, row_labels, cell_px, dpi: as for ``render_panels``.

    Returns:
        ``(width, height)`` in pixels.
    """
    return _layout(rows, title, row_labels, cell_px, dpi).size


def render_panels(
    rows: Sequence[Sequence[Panel | None]],
    title: str,
    row_labels: Sequence[str] | None = None,
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Draw a grid of labelled pictures under a title.

    Each panel is a square cell ``cell_px`` wide (taller when a picture of that row is taller
    than wide) with its label above it; a row may be shorter than others or hold ``None``
    (left empty). Pictures are shown with nearest-neighbour interpolation, aspect kept.

    Args:
        rows: rows of panels.
        title: figure title (wrapped to the figure width).
        row_labels: one text per row, drawn left of the row, or None.
        cell_px: panel width in pixels.
        dpi: figure resolution (pixels per inch).

    Returns:
        A matplotlib Figure (Agg canvas) of exactly ``panel_grid_size(...)`` pixels.

    Raises:
        ValueError: no panel, a row-label count that differs from the row count, or a panel
            image that is not (3, H, W) or (H, W).
    """
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    spec = _layout(rows, title, row_labels, cell_px, dpi)
    width, height = spec.size
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    title_line = _line_px(TITLE_FONT_PT, dpi)
    for i, text in enumerate(spec.title_lines):
        y = height - GAP_PX / 2 - (i + 0.5) * title_line
        fig.text(0.5, y / height, text, ha="center", va="center", fontsize=TITLE_FONT_PT)
    for r, (row, (top, label_h, image_h)) in enumerate(zip(rows, spec.rows)):
        image_top = top + label_h
        if row_labels:
            _draw_row_label(fig, row_labels[r], height - image_top - image_h / 2, spec, dpi)
        for c, panel in enumerate(row):
            if panel is not None:
                x0 = spec.left + GAP_PX + c * (cell_px + GAP_PX)
                _draw_panel(fig, panel, (x0, image_top), (cell_px, image_h), spec.size, dpi)
    return fig


def _draw_row_label(fig: Figure, text: str, y: float, spec: _GridLayout, dpi: int) -> None:
    """A row's bold label in the left column, centred at ``y`` pixels from the bottom."""
    width, height = spec.size
    # Bold text is about 10% wider than the regular text _wrap assumes.
    for_label = "\n".join(_wrap(text, int((spec.left - 2 * GAP_PX) / 1.1), PANEL_FONT_PT, dpi))
    fig.text(
        GAP_PX / width,
        y / height,
        for_label,
        ha="left",
        va="center",
        fontsize=PANEL_FONT_PT,
        fontweight="bold",
    )


def _draw_panel(
    fig: Figure,
    panel: Panel,
    top_left: tuple[int, int],
    box: tuple[int, int],
    size: tuple[int, int],
    dpi: int,
) -> None:
    """One picture with its label above it.

    Args:
        fig: the figure.
        panel: the picture and label.
        top_left: ``(x, y)`` of the picture's top-left corner, in pixels from the top left.
        box: ``(width, height)`` of the picture in pixels.
        size: ``(width, height)`` of the figure in pixels.
        dpi: figure resolution (for the label's wrapping).
    """
    (x0, image_top), (cell_px, image_h), (width, height) = top_left, box, size
    ax = fig.add_axes(
        (x0 / width, (height - image_top - image_h) / height, cell_px / width, image_h / height)
    )
    ax.imshow(_as_rgb_array(panel.image), interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    label = "\n".join(_wrap(panel.label, cell_px, PANEL_FONT_PT, dpi))
    fig.text(
        (x0 + cell_px / 2) / width,
        (height - image_top + 1) / height,
        label,
        ha="center",
        va="bottom",
        fontsize=PANEL_FONT_PT,
        linespacing=1.1,
    )


def figure_pixel_size(fig: Figure) -> tuple[int, int]:
    """The size of the PNG that ``save_figure`` writes for a figure.

    Args:
        fig: the figure (saved at its own dpi, uncropped).

    Returns:
        ``(width, height)`` in pixels.
    """
    w, h = fig.get_size_inches() * fig.dpi
    return int(round(w)), int(round(h))


def save_figure(fig: Figure, path: str) -> tuple[int, int]:
    """Write a figure as PNG atomically (``lib.utils.io.atomic_write_bytes``).

    Args:
        fig: the figure; saved at its own dpi without cropping.
        path: destination ``.png``; missing folders are created.

    Returns:
        ``(width, height)`` of the written PNG in pixels.
    """
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))
    return figure_pixel_size(fig)
