"""The figures of ``tools/visualize.py``, their panels, numbers and titles, built from tensors.

Model outputs are ``lib.analysis.loading.run_model``'s: ``masks`` (N, T+1, K, H, W), ``recon``
(N, T+1, 3, H, W), ``components`` (N, T+1, K, 3, H, W). ARIs (``lib.evaluation``) are
fractions, printed as percentages. ``lib.analysis.layout.save_figure`` writes a figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from lib.analysis.layout import PANEL_FONT_PT, TITLE_FONT_PT, Panel, render_panels
from lib.analysis.loading import ImageBatch
from lib.analysis.traversal import TraversalInputs
from lib.errors import RunError
from lib.evaluation.ari import adjusted_rand_index, mean_ari
from lib.utils.palette import colorize_labels, masked_components, slot_tile


def format_percent(value: float | None, decimals: int = 1) -> str:
    """A fraction as a percentage without the sign (``"97.3"`` for 0.973); ``"n/a"`` for None
    or NaN."""
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{100.0 * float(value):.{decimals}f}"


def _aris(true_mask: Tensor, masks: Tensor) -> list[tuple[float, float]]:
    """(ARI, fg ARI) of the argmax slot of each of masks (B, K, H, W) against one true label map
    (H, W); fg ARI is NaN without foreground."""
    pred = masks.argmax(dim=1)
    true = true_mask.expand_as(pred)
    ari = adjusted_rand_index(true, pred).tolist()
    return list(zip(ari, adjusted_rand_index(true, pred, ignore_background=True).tolist()))


def _ari_text(ari: float, fg_ari: float) -> str:
    return f"\nARI {format_percent(ari)}\nfg ARI {format_percent(fg_ari)}"


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
    width: int = 0,
) -> list[Panel | None]:
    """Input | recon | argmax | truth | slot 0..K-1 of one image at one step, padded with empty
    cells to ``width``: image (3, H, W), recon (3, H, W), masks (K, H, W), components
    (K, 3, H, W), true_mask (H, W) or None."""
    mse = float(((recon - image) ** 2).mean())
    seg_label = f"{prefix}argmax slot"
    if true_mask is not None:
        seg_label += _ari_text(*_aris(true_mask, masks[None])[0])
    row: list[Panel | None] = [
        Panel(image, "input"),
        Panel(recon, f"{prefix}recon\nMSE {mse:.4f}"),
        Panel(colorize_labels(masks.argmax(dim=0)), seg_label),
    ]
    if true_mask is not None:
        objects = f"true masks\n{_object_count(true_mask)} objects"
        row.append(Panel(colorize_labels(true_mask), objects))
    shown = masked_components(masks, components, background)
    area = masks.mean(dim=(1, 2))
    for k in range(masks.shape[0]):
        label = f"slot {k} ({100 * float(area[k]):.0f}%)\nmask / m*mu"
        row.append(Panel(slot_tile(masks[k], shown[k]), label))
    return row + [None] * (width - len(row))


def decomposition_figure(
    batch: ImageBatch,
    out: dict[str, Tensor],
    heading: str,
    *,
    steps: bool = False,
    background: str = "white",
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """One row per image at the final step, and with ``steps`` one per step of the first image.

    Columns: input, reconstruction (MSE), argmax slot (ARI and fg ARI with true masks), the
    true label map (when there is one), then per slot its mask above its masked component.

    Args:
        batch: the N images, their true masks or None, their indices.
        out: the forward pass of ``batch.images``.
        heading: the first title line.
        steps: add a row per refinement step t = 0..T of the first image.
        background: "white" or "black" behind masked components.
        cell_px, dpi: panel width in pixels, resolution.
    """
    masks, recon, comps = out["masks"], out["recon"], out["components"]
    title = f"{heading}\nK={masks.shape[2]} slots, T={masks.shape[1] - 1} steps; ARI in %"
    if batch.masks is None:
        title += " (no true masks: ARI not computed)"
    rows, labels = [], []
    for i, label in enumerate(batch.labels):
        args = (recon[i, -1], masks[i, -1], comps[i, -1], batch.mask(i), background)
        rows.append(_decomposition_row(batch.images[i], *args))
        labels.append(f"{label}\nfinal step")
    for t in range(masks.shape[1] if steps else 0):
        args = (recon[0, t], masks[0, t], comps[0, t], batch.mask(0), background, f"t={t} ")
        rows.append(_decomposition_row(batch.images[0], *args))
        labels.append(f"{batch.labels[0]}\nstep t={t}")
    return render_panels(rows, title, labels, cell_px, dpi)


def refinement_figure(
    batch: ImageBatch, out: dict[str, Tensor], heading: str, *, cell_px: int = 96, dpi: int = 100
) -> Figure:
    """The first image's reconstruction, argmax slot and masks after each refinement step.

    Column 0 holds the input and the true label map, columns 1..T+1 the steps t = 0..T. Rows:
    reconstruction (MSE), argmax slot (ARI and fg ARI with a true mask), each slot's mask. The
    title gives the MSE (and fg ARI) at the first and the last step.

    Args:
        batch, out, heading, cell_px, dpi: as for ``decomposition_figure``.
    """
    image, masks, recon, true = batch.images[0], out["masks"][0], out["recon"][0], batch.mask(0)
    steps, k = masks.shape[:2]
    mse = ((recon - image) ** 2).mean(dim=(1, 2, 3)).tolist()
    title = f"{heading}\nimage #{batch.indices[0]}: MSE {mse[0]:.4f} -> {mse[-1]:.4f}"
    aris = [""] * steps
    if true is not None:
        scores = _aris(true, masks)
        aris = [_ari_text(*score) for score in scores]
        fg = format_percent(scores[0][1]), format_percent(scores[-1][1])
        title += f", fg ARI {fg[0]} -> {fg[1]} (%)"
    rows: list[list[Panel | None]] = [[Panel(image, "input")]]
    rows.append([None if true is None else Panel(colorize_labels(true), "true masks")])
    rows += [[None] for _ in range(k)]
    for t in range(steps):
        rows[0].append(Panel(recon[t], f"t={t} recon\nMSE {mse[t]:.4f}"))
        rows[1].append(Panel(colorize_labels(masks[t].argmax(dim=0)), f"t={t} argmax{aris[t]}"))
        for j in range(k):
            area = 100 * float(masks[t, j].mean())
            rows[2 + j].append(Panel(masks[t, j], f"t={t} mask {j}\narea {area:.0f}%"))
    labels = ["reconstruction", "segmentation", *[f"slot {j} mask" for j in range(k)]]
    return render_panels(rows, title, labels, cell_px, dpi)


def traversal_figure(
    batch: ImageBatch,
    drawn: TraversalInputs,
    heading: str,
    *,
    show_component: bool = False,
    background: str = "white",
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Latent traversal of one slot of the first image: a reference row (input, reconstruction
    at z = loc, the slot's mask and masked component), then per varied dimension the
    reconstruction at each offset, and with ``show_component`` the slot's masked component.

    Args:
        batch: the image (the first).
        drawn: ``lib.analysis.traversal.traversal_inputs`` of that image.
        heading, background, cell_px, dpi: as for ``decomposition_figure``.
        show_component: add the slot's masked component row under each dimension.
    """
    slot, base, trav = drawn.slot, drawn.traversal["base"], drawn.traversal
    shown = masked_components(base["masks"], base["components"], background)
    rows: list[list[Panel | None]] = [
        [
            Panel(batch.images[0], "input"),
            Panel(base["recon"], "recon\n(z = posterior mean)"),
            Panel(base["masks"][slot], f"slot {slot} mask"),
            Panel(shown[slot], f"slot {slot} m*mu"),
        ]
    ]
    labels = ["reference"]
    for i, dim in enumerate(drawn.dims):
        one = slice(slot, slot + 1)
        comps = masked_components(
            trav["masks"][i, :, one], trav["components"][i, :, one], background
        )
        texts = [f"z{dim} {float(offset):+.2f}" for offset in drawn.offsets]
        rows.append([Panel(trav["recon"][i, j], f"{text}\nrecon") for j, text in enumerate(texts)])
        labels.append(f"dim {dim}\nKL {float(drawn.kl[dim]):.2f}")
        if show_component:
            rows.append([Panel(c[0], f"{text}\nslot {slot} m*mu") for c, text in zip(comps, texts)])
            labels.append(f"dim {dim}\nslot {slot}")
    title = (
        f"{heading}\nimage #{batch.indices[0]}, final step; rows = the {len(drawn.dims)} "
        f"dimensions of largest KL of slot {slot}\nslot {slot}, offsets in {drawn.unit_name} "
        "around the posterior mean"
    )
    return render_panels(rows, title, labels, cell_px, dpi)


def generalisation_figure(
    batch: ImageBatch,
    runs: Sequence[tuple[int, dict[str, Tensor]]],
    trained_slots: int,
    heading: str,
    *,
    eval_line: str = "",
    background: str = "white",
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Final-step decompositions of the same images with several K, a row per image and K; the
    title gives each K's mean foreground ARI over these images.

    Args:
        batch, heading, background, cell_px, dpi: as for ``decomposition_figure``.
        runs: ``(K, forward pass of batch.images with K slots)`` pairs, in order.
        trained_slots: K as trained (its rows are tagged so).
        eval_line: a last title line (``full_evaluation_line``), or "".
    """
    width = 3 + (batch.masks is not None) + max(out["masks"].shape[2] for _, out in runs)
    tags = [f"K={k} (as trained)" if k == trained_slots else f"K={k}" for k, _ in runs]
    line = "no true masks: ARI not computed"
    if batch.masks is not None:
        scores = []
        for tag, (_, out) in zip(tags, runs):
            fg = adjusted_rand_index(
                batch.masks, out["masks"][:, -1].argmax(1), ignore_background=True
            )
            scores.append(f"{tag}: fg ARI {format_percent(mean_ari(fg))}")
        line = f"fg ARI (%) computed directly on these {len(batch.indices)} images: "
        line += ", ".join(scores)
    rows, labels = [], []
    for i, label in enumerate(batch.labels):
        for tag, (_, out) in zip(tags, runs):
            final = [out[key][i, -1] for key in ("recon", "masks", "components")]
            row = _decomposition_row(batch.images[i], *final, batch.mask(i), background, "", width)
            rows.append(row)
            labels.append(f"{label}\n{tag}")
    title = f"{heading}\n{line}" + (f"\n{eval_line}" if eval_line else "")
    return render_panels(rows, title, labels, cell_px, dpi)


def full_evaluation_line(
    model: nn.Module,
    loaders: Sequence,
    device: torch.device,
    dataset: str,
    slot_counts: Iterable[int],
    num_iters: int | None,
) -> str:
    """``"do_evaluate on all <n> images of <dataset>: K=<k>: fg ARI <%>, ..."``: ``do_evaluate``
    on ``loaders`` (the first is ``dataset``'s) once per K of ``slot_counts``, T ``num_iters``."""
    from lib.engine.inference import do_evaluate

    parts = []
    for k in slot_counts:
        metrics = do_evaluate(model, loaders, device, k, num_iters)[dataset]
        parts.append(f"K={k}: fg ARI {format_percent(metrics['fg_ari'])}")
    return f"do_evaluate on all {metrics['num_images']} images of {dataset}: " + ", ".join(parts)


def dataset_figure(
    batch: ImageBatch,
    *,
    config_file: str,
    pairs_per_row: int = 4,
    cell_px: int = 96,
    dpi: int = 100,
) -> Figure:
    """Dataset images beside their coloured true label maps, ``pairs_per_row`` to a row.

    Args:
        batch: the images and their true masks or None (images only).
        config_file: the config file, or "" for the defaults (named in the title).
        pairs_per_row, cell_px, dpi: examples per row, panel width in pixels, resolution.
    """
    height, width = batch.images.shape[-2:]
    title = (
        f"dataset {batch.dataset} | config {config_file or '(defaults)'} | images "
        f"{batch.indices[0]}..{batch.indices[-1]} at {width}x{height}"
    )
    if batch.masks is None:
        title += " (no true masks)"
    pairs_per_row, rows = max(1, pairs_per_row), []
    for start in range(0, len(batch.indices), pairs_per_row):
        row = []
        for i in range(start, min(start + pairs_per_row, len(batch.indices))):
            row.append(Panel(batch.images[i], f"{batch.labels[i]}\nimage"))
            if batch.masks is not None:
                text = f"{batch.labels[i]}\n{_object_count(batch.masks[i])} objects"
                row.append(Panel(colorize_labels(batch.masks[i]), text))
        rows.append(row)
    return render_panels(rows, title, None, cell_px, dpi)


def read_scalars(logdir: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{tag: (steps, values)}``, steps increasing, of the TensorBoard event files in ``logdir``.

    A resumed run adds event files; a step logged twice keeps its latest value.
    """
    # Imported here: tensorboard's event reader is slow to import and only this needs it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logdir, size_guidance={"scalars": 0})
    accumulator.Reload()
    out = {}
    for tag in accumulator.Tags().get("scalars", []):
        latest: dict[int, tuple[float, float]] = {}
        for event in accumulator.Scalars(tag):
            if event.step not in latest or event.wall_time >= latest[event.step][0]:
                latest[event.step] = (event.wall_time, float(event.value))
        steps = sorted(latest)
        out[tag] = (steps, [latest[s][1] for s in steps])
    return out


def curves_figure(
    logdir: str, *, config_file: str, train_datasets: Sequence[str], dpi: int = 100
) -> Figure:
    """Training curves against iteration from the event files of ``lib/engine/trainer.py``.

    Four panels: total loss (``loss/total``); foreground ARI and ARI of the periodic evaluation
    (``eval/<dataset>/fg_ari`` and ``.../ari`` of the first dataset, sorted; older runs
    ``eval/fg_ari``); NLL and KL per refinement step (``loss/nll_t<t>``, ``loss/kl_t<t>``).
    A panel whose tags are absent says so.

    Args:
        logdir: folder of the event files.
        config_file: the config file, or "" for the defaults; named in the title with the
            ``train_datasets``.
        dpi: resolution; the figure is ten inches wide, at least 400 px, and 0.72 as tall.

    Raises:
        RunError: no such folder, or no scalars in it.
    """
    if not os.path.isdir(logdir):
        raise RunError(f"no run folder {logdir} (train first, or pass --logdir)")
    scalars = read_scalars(logdir)
    if not scalars:
        raise RunError(f"no TensorBoard scalars in {logdir}")
    last = max(steps[-1] for steps, _ in scalars.values() if steps)
    width = max(400, int(10 * dpi))
    fig = Figure(figsize=(width / dpi, int(width * 0.72) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.suptitle(
        f"curves | config {config_file or '(defaults)'} | run {logdir} (last logged iteration "
        f"{last}) | training data {', '.join(train_datasets)}",
        fontsize=TITLE_FONT_PT + 1,
    )
    evals = [t[5:-7] for t in scalars if t.startswith("eval/") and t.endswith("/fg_ari")]
    name = min(evals, default="")  # the first dataset; "" for older runs' "eval/fg_ari"
    ev = f"eval/{name}/" if name else "eval/"

    def per_step(prefix: str) -> list[tuple[str, str]]:
        steps = [t[len(prefix) :] for t in scalars if t.startswith(prefix)]
        return [
            (f"{prefix}{t}", f"t={int(t)}") for t in sorted(filter(str.isdigit, steps), key=int)
        ]

    # (panel title, y label, tag named when nothing is logged, [(tag, legend label)])
    panels = [
        ("total loss", "loss", "loss/total", [("loss/total", "loss/total")]),
        ("evaluation ARI" + (f" ({name})" if name else ""), "ARI", f"{ev}fg_ari",
         [(f"{ev}fg_ari", "fg ARI"), (f"{ev}ari", "ARI")]),
        ("NLL per refinement step", "NLL (nats)", "loss/nll_t<t>", per_step("loss/nll_t")),
        ("KL per refinement step", "KL (nats)", "loss/kl_t<t>", per_step("loss/kl_t")),
    ]  # fmt: skip
    for ax, (name, ylabel, wanted, series) in zip(fig.subplots(2, 2).flat, panels):
        ax.set_title(name, fontsize=PANEL_FONT_PT + 2)
        ax.set_xlabel("iteration", fontsize=PANEL_FONT_PT + 1)
        ax.set_ylabel(ylabel, fontsize=PANEL_FONT_PT + 1)
        ax.tick_params(labelsize=PANEL_FONT_PT)
        series = [
            (scalars[tag], label) for tag, label in series if tag in scalars and scalars[tag][0]
        ]
        for (steps, values), label in series:
            marker = "." if len(steps) < 30 else None
            ax.plot(steps, values, label=label, linewidth=1.2, marker=marker)
        if series:
            ax.legend(fontsize=PANEL_FONT_PT, loc="best")
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, f"no data\n(tag {wanted} not logged)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=PANEL_FONT_PT + 1)  # fmt: skip
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.86, hspace=0.45, wspace=0.25)
    return fig
