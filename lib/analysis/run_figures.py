"""The figures of a run: its model's decompositions, refinement, traversal and generalisation on
dataset images, its training curves and its data, each ready to save.

Each model figure takes a ``lib.analysis.loading.ModelInputs`` (model, images, heading, K and T
at test time) and explicit options, runs the forward pass, computes the numbers and the title
the figure shows, and returns the matplotlib Figure of ``lib.analysis.figures``; the curves and
dataset figures take the run folder or the images. ARIs are fractions, printed as percentages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from lib.analysis import figures
from lib.analysis.loading import ImageBatch, ModelInputs
from lib.analysis.scalars import read_scalars
from lib.analysis.scores import format_percent, segmentation_scores, step_metrics
from lib.analysis.traversal_inputs import traversal_inputs
from lib.errors import RunError
from lib.evaluation.ari import mean_ari

FINAL_KEYS = ("masks", "recon", "components")


def decomposition(
    inputs: ModelInputs,
    *,
    steps: bool,
    background: str,
    cell_px: int,
    dpi: int,
) -> Figure:
    """Inputs, reconstructions, segmentations, true masks and slots of a batch.

    Args:
        inputs: the model, the N images with their true masks, the heading, K and T.
        steps: add every refinement step of the first image as rows.
        background: "white" or "black" behind masked components.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure.
    """
    out, batch = inputs.forward(), inputs.batch
    title = decomposition_title(inputs.heading, out["masks"], batch.masks is not None)
    return figures.decomposition_figure(
        batch.images, out["masks"], out["recon"], out["components"], batch.masks, title,
        batch.labels, steps_for=0 if steps else None, background=background, cell_px=cell_px,
        dpi=dpi,
    )  # fmt: skip


def decomposition_title(heading: str, masks: Tensor, has_true_masks: bool) -> str:
    """Title of the decomposition figure.

    Args:
        heading: the first title line.
        masks: (N, T+1, K, H, W) masks of the forward pass (for K and T).
        has_true_masks: whether the dataset has true masks (else no ARI).

    Returns:
        The heading, then ``"K=<k> slots, T=<t> steps; ARI in %"``.
    """
    k, t = masks.shape[2], masks.shape[1] - 1
    title = f"{heading}\nK={k} slots, T={t} steps; ARI in %"
    if not has_true_masks:
        title += " (no true masks: ARI not computed)"
    return title


def refinement(inputs: ModelInputs, *, cell_px: int, dpi: int) -> Figure:
    """The first image's reconstruction, segmentation and masks after each step.

    Args:
        inputs: the model, the image (first of the batch) with its true mask, the heading, K, T.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure.
    """
    out, batch = inputs.forward(), inputs.batch
    image, masks, recon = batch.images[0], out["masks"][0], out["recon"][0]
    metrics = step_metrics(image, masks, recon, batch.first_mask)
    title = refinement_title(inputs.heading, batch.indices[0], metrics, batch.masks is not None)
    return figures.refinement_figure(
        image, masks, recon, batch.first_mask, title, cell_px=cell_px, dpi=dpi
    )


def refinement_title(
    heading: str, index: int, metrics: Mapping[str, Sequence[float]], has_true_mask: bool
) -> str:
    """Title of the refinement figure: MSE and foreground ARI at the first and last step.

    Args:
        heading: the first title line.
        index: the image's dataset index.
        metrics: ``lib.analysis.scores.step_metrics`` of the image (T+1 values per key).
        has_true_mask: whether the image has a true mask (else no ARI).

    Returns:
        The title.
    """
    title = f"{heading}\nimage #{index}: MSE {metrics['mse'][0]:.4f} -> {metrics['mse'][-1]:.4f}"
    if has_true_mask:
        title += (
            f", fg ARI {format_percent(metrics['fg_ari'][0])} -> "
            f"{format_percent(metrics['fg_ari'][-1])} (%)"
        )
    return title


def traversal(
    inputs: ModelInputs,
    *,
    slot: int,
    num_dims: int,
    value_range: float,
    steps_per_dim: int,
    unit: str,
    show_component: bool,
    background: str,
    cell_px: int,
    dpi: int,
) -> Figure:
    """One slot's latent dimensions of largest KL varied at the final step, others fixed.

    Args:
        inputs: the model, the image (first of the batch) with its true mask, the heading, K, T.
        slot, num_dims, value_range, steps_per_dim, unit: as for
            ``lib.analysis.traversal_inputs.traversal_inputs``.
        show_component: add the slot's masked component rows.
        background: "white" or "black" behind masked components.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure.

    Raises:
        RunError: ``slot`` is not a slot of the model.
    """
    out, batch, loaded = inputs.forward(), inputs.batch, inputs.loaded
    drawn = traversal_inputs(
        loaded.model, out, batch.first_mask, loaded.device, slot=slot, num_dims=num_dims,
        value_range=value_range, steps_per_dim=steps_per_dim, unit=unit,
    )  # fmt: skip
    title = (
        f"{inputs.heading}\nimage #{batch.indices[0]}, final step; rows = the "
        f"{len(drawn.dims)} dimensions of largest KL of slot {drawn.slot}"
    )
    return figures.traversal_figure(
        batch.images[0], drawn.traversal, drawn.slot, drawn.dims, drawn.kl, drawn.offsets,
        drawn.unit_name, title, show_component=show_component, background=background,
        cell_px=cell_px, dpi=dpi,
    )  # fmt: skip


def generalisation(
    inputs: ModelInputs,
    *,
    full_eval_loaders: Sequence | None,
    background: str,
    cell_px: int,
    dpi: int,
) -> Figure:
    """Decompositions with K as trained and K = ``inputs.num_slots``, both fg ARIs in the title.

    Args:
        inputs: the model, the N images with their true masks, the heading, the K to compare
            with K as trained, and T.
        full_eval_loaders: evaluation loaders whose first is ``batch.dataset``'s, to add
            ``do_evaluate`` over the whole dataset for both K; None: not evaluated.
        background: "white" or "black" behind masked components.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure.
    """
    model, batch = inputs.loaded.model, inputs.batch
    slot_counts = (model.num_slots, inputs.num_slots)
    runs, line = generalisation_runs(inputs, slot_counts)
    if full_eval_loaders is not None:
        line += "\n" + full_evaluation_line(
            model, full_eval_loaders, inputs.loaded.device, batch.dataset, slot_counts,
            inputs.num_iters,
        )  # fmt: skip
    return figures.generalisation_figure(
        batch.images, runs, batch.masks, f"{inputs.heading}\n{line}", batch.labels,
        background=background, cell_px=cell_px, dpi=dpi,
    )  # fmt: skip


def generalisation_runs(
    inputs: ModelInputs, slot_counts: Iterable[int]
) -> tuple[list[tuple[str, dict[str, Tensor]]], str]:
    """Final-step decompositions of the same images for each K, and their fg ARI line.

    Args:
        inputs: the model (its ``num_slots`` is K as trained), the images (N, 3, H, W) with
            true masks (N, H, W) or None, and T.
        slot_counts: the K values, in order (K as trained is tagged so).

    Returns:
        ``(runs, line)``: per K ``(tag, {masks (N, K, H, W), recon (N, 3, H, W), components
        (N, K, 3, H, W)})`` for ``generalisation_figure``, and the line naming each K's mean
        foreground ARI on these images.
    """
    batch, runs, summary = inputs.batch, [], []
    for k in slot_counts:
        out = inputs.forward(k)
        final = {key: out[key][:, -1] for key in FINAL_KEYS}
        tag = f"K={k} (as trained)" if k == inputs.loaded.model.num_slots else f"K={k}"
        runs.append((tag, final))
        if batch.masks is not None:
            _, fg = segmentation_scores(batch.masks, final["masks"])
            summary.append(f"{tag}: fg ARI {format_percent(mean_ari(fg))}")
    scope = f"fg ARI (%) computed directly on these {batch.images.shape[0]} images"
    if batch.masks is None:
        scope = "no true masks: ARI not computed"
    return runs, f"{scope}: " + ", ".join(summary) if summary else scope


def full_evaluation_line(
    model: nn.Module,
    loaders: Sequence,
    device: torch.device,
    dataset: str,
    slot_counts: Iterable[int],
    num_iters: int | None,
) -> str:
    """``do_evaluate`` over a whole dataset for each K, as one line.

    Args:
        model: the model in eval mode.
        loaders: evaluation loaders whose first is ``dataset``'s (``make_data_loader``).
        device: where the model is.
        dataset: the dataset's name.
        slot_counts: the K values, in order.
        num_iters: T (None or 0 = as trained).

    Returns:
        ``"do_evaluate on all <n> images of <dataset>: K=<k>: fg ARI <%>, ..."``.
    """
    from lib.engine.inference import do_evaluate

    parts = []
    for k in slot_counts:
        metrics = do_evaluate(model, loaders, device, k, num_iters)[dataset]
        parts.append(f"K={k}: fg ARI {format_percent(metrics['fg_ari'])}")
        count = metrics["num_images"]
    return f"do_evaluate on all {count} images of {dataset}: " + ", ".join(parts)


def curves(logdir: str, *, config_file: str, train_datasets: Sequence[str], dpi: int) -> Figure:
    """Training curves from the TensorBoard event files of a run.

    Args:
        logdir: folder of the event files.
        config_file: the config file, or "" for the defaults (named in the title).
        train_datasets: the run's training datasets (named in the title).
        dpi: figure resolution; the figure is ten inches wide, at least 400 px.

    Returns:
        The figure.

    Raises:
        RunError: no such folder, or no scalars in it.
    """
    if not os.path.isdir(logdir):
        raise RunError(f"no run folder {logdir} (train first, or pass --logdir)")
    scalars = read_scalars(logdir)
    if not scalars:
        raise RunError(f"no TensorBoard scalars in {logdir}")
    last = max(steps[-1] for steps, _ in scalars.values() if steps)
    title = (
        f"curves | config {config_file or '(defaults)'} | run {logdir} "
        f"(last logged iteration {last}) | training data {', '.join(train_datasets)}"
    )
    width = max(400, int(10 * dpi))
    return figures.curves_figure(scalars, title, dpi=dpi, size_px=(width, int(width * 0.72)))


def dataset(
    batch: ImageBatch, *, config_file: str, pairs_per_row: int, cell_px: int, dpi: int
) -> Figure:
    """Dataset images beside their coloured true masks (no model).

    Args:
        batch: the images (N, 3, H, W) and true masks (N, H, W) or None.
        config_file: the config file, or "" for the defaults (named in the title).
        pairs_per_row: image/mask pairs per row.
        cell_px, dpi: panel width in pixels, resolution.

    Returns:
        The figure.
    """
    title = f"dataset {batch.dataset} | config {config_file or '(defaults)'} | images "
    title += f"{batch.indices[0]}..{batch.indices[-1]} at "
    title += f"{batch.images.shape[-1]}x{batch.images.shape[-2]}"
    if batch.masks is None:
        title += " (no true masks)"
    return figures.dataset_figure(
        batch.images, batch.masks, title, batch.labels, pairs_per_row=pairs_per_row,
        cell_px=cell_px, dpi=dpi,
    )  # fmt: skip
