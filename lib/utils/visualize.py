"""Figures of IODINE decompositions: palettes, labelled panel grids, atomic PNG saving.

Every function takes explicit tensors and text (no config). Figures are built on
``matplotlib.figure.Figure`` with an Agg canvas, never through ``pyplot``, so nothing here
touches global matplotlib state or needs a display. Panel grids are laid out in whole pixels:
a figure's PNG is exactly ``figure_pixel_size(fig)`` pixels, which the tests check.

Conventions: images are float tensors (3, H, W) in [0, 1] (clamped when drawn); masks
(K, H, W) are softmax masks in [0, 1]; label maps (H, W) are integers. The model outputs follow
``lib/model/iodine.py``: ``masks`` (B, T+1, K, H, W), ``recon`` (B, T+1, 3, H, W),
``components`` (B, T+1, K, 3, H, W).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid

from lib.evaluation.ari import adjusted_rand_index
from lib.utils.checkpoint import atomic_write_bytes

# Fixed colours of label maps: label (or slot) i is drawn in PALETTE[i % len(PALETTE)].
# Entry 0 (dark grey) is the background of true label maps and slot 0 of predicted ones; the
# others are Tableau-10 followed by lighter Tableau-20 tones.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (64, 64, 64),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (219, 219, 141),
    (158, 218, 229),
    (127, 127, 127),
)

# Layout of panel grids, in pixels at the figure's dpi (fonts in points).
PANEL_FONT_PT = 7.0
TITLE_FONT_PT = 8.5
GAP_PX = 6
ROW_LABEL_PX = 96


# ----------------------------------------------------------------------------------------------
# Tensors to pictures
# ----------------------------------------------------------------------------------------------
def colorize_labels(labels: Tensor) -> Tensor:
    """Colour a label map with the fixed ``PALETTE``.

    Args:
        labels: (..., H, W) integer labels >= 0 (true label maps or argmax slots).

    Returns:
        (..., 3, H, W) float32 RGB in [0, 1]; label i gets ``PALETTE[i % len(PALETTE)]``.
    """
    if labels.dtype.is_floating_point:
        raise TypeError("colorize_labels takes integer label maps")
    palette = torch.tensor(PALETTE, dtype=torch.float32) / 255.0  # (P, 3)
    index = labels.long().cpu().clamp(min=0) % len(PALETTE)
    rgb = palette[index]  # (..., H, W, 3)
    return rgb.movedim(-1, -3).contiguous()


def gray_to_rgb(values: Tensor) -> Tensor:
    """Repeat a grey map on three channels.

    Args:
        values: (..., H, W) floats in [0, 1] (e.g. a mask).

    Returns:
        (..., 3, H, W) float32.
    """
    return values.float().unsqueeze(-3).expand(*values.shape[:-2], 3, *values.shape[-2:])


def masked_components(masks: Tensor, components: Tensor, background: str = "white") -> Tensor:
    """Each slot's component shown through its mask: m_k * mu_k + (1 - m_k) * background.

    Args:
        masks: (..., K, H, W) softmax masks.
        components: (..., K, 3, H, W) decoded means mu_k.
        background: "white" or "black" (the colour where the mask is 0).

    Returns:
        (..., K, 3, H, W) float32 in [0, 1].
    """
    if background not in ("white", "black"):
        raise ValueError(f"background must be 'white' or 'black', got {background!r}")
    m = masks.float().unsqueeze(-3)
    fill = 1.0 if background == "white" else 0.0
    return (m * components.float() + (1.0 - m) * fill).clamp(0.0, 1.0)


def slot_tile(mask: Tensor, masked: Tensor) -> Tensor:
    """One slot as a single picture: its mask (grey) above its masked component.

    Args:
        mask: (H, W) mask in [0, 1].
        masked: (3, H, W) masked component (``masked_components``).

    Returns:
        (3, 2H + 3, W + 2) float32: a one-column ``torchvision.utils.make_grid`` with a white
        1-pixel border.
    """
    tiles = torch.stack([gray_to_rgb(mask.cpu()), masked.float().cpu()])
    return make_grid(tiles, nrow=1, padding=1, pad_value=1.0)


def segmentation_scores(true_labels: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """ARI and foreground ARI of the argmax slot against true label maps, per image.

    Args:
        true_labels: (N, H, W) int64 label maps, 0 = background.
        masks: (N, K, H, W) softmax masks.

    Returns:
        ``(ari, fg_ari)``, each (N,) float64; fg ARI is NaN for an image without foreground
        (see ``lib/evaluation/ari.py``).
    """
    pred = masks.argmax(dim=1).cpu()
    true_labels = true_labels.cpu()
    return (
        adjusted_rand_index(true_labels, pred, ignore_background=False),
        adjusted_rand_index(true_labels, pred, ignore_background=True),
    )


def mean_or_nan(values: Tensor) -> float:
    """Mean of the defined entries of per-image scores.

    Args:
        values: (N,) scores, NaN where undefined.

    Returns:
        The mean of the non-NaN entries, NaN when there is none.
    """
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else float("nan")


def fmt_score(value: float) -> str:
    """Format a score for a panel label.

    Args:
        value: a score in [-1, 1] (ARI), NaN or None.

    Returns:
        The percentage with one decimal (``"97.3"``), or ``"n/a"`` for NaN/None.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * float(value):.1f}"


# ----------------------------------------------------------------------------------------------
# Panel grids
# ----------------------------------------------------------------------------------------------
@dataclass
class Panel:
    """One labelled picture of a panel grid.

    Attributes:
        image: (3, H, W) RGB or (H, W) grey float tensor in [0, 1] (clamped when drawn).
        label: text above the picture; may hold several lines.
    """

    image: Tensor
    label: str


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
    return _layout(rows, title, row_labels, cell_px, dpi)["size"]


def _layout(rows, title, row_labels, cell_px, dpi) -> dict:
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
    return {
        "size": (width, height),
        "left": left,
        "title_lines": title_lines,
        "rows": row_specs,
    }


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
    """
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    spec = _layout(rows, title, row_labels, cell_px, dpi)
    width, height = spec["size"]
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    title_line = _line_px(TITLE_FONT_PT, dpi)
    for i, text in enumerate(spec["title_lines"]):
        y = height - GAP_PX / 2 - (i + 0.5) * title_line
        fig.text(0.5, y / height, text, ha="center", va="center", fontsize=TITLE_FONT_PT)
    left = spec["left"]
    for r, (row, (top, label_h, image_h)) in enumerate(zip(rows, spec["rows"])):
        image_top = top + label_h
        if row_labels:
            y = height - image_top - image_h / 2
            # Bold text is about 10% wider than the regular text _wrap assumes.
            for_label = "\n".join(
                _wrap(row_labels[r], int((left - 2 * GAP_PX) / 1.1), PANEL_FONT_PT, dpi)
            )
            fig.text(
                GAP_PX / width,
                y / height,
                for_label,
                ha="left",
                va="center",
                fontsize=PANEL_FONT_PT,
                fontweight="bold",
            )
        for c, panel in enumerate(row):
            if panel is None:
                continue
            x0 = left + GAP_PX + c * (cell_px + GAP_PX)
            ax = fig.add_axes(
                (
                    x0 / width,
                    (height - image_top - image_h) / height,
                    cell_px / width,
                    image_h / height,
                )
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
    return fig


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
    """Write a figure as PNG atomically (temporary sibling file, then ``os.replace``).

    Args:
        fig: the figure; saved at its own dpi without cropping.
        path: destination ``.png``; missing folders are created.

    Returns:
        ``(width, height)`` of the written PNG in pixels.
    """
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))
    return figure_pixel_size(fig)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def _decomposition_row(
    image: Tensor,
    recon: Tensor,
    masks: Tensor,
    components: Tensor,
    true_mask: Tensor | None,
    background: str,
    prefix: str = "",
    num_columns: int | None = None,
) -> list[Panel | None]:
    """Panels input | recon | argmax | truth | slot 0..K-1 for one image at one step."""
    mse = float(((recon.float() - image.float()) ** 2).mean())
    pred = masks.argmax(dim=0)
    seg_label = f"{prefix}argmax slot"
    if true_mask is not None:
        ari, fg = segmentation_scores(true_mask[None], masks[None])
        seg_label += f"\nARI {fmt_score(ari[0].item())}\nfg ARI {fmt_score(fg[0].item())}"
    row: list[Panel | None] = [
        Panel(image, "input"),
        Panel(recon, f"{prefix}recon\nMSE {mse:.4f}"),
        Panel(colorize_labels(pred), seg_label),
    ]
    if true_mask is not None:
        count = int(torch.unique(true_mask[true_mask > 0]).numel())
        row.append(Panel(colorize_labels(true_mask), f"true masks\n{count} objects"))
    shown = masked_components(masks, components, background)
    area = masks.float().mean(dim=(1, 2))
    for k in range(masks.shape[0]):
        label = f"slot {k} ({100 * float(area[k]):.0f}%)\nmask / m*mu"
        row.append(Panel(slot_tile(masks[k], shown[k]), label))
    if num_columns is not None:
        row.extend([None] * (num_columns - len(row)))
    return row


def decomposition_figure(
    images: Tensor,
    masks: Tensor,
    recon: Tensor,
    components: Tensor,
    true_masks: Tensor | None,
    title: str,
    image_labels: Sequence[str],
    steps_for: int | None = None,
    background: str = "white",
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Decomposition of N images: one row each, plus optionally every step of one image.

    Columns: input, reconstruction (MSE), argmax slot coloured with ``PALETTE`` (ARI and
    foreground ARI when true masks exist), true label map (when given), then per slot its mask
    above its masked component (``masked_components``) with the slot's mask area.

    Args:
        images: (N, 3, H, W) inputs.
        masks: (N, T+1, K, H, W) softmax masks after each step.
        recon: (N, T+1, 3, H, W) reconstructions.
        components: (N, T+1, K, 3, H, W) decoded means.
        true_masks: (N, H, W) int64 label maps, or None.
        title: figure title.
        image_labels: N row labels (e.g. the dataset index).
        steps_for: when set, the row index n whose T+1 steps are added as further rows.
        background: "white" or "black" behind the masked components.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure: N rows (+ T+1 with ``steps_for``), 3 + (1 if true masks) + K columns.
    """
    n = images.shape[0]
    rows, labels = [], []
    for i in range(n):
        truth = None if true_masks is None else true_masks[i]
        rows.append(
            _decomposition_row(
                images[i], recon[i, -1], masks[i, -1], components[i, -1], truth, background
            )
        )
        labels.append(f"{image_labels[i]}\nfinal step")
    if steps_for is not None:
        i = steps_for
        truth = None if true_masks is None else true_masks[i]
        for t in range(masks.shape[1]):
            rows.append(
                _decomposition_row(
                    images[i], recon[i, t], masks[i, t], components[i, t], truth, background,
                    prefix=f"t={t} ",
                )
            )  # fmt: skip
            labels.append(f"{image_labels[i]}\nstep t={t}")
    return render_panels(rows, title, labels, cell_px, dpi)


def step_metrics(
    image: Tensor, masks: Tensor, recon: Tensor, true_mask: Tensor | None
) -> dict[str, list[float]]:
    """MSE, ARI and foreground ARI of one image after each step.

    Args:
        image: (3, H, W) input.
        masks: (T+1, K, H, W) softmax masks.
        recon: (T+1, 3, H, W) reconstructions.
        true_mask: (H, W) label map, or None (ARI lists are then NaN).

    Returns:
        ``{"mse": [T+1], "ari": [T+1], "fg_ari": [T+1]}`` of floats (NaN where undefined).
    """
    steps = masks.shape[0]
    mse = ((recon.float() - image.float()[None]) ** 2).mean(dim=(1, 2, 3)).tolist()
    if true_mask is None:
        nan = [float("nan")] * steps
        return {"mse": mse, "ari": nan, "fg_ari": list(nan)}
    ari, fg = segmentation_scores(true_mask[None].expand(steps, -1, -1), masks)
    return {"mse": mse, "ari": ari.tolist(), "fg_ari": fg.tolist()}


def refinement_figure(
    image: Tensor,
    masks: Tensor,
    recon: Tensor,
    true_mask: Tensor | None,
    title: str,
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """How one image's reconstruction and masks improve over the refinement steps.

    Column 0 holds the input and the true label map; columns 1..T+1 are the steps t = 0..T.
    Rows: reconstruction (MSE), argmax slot (ARI and foreground ARI when ``true_mask``), then
    one row of grey masks per slot.

    Args:
        image: (3, H, W) input.
        masks: (T+1, K, H, W) softmax masks after each step.
        recon: (T+1, 3, H, W) reconstructions.
        true_mask: (H, W) label map, or None.
        title: figure title.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure: 2 + K rows, T + 2 columns.
    """
    steps, k = masks.shape[0], masks.shape[1]
    metrics = step_metrics(image, masks, recon, true_mask)
    recon_row: list[Panel | None] = [Panel(image, "input")]
    seg_row: list[Panel | None] = [
        Panel(colorize_labels(true_mask), "true masks") if true_mask is not None else None
    ]
    mask_rows: list[list[Panel | None]] = [[None] for _ in range(k)]
    for t in range(steps):
        recon_row.append(Panel(recon[t], f"t={t} recon\nMSE {metrics['mse'][t]:.4f}"))
        seg_label = f"t={t} argmax"
        if true_mask is not None:
            seg_label += f"\nARI {fmt_score(metrics['ari'][t])}"
            seg_label += f"\nfg ARI {fmt_score(metrics['fg_ari'][t])}"
        seg_row.append(Panel(colorize_labels(masks[t].argmax(dim=0)), seg_label))
        for j in range(k):
            area = 100 * float(masks[t, j].float().mean())
            mask_rows[j].append(Panel(masks[t, j], f"t={t} mask {j}\narea {area:.0f}%"))
    rows = [recon_row, seg_row, *mask_rows]
    labels = ["reconstruction", "segmentation", *[f"slot {j} mask" for j in range(k)]]
    return render_panels(rows, title, labels, cell_px, dpi)


# ----------------------------------------------------------------------------------------------
# Latent traversal
# ----------------------------------------------------------------------------------------------
def choose_traversal_slot(masks: Tensor, true_mask: Tensor | None = None) -> int:
    """The default slot of a traversal: the largest slot that is not the background slot.

    The background slot is the one holding the most mask mass on true background pixels
    (label 0) when ``true_mask`` is given and has background, else the slot of largest mask
    area. Among the other slots the one of largest mask area (sum of its soft mask) is chosen.
    With a single slot, 0.

    Args:
        masks: (K, H, W) softmax masks of the image (final step).
        true_mask: (H, W) label map, or None.

    Returns:
        The slot index.
    """
    k = masks.shape[0]
    if k == 1:
        return 0
    area = masks.float().sum(dim=(1, 2))
    if true_mask is not None and bool((true_mask == 0).any()):
        background = (masks.float() * (true_mask == 0).to(masks.device).float()).sum(dim=(1, 2))
        bg_slot = int(background.argmax())
    else:
        bg_slot = int(area.argmax())
    area[bg_slot] = -1.0
    return int(area.argmax())


def rank_latent_dims(kl: Tensor, num_dims: int) -> list[int]:
    """Latent dimensions in decreasing order of KL (the paper's ranking for traversals).

    Args:
        kl: (D,) per-dimension KL of one slot's posterior to the prior.
        num_dims: how many to return (at most D).

    Returns:
        The indices of the ``num_dims`` largest entries, largest first (ties: lower index).
    """
    order = sorted(range(kl.shape[0]), key=lambda d: (-float(kl[d]), d))
    return order[: max(0, min(num_dims, kl.shape[0]))]


def traversal_offsets(value_range: float, steps: int) -> Tensor:
    """Offsets added to a latent dimension, evenly spaced and centred on 0.

    Args:
        value_range: largest absolute offset.
        steps: number of offsets (odd: the middle one is 0, the unchanged latent).

    Returns:
        (steps,) float32 ``linspace(-value_range, value_range, steps)``; ``[0]`` for one step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return torch.zeros(1)
    return torch.linspace(-value_range, value_range, steps)


def traverse_slot(
    model: torch.nn.Module,
    loc: Tensor,
    slot: int,
    dims: Sequence[int],
    offsets: Tensor,
    height: int,
    width: int,
    unit: Tensor | None = None,
) -> dict[str, Tensor]:
    """Decode the posterior means with one slot's latent dimensions varied, one at a time.

    The other slots keep z = ``loc``. The decoder treats each slot independently (slots are
    folded into the batch), so the unchanged slots are decoded once with ``model.decode`` and
    reused for every traversal point, which makes them bit-identical across the traversal;
    only the chosen slot is decoded again for each point. Masks are the softmax over the slots'
    mask logits and the reconstruction is sum_k m_k mu_k, exactly as ``model.decode`` computes
    them, so the other slots' masks, masked components and the reconstruction change only
    through the softmax.

    Args:
        model: the IODINE model (its ``decode``).
        loc: (K, D) posterior means of one image (usually the final step).
        slot: the slot whose latent varies.
        dims: latent dimensions to vary (one row each).
        offsets: (S,) values added to ``loc[slot, d]``.
        height, width: decoded image size.
        unit: (D,) scale the offsets are multiplied by (e.g. the slot's posterior std), or
            None for absolute offsets.

    Returns:
        dict with ``z`` (R, S, K, D), ``mask_logits`` (R, S, K, H, W), ``components``
        (R, S, K, 3, H, W), ``masks`` (R, S, K, H, W) and ``recon`` (R, S, 3, H, W), R =
        len(dims); and ``base`` = ``model.decode`` of ``loc`` (entries without the R, S axes).
    """
    k, d = loc.shape
    if not 0 <= slot < k:
        raise ValueError(f"slot {slot} is not in [0, {k})")
    dims = list(dims)
    if any(not 0 <= dim < d for dim in dims):
        raise ValueError(f"latent dimensions {dims} are not all in [0, {d})")
    r, s = len(dims), offsets.shape[0]
    loc = loc.detach()
    offsets = offsets.to(loc)
    scale = torch.ones(d, dtype=loc.dtype, device=loc.device) if unit is None else unit.to(loc)
    with torch.no_grad():
        base = model.decode(loc[None], height, width)
        z = loc.expand(r, s, k, d).clone()
        for i, dim in enumerate(dims):
            z[i, :, slot, dim] = loc[slot, dim] + offsets * scale[dim]
        varied = model.decode(z[:, :, slot].reshape(r * s, 1, d), height, width)
        mask_logits = base["mask_logits"].expand(r * s, k, height, width).clone()
        components = base["components"].expand(r * s, k, 3, height, width).clone()
        mask_logits[:, slot] = varied["mask_logits"][:, 0]
        components[:, slot] = varied["components"][:, 0]
        masks = torch.softmax(mask_logits, dim=1)
        recon = (masks[:, :, None] * components).sum(dim=1)
    return {
        "z": z,
        "mask_logits": mask_logits.view(r, s, k, height, width),
        "components": components.view(r, s, k, 3, height, width),
        "masks": masks.view(r, s, k, height, width),
        "recon": recon.view(r, s, 3, height, width),
        "base": {name: value[0] for name, value in base.items()},
    }


def traversal_figure(
    image: Tensor,
    traversal: Mapping[str, Tensor],
    slot: int,
    dims: Sequence[int],
    kl: Tensor,
    offsets: Tensor,
    unit_name: str,
    title: str,
    show_component: bool = False,
    background: str = "white",
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Latent traversal of one slot: rows = latent dimensions, columns = offsets.

    The first row shows the input, the reconstruction at z = loc, and the chosen slot's mask
    and masked component. Each further row varies one dimension and shows the full
    reconstruction per offset (with ``show_component``, a second row per dimension shows the
    chosen slot's masked component).

    Args:
        image: (3, H, W) input.
        traversal: output of ``traverse_slot``.
        slot: the varied slot.
        dims: the varied dimensions, as passed to ``traverse_slot``.
        kl: (D,) the slot's per-dimension KL (shown in the row labels).
        offsets: (S,) the offsets, as passed to ``traverse_slot``.
        unit_name: what the offsets are measured in (e.g. "posterior std"), for the labels.
        title: figure title.
        show_component: add the slot's masked component row under each dimension.
        background: "white" or "black" behind masked components.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure: 1 + R (or 1 + 2R) rows, max(4, S) columns.
    """
    base = traversal["base"]
    shown = masked_components(base["masks"], base["components"], background)
    rows: list[list[Panel | None]] = [
        [
            Panel(image, "input"),
            Panel(base["recon"], "recon\n(z = posterior mean)"),
            Panel(base["masks"][slot], f"slot {slot} mask"),
            Panel(shown[slot], f"slot {slot} m*mu"),
        ]
    ]
    labels = ["reference"]
    for i, dim in enumerate(dims):
        recon_row: list[Panel | None] = []
        comp_row: list[Panel | None] = []
        comps = masked_components(
            traversal["masks"][i, :, slot : slot + 1],
            traversal["components"][i, :, slot : slot + 1],
            background,
        )[:, 0]  # (S, 3, H, W)
        for j in range(offsets.shape[0]):
            text = f"z{dim} {float(offsets[j]):+.2f}"
            recon_row.append(Panel(traversal["recon"][i, j], f"{text}\nrecon"))
            comp_row.append(Panel(comps[j], f"{text}\nslot {slot} m*mu"))
        rows.append(recon_row)
        labels.append(f"dim {dim}\nKL {float(kl[dim]):.2f}")
        if show_component:
            rows.append(comp_row)
            labels.append(f"dim {dim}\nslot {slot}")
    title = f"{title}\nslot {slot}, offsets in {unit_name} around the posterior mean"
    return render_panels(rows, title, labels, cell_px, dpi)


# ----------------------------------------------------------------------------------------------
# Generalisation, dataset
# ----------------------------------------------------------------------------------------------
def generalisation_figure(
    images: Tensor,
    runs: Sequence[tuple[str, Mapping[str, Tensor]]],
    true_masks: Tensor | None,
    title: str,
    image_labels: Sequence[str],
    background: str = "white",
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Decompositions of the same images under several runs (e.g. K as trained vs K given).

    One row per image and run: input, reconstruction, argmax slot (with ARI / fg ARI when
    ``true_masks``), true label map, then the run's slots; rows of runs with fewer slots are
    padded with empty cells.

    Args:
        images: (N, 3, H, W) inputs.
        runs: ``(name, out)`` pairs; ``out`` holds final-step ``masks`` (N, K, H, W),
            ``recon`` (N, 3, H, W) and ``components`` (N, K, 3, H, W).
        true_masks: (N, H, W) label maps, or None.
        title: figure title.
        image_labels: N texts naming the images.
        background: "white" or "black" behind masked components.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure: N * len(runs) rows.
    """
    k_max = max(out["masks"].shape[1] for _, out in runs)
    width = 3 + (1 if true_masks is not None else 0) + k_max
    rows, labels = [], []
    for i in range(images.shape[0]):
        truth = None if true_masks is None else true_masks[i]
        for name, out in runs:
            rows.append(
                _decomposition_row(
                    images[i], out["recon"][i], out["masks"][i], out["components"][i], truth,
                    background, num_columns=width,
                )
            )  # fmt: skip
            labels.append(f"{image_labels[i]}\n{name}")
    return render_panels(rows, title, labels, cell_px, dpi)


def dataset_figure(
    images: Tensor,
    masks: Tensor | None,
    title: str,
    image_labels: Sequence[str],
    pairs_per_row: int = 4,
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Dataset examples beside their true label maps (coloured with ``PALETTE``).

    Args:
        images: (N, 3, H, W) images.
        masks: (N, H, W) label maps, or None (images only).
        title: figure title.
        image_labels: N texts naming the images (e.g. the dataset index).
        pairs_per_row: examples per row (each takes two columns with masks, one without).
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure: ceil(N / pairs_per_row) rows.
    """
    pairs_per_row = max(1, pairs_per_row)
    rows: list[list[Panel | None]] = []
    for start in range(0, images.shape[0], pairs_per_row):
        row: list[Panel | None] = []
        for i in range(start, min(start + pairs_per_row, images.shape[0])):
            row.append(Panel(images[i], f"{image_labels[i]}\nimage"))
            if masks is not None:
                count = int(torch.unique(masks[i][masks[i] > 0]).numel())
                row.append(Panel(colorize_labels(masks[i]), f"{image_labels[i]}\n{count} objects"))
        rows.append(row)
    return render_panels(rows, title, None, cell_px, dpi)


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------
def read_scalars(logdir: str) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar of the TensorBoard event files in a folder.

    Args:
        logdir: folder holding ``events.out.tfevents.*`` (a resumed run adds files; they are
            read in order, and a step logged twice keeps its latest value).

    Returns:
        ``{tag: (steps, values)}`` with steps increasing; empty when the folder holds none.

    Raises:
        FileNotFoundError: ``logdir`` is not a folder.
    """
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"no folder {logdir}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logdir, size_guidance={"scalars": 0})
    accumulator.Reload()
    out = {}
    for tag in accumulator.Tags().get("scalars", []):
        by_step: dict[int, tuple[float, float]] = {}
        for event in accumulator.Scalars(tag):
            previous = by_step.get(event.step)
            if previous is None or event.wall_time >= previous[0]:
                by_step[event.step] = (event.wall_time, float(event.value))
        steps = sorted(by_step)
        out[tag] = (steps, [by_step[s][1] for s in steps])
    return out


def _step_tags(scalars: Mapping[str, object], prefix: str) -> list[tuple[int, str]]:
    found = []
    for tag in scalars:
        if tag.startswith(prefix) and tag[len(prefix) :].isdigit():
            found.append((int(tag[len(prefix) :]), tag))
    return sorted(found)


def curves_figure(
    scalars: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    title: str,
    dpi: int = 100,
    size_px: tuple[int, int] = (1000, 720),
) -> Figure:
    """Training curves against iteration, as ``lib/engine/trainer.py`` logs them.

    Four panels: total loss (``loss/total``); foreground ARI and ARI of the periodic
    evaluation (``eval/fg_ari``, ``eval/ari``); NLL per refinement step (``loss/nll_t<t>``);
    KL per step (``loss/kl_t<t>``). A panel whose tags are absent says so instead of plotting.

    Args:
        scalars: ``read_scalars`` output.
        title: figure title.
        dpi: resolution.
        size_px: (width, height) of the figure in pixels.

    Returns:
        The figure, exactly ``size_px`` pixels.
    """
    width, height = size_px
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=TITLE_FONT_PT + 1)
    axes = fig.subplots(2, 2)
    panels = [
        ("total loss", "loss", [("loss/total", "loss/total")]),
        ("evaluation ARI", "ARI", [("eval/fg_ari", "fg ARI"), ("eval/ari", "ARI")]),
        (
            "NLL per refinement step",
            "NLL (nats)",
            [(tag, f"t={t}") for t, tag in _step_tags(scalars, "loss/nll_t")],
        ),
        (
            "KL per refinement step",
            "KL (nats)",
            [(tag, f"t={t}") for t, tag in _step_tags(scalars, "loss/kl_t")],
        ),
    ]
    wanted = {
        "total loss": "loss/total",
        "evaluation ARI": "eval/fg_ari",
        "NLL per refinement step": "loss/nll_t<t>",
        "KL per refinement step": "loss/kl_t<t>",
    }
    for ax, (name, ylabel, series) in zip(axes.flat, panels):
        ax.set_title(name, fontsize=PANEL_FONT_PT + 2)
        ax.set_xlabel("iteration", fontsize=PANEL_FONT_PT + 1)
        ax.set_ylabel(ylabel, fontsize=PANEL_FONT_PT + 1)
        ax.tick_params(labelsize=PANEL_FONT_PT)
        drawn = 0
        for tag, label in series:
            if tag not in scalars or not scalars[tag][0]:
                continue
            steps, values = scalars[tag]
            ax.plot(
                steps, values, label=label, linewidth=1.2, marker="." if len(steps) < 30 else None
            )
            drawn += 1
        if drawn:
            ax.legend(fontsize=PANEL_FONT_PT, loc="best")
            ax.grid(alpha=0.3)
        else:
            ax.text(
                0.5,
                0.5,
                f"no data\n(tag {wanted[name]} not logged)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=PANEL_FONT_PT + 1,
            )
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.86, hspace=0.45, wspace=0.25)
    return fig
