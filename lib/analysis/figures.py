"""Figure builders: decompositions, refinement steps, traversals, generalisation, datasets,
training curves.

Every function takes explicit tensors and text (no config, no model) and returns a matplotlib
Figure; ``lib.analysis.layout.save_figure`` writes it. Model outputs follow
``lib/model/iodine.py``: ``masks`` (B, T+1, K, H, W), ``recon`` (B, T+1, 3, H, W),
``components`` (B, T+1, K, 3, H, W).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lib.analysis.layout import PANEL_FONT_PT, TITLE_FONT_PT, Panel, render_panels
from lib.analysis.scalars import per_step_tags
from lib.analysis.scores import format_percent, segmentation_scores, step_metrics
from lib.utils.palette import colorize_labels, masked_components, slot_tile


def _object_count(labels: Tensor) -> int:
    return int(torch.unique(labels[labels > 0]).numel())


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
        seg_label += f"\nARI {format_percent(ari[0].item())}"
        seg_label += f"\nfg ARI {format_percent(fg[0].item())}"
    row: list[Panel | None] = [
        Panel(image, "input"),
        Panel(recon, f"{prefix}recon\nMSE {mse:.4f}"),
        Panel(colorize_labels(pred), seg_label),
    ]
    if true_mask is not None:
        row.append(
            Panel(colorize_labels(true_mask), f"true masks\n{_object_count(true_mask)} objects")
        )
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
    rows, labels = [], []
    for i in range(images.shape[0]):
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
            seg_label += f"\nARI {format_percent(metrics['ari'][t])}"
            seg_label += f"\nfg ARI {format_percent(metrics['fg_ari'][t])}"
        seg_row.append(Panel(colorize_labels(masks[t].argmax(dim=0)), seg_label))
        for j in range(k):
            area = 100 * float(masks[t, j].float().mean())
            mask_rows[j].append(Panel(masks[t, j], f"t={t} mask {j}\narea {area:.0f}%"))
    rows = [recon_row, seg_row, *mask_rows]
    labels = ["reconstruction", "segmentation", *[f"slot {j} mask" for j in range(k)]]
    return render_panels(rows, title, labels, cell_px, dpi)


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
        traversal: output of ``lib.analysis.traversal.traverse_slot``.
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
                text = f"{image_labels[i]}\n{_object_count(masks[i])} objects"
                row.append(Panel(colorize_labels(masks[i]), text))
        rows.append(row)
    return render_panels(rows, title, None, cell_px, dpi)


def eval_dataset_name(scalars: Mapping[str, object]) -> str:
    """The held-out dataset of ``eval/<name>/fg_ari`` tags (the first, sorted), or "" for a
    run that logged the older ``eval/fg_ari``."""
    names = sorted(
        tag[len("eval/") : -len("/fg_ari")]
        for tag in scalars
        if tag.startswith("eval/") and tag.endswith("/fg_ari")
    )
    return names[0] if names else ""


def curves_figure(
    scalars: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    title: str,
    dpi: int = 100,
    size_px: tuple[int, int] = (1000, 720),
) -> Figure:
    """Training curves against iteration, as ``lib/engine/trainer.py`` logs them.

    Four panels: total loss (``loss/total``); foreground ARI and ARI of the periodic
    evaluation (``eval/<dataset>/fg_ari``, ``eval/<dataset>/ari``; older runs ``eval/fg_ari``); NLL per refinement step (``loss/nll_t<t>``);
    KL per step (``loss/kl_t<t>``). A panel whose tags are absent says so instead of plotting.

    Args:
        scalars: ``lib.analysis.scalars.read_scalars`` output.
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
    eval_name = eval_dataset_name(scalars)
    eval_prefix = f"eval/{eval_name}/" if eval_name else "eval/"
    # (panel title, y label, tag shown when nothing is logged, [(tag, legend label)])
    panels = [
        ("total loss", "loss", "loss/total", [("loss/total", "loss/total")]),
        (
            "evaluation ARI" + (f" ({eval_name})" if eval_name else ""),
            "ARI",
            f"{eval_prefix}fg_ari",
            [(f"{eval_prefix}fg_ari", "fg ARI"), (f"{eval_prefix}ari", "ARI")],
        ),
        (
            "NLL per refinement step",
            "NLL (nats)",
            "loss/nll_t<t>",
            [(tag, f"t={t}") for t, tag in per_step_tags(scalars, "loss/nll_t")],
        ),
        (
            "KL per refinement step",
            "KL (nats)",
            "loss/kl_t<t>",
            [(tag, f"t={t}") for t, tag in per_step_tags(scalars, "loss/kl_t")],
        ),
    ]
    for ax, (name, ylabel, wanted, series) in zip(axes.flat, panels):
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
                f"no data\n(tag {wanted} not logged)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=PANEL_FONT_PT + 1,
            )
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.86, hspace=0.45, wspace=0.25)
    return fig
