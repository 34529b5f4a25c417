"""The panel grid: labelled pictures laid out in whole pixels, saved atomically as PNG.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through ``pyplot``,
so nothing here touches global matplotlib state or needs a display.
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
    """One picture of a grid: ``image`` (3, H, W) RGB or (H, W) grey in [0, 1] (clamped when
    drawn) with ``label`` (one or more lines) above it."""

    image: Tensor
    label: str


def auto_cell_px(image_size: int, target: int = 96, largest: int = 160) -> int:
    """A panel width that shows square images of ``image_size`` pixels sharply.

    Returns:
        A multiple of ``image_size`` near ``target`` for small images (nearest upsampling then
        repeats every pixel equally), else the image size, at most ``largest``.
    """
    if image_size >= target:
        return min(image_size, largest)
    return image_size * max(1, round(target / image_size))


def _line_px(font_pt: float, dpi: float) -> int:
    return math.ceil(font_pt * dpi / 72.0 * 1.3)


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


def render_panels(
    rows: Sequence[Sequence[Panel | None]],
    title: str,
    row_labels: Sequence[str] | None = None,
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Draw rows of labelled pictures under a title.

    Each panel is ``cell_px`` wide, its row as tall as its tallest picture (aspect kept), its
    label above it; a row may be shorter than others or hold None (an empty cell). Pictures are
    upscaled with nearest-neighbour interpolation.

    Args:
        rows: rows of panels.
        title: figure title, wrapped to the figure width.
        row_labels: one bold text per row, drawn left of it, or None.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure, ``ROW_LABEL_PX`` (with row labels) + columns * (cell_px + GAP_PX) + GAP_PX
        pixels wide.

    Raises:
        ValueError: no panel, a row-label count unlike the row count, or a picture that is not
            (3, H, W) or (H, W).
    """
    ncols = max((len(r) for r in rows), default=0)
    if ncols == 0:
        raise ValueError("a panel grid needs at least one panel")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    left = ROW_LABEL_PX if row_labels else 0
    width = left + ncols * (cell_px + GAP_PX) + GAP_PX
    title_lines = _wrap(title, width - 2 * GAP_PX, TITLE_FONT_PT, dpi)
    title_line, line = _line_px(TITLE_FONT_PT, dpi), _line_px(PANEL_FONT_PT, dpi)
    height, spans = len(title_lines) * title_line + GAP_PX, []  # spans: (image top, height)
    for row in rows:
        panels = [p for p in row if p is not None]
        label_lines = max(
            (len(_wrap(p.label, cell_px, PANEL_FONT_PT, dpi)) for p in panels), default=0
        )
        aspect = max((p.image.shape[-2] / p.image.shape[-1] for p in panels), default=1.0)
        spans.append((height + label_lines * line, round(cell_px * aspect)))
        height += label_lines * line + spans[-1][1] + GAP_PX
    height += GAP_PX

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    for i, text in enumerate(title_lines):
        y = height - GAP_PX / 2 - (i + 0.5) * title_line
        fig.text(0.5, y / height, text, ha="center", va="center", fontsize=TITLE_FONT_PT)
    for r, (row, (top, image_h)) in enumerate(zip(rows, spans)):
        if row_labels:
            # Bold text is about 10% wider than the regular text _wrap assumes.
            text = "\n".join(
                _wrap(row_labels[r], int((left - 2 * GAP_PX) / 1.1), PANEL_FONT_PT, dpi)
            )
            y = (height - top - image_h / 2) / height
            fig.text(GAP_PX / width, y, text, va="center", fontsize=PANEL_FONT_PT, weight="bold")
        for c, panel in enumerate(row):
            if panel is None:
                continue
            x0 = left + GAP_PX + c * (cell_px + GAP_PX)
            box = (x0 / width, (height - top - image_h) / height, cell_px / width, image_h / height)
            ax = fig.add_axes(box)
            ax.imshow(_as_rgb_array(panel.image), interpolation="nearest", vmin=0.0, vmax=1.0)
            ax.set_axis_off()
            label = "\n".join(_wrap(panel.label, cell_px, PANEL_FONT_PT, dpi))
            x, y = (x0 + cell_px / 2) / width, (height - top + 1) / height
            fig.text(x, y, label, ha="center", va="bottom", fontsize=PANEL_FONT_PT, linespacing=1.1)
    return fig


def figure_pixel_size(fig: Figure) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG that ``save_figure`` writes for ``fig``."""
    w, h = fig.get_size_inches() * fig.dpi
    return int(round(w)), int(round(h))


def save_figure(fig: Figure, path: str) -> tuple[int, int]:
    """Write ``fig`` as PNG at its own dpi, uncropped, atomically (missing folders are made).

    Returns:
        ``(width, height)`` of the written PNG in pixels.
    """
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))
    return figure_pixel_size(fig)
