"""Figures of a trained IODINE model (PNG, matplotlib Agg).

    python tools/visualize.py SUBCOMMAND --config-file CFG [--weights PATH] [--out FILE.png]
        [options] [KEY VALUE ...]

Subcommands:
    decomposition   inputs, reconstructions, argmax segmentation, true masks and every slot
                    (mask above masked component) of --num-images test images; --steps adds
                    every refinement step of the first one as rows.
    refinement      one image (--index): reconstruction, segmentation and masks after each step
                    (columns), with MSE, ARI and foreground ARI per step on the panels.
    traversal       one image and slot: vary the slot's --dims latent dimensions of largest KL
                    at the final step (rows) over --steps-per-dim offsets (columns), while
                    every other slot keeps z = its final-step posterior mean; decoded with
                    model.decode. Offsets: linspace(-R, R) for --range R around the posterior
                    mean, in --range-unit: absolute latent units (default), the dimension's
                    posterior std, or the prior std. Default --slot: the slot of largest mask
                    area that is not the background slot, the background slot being the one
                    with the most mask mass on true background pixels (label 0), or the
                    largest slot when the image has no true mask.
    generalisation  decompositions with K as trained and K = --num-slots (TEST.NUM_SLOTS) on
                    --dataset; the title gives both foreground ARIs, computed directly on the
                    drawn images (--full-eval adds do_evaluate over the whole dataset).
    curves          training curves from the TensorBoard event files of OUTPUT_DIR.
    dataset         dataset images beside their coloured true masks (no model).

The checkpoint is --weights, else MODEL.WEIGHT, else the file named by
OUTPUT_DIR/last_checkpoint, as in tools/test_net.py. Images come from --dataset, else the
first of DATASETS.TEST. The model runs in eval mode (seeded noise: deterministic). The figure
goes to --out, default OUTPUT_DIR/figures/<subcommand>.png, written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from matplotlib.figure import Figure
from yacs.config import CfgNode

from lib.analysis import figures
from lib.analysis.layout import auto_cell_px, save_figure
from lib.analysis.scalars import read_scalars
from lib.analysis.scores import format_percent, segmentation_scores, step_metrics
from lib.analysis.traversal import (
    choose_traversal_slot,
    rank_latent_dims,
    traversal_offsets,
    traverse_slot,
)
from lib.cli import build_datasets, run_tool
from lib.config import load_cfg
from lib.engine.setup import RunError, resolve_device, seed_all
from lib.evaluation.ari import mean_ari

COMMANDS = ("decomposition", "refinement", "traversal", "generalisation", "curves", "dataset")
RANGE_UNITS = ("absolute", "posterior", "prior")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The parser of ``SUBCOMMAND --config-file CFG [options] [KEY VALUE ...]``.

    Returns:
        The parser; its namespace's ``command`` names the subcommand and ``opts`` holds the
        config overrides (``lib.cli.parse_tool_args`` collects them).
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
    common.add_argument(
        "--out", default="", metavar="FILE.png", help="output PNG (default OUTPUT_DIR/figures/)"
    )
    common.add_argument("--dpi", type=int, default=100, help="resolution (pixels per inch)")
    common.add_argument(
        "--cell-size",
        type=int,
        default=0,
        help="panel width in pixels (default: a multiple of INPUT.IMAGE_SIZE near 96)",
    )

    model_args = argparse.ArgumentParser(add_help=False)
    model_args.add_argument(
        "--weights",
        default="",
        metavar="PATH",
        help="checkpoint (default MODEL.WEIGHT, else OUTPUT_DIR/last_checkpoint)",
    )

    data_args = argparse.ArgumentParser(add_help=False)
    data_args.add_argument(
        "--dataset", default="", help="dataset name (default: the first of DATASETS.TEST)"
    )
    data_args.add_argument("--index", type=int, default=0, help="dataset index of the first image")

    draw_args = argparse.ArgumentParser(add_help=False)
    draw_args.add_argument(
        "--background",
        choices=("white", "black"),
        default="white",
        help="colour behind masked components",
    )

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def add(name, help_text, parents):
        return sub.add_parser(name, help=help_text, description=help_text, parents=parents)

    p = add(
        "decomposition",
        "input, reconstruction, segmentation and slots of N images",
        [common, model_args, data_args, draw_args],
    )
    p.add_argument("--num-images", type=int, default=4, help="images (rows)")
    p.add_argument("--steps", action="store_true", help="add every step of the first image")

    add(
        "refinement",
        "one image's reconstruction and masks after each step",
        [common, model_args, data_args],
    )

    p = add(
        "traversal",
        "vary one slot's latent dimensions, others fixed",
        [common, model_args, data_args, draw_args],
    )
    p.add_argument(
        "--slot",
        type=int,
        default=-1,
        help="slot to vary (default: the largest slot that is not the background slot)",
    )
    p.add_argument("--dims", type=int, default=5, help="dimensions of largest KL to vary (rows)")
    p.add_argument("--range", type=float, default=2.0, help="offsets from -RANGE to +RANGE")
    p.add_argument(
        "--range-unit",
        choices=RANGE_UNITS,
        default="absolute",
        help="unit of --range: absolute latent units (default), the dimension's posterior "
        "std, or the prior std",
    )
    p.add_argument("--steps-per-dim", type=int, default=7, help="offsets per dimension (columns)")
    p.add_argument(
        "--show-component", action="store_true", help="add the slot's masked component rows"
    )

    p = add(
        "generalisation",
        "K as trained vs K = --num-slots on scenes with more objects",
        [common, model_args, data_args, draw_args],
    )
    p.add_argument("--num-images", type=int, default=4, help="images")
    p.add_argument("--num-slots", type=int, default=0, help="K to compare (TEST.NUM_SLOTS)")
    p.add_argument(
        "--full-eval",
        action="store_true",
        help="also evaluate the whole dataset with do_evaluate for both K (slower)",
    )

    p = add("curves", "training curves from TensorBoard event files", [common])
    p.add_argument("--logdir", default="", help="folder of event files (default OUTPUT_DIR)")

    p = add("dataset", "dataset images beside their true masks", [common, data_args])
    p.add_argument("--num-images", type=int, default=8, help="images")
    p.add_argument("--pairs-per-row", type=int, default=4, help="image/mask pairs per row")

    for name, subparser in sub.choices.items():
        subparser.add_argument(
            "opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
        )
        subparser.set_defaults(command=name)
    return parser


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """The config: file, then the trailing overrides, then the options that set keys.

    ``--weights`` sets MODEL.WEIGHT, ``--dataset`` DATASETS.TEST and ``--num-slots``
    TEST.NUM_SLOTS (given after the trailing overrides, so they win).

    Args:
        args: ``build_parser()`` namespace.

    Returns:
        The frozen config.
    """
    opts = list(args.opts)
    if getattr(args, "weights", ""):
        opts += ["MODEL.WEIGHT", args.weights]
    if getattr(args, "dataset", ""):
        opts += ["DATASETS.TEST", args.dataset]
    if getattr(args, "num_slots", 0):
        opts += ["TEST.NUM_SLOTS", str(args.num_slots)]
    return load_cfg(args.config_file or None, opts)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def load_model_weights(cfg: CfgNode, model: torch.nn.Module) -> tuple[str, int | None]:
    """Load MODEL.WEIGHT (``--weights``), else the file named by OUTPUT_DIR/last_checkpoint.

    The one place this tool reads a checkpoint: the shared tools layer does the work.

    Args:
        cfg: the config.
        model: the built model.

    Returns:
        ``(checkpoint path, its iteration or None)``.

    Raises:
        RunError: no checkpoint to load ("nothing to draw").
        CheckpointError: unreadable or mismatched checkpoint.
    """
    from lib.engine.setup import load_weights

    return load_weights(cfg, model, purpose="draw")


def load_model(cfg: CfgNode) -> tuple[torch.nn.Module, str, int | None, torch.device]:
    """Build the model on MODEL.DEVICE and load its weights (``load_model_weights``).

    Args:
        cfg: the config.

    Returns:
        ``(model in eval mode, checkpoint path, its iteration or None, device)``.

    Raises:
        RunError: no checkpoint to load.
        CheckpointError: unreadable or mismatched checkpoint.
    """
    from lib.model import build_model

    device = resolve_device(cfg.MODEL.DEVICE)
    seed_all(cfg.SEED)
    model = build_model(cfg).to(device)
    path, iteration = load_model_weights(cfg, model)
    model.eval()
    return model, path, iteration, device


def load_images(
    cfg: CfgNode, start: int, count: int
) -> tuple[str, torch.Tensor, torch.Tensor | None, list[int]]:
    """Images ``start .. start+count-1`` (clipped to the dataset) of the first DATASETS.TEST.

    Args:
        cfg: the config.
        start: first dataset index.
        count: number of images.

    Returns:
        ``(dataset name, images (N, 3, S, S), masks (N, S, S) or None, indices)``.

    Raises:
        RunError: the dataset cannot be built or ``start`` is out of range.
    """
    from lib.data import collate

    name = cfg.DATASETS.TEST[0]
    dataset = build_datasets(cfg, [name], is_train=False)[name]
    if not 0 <= start < len(dataset):
        raise RunError(f"--index {start} is out of range: {name} has {len(dataset)} images")
    indices = list(range(start, min(start + max(count, 1), len(dataset))))
    images, masks = collate([dataset[i] for i in indices])
    return name, images, masks, indices


def run_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    device: torch.device,
    num_slots: int | None,
    num_iters: int | None = None,
) -> dict[str, torch.Tensor]:
    """Eval-mode forward pass (no_grad, not inference_mode: the model needs autograd inside).

    Args:
        model: the model, in eval mode.
        images: (N, 3, H, W) inputs.
        device: where the model is.
        num_slots: K (None or 0 = as trained).
        num_iters: T (None or 0 = as trained).

    Returns:
        The model's output dict with every tensor on the CPU.
    """
    with torch.no_grad():
        out = model(images.to(device), num_slots=num_slots or None, num_iters=num_iters or None)
    return {k: v.detach().float().cpu() for k, v in out.items() if torch.is_tensor(v)}


def describe(
    args: argparse.Namespace, checkpoint: str | None, iteration: int | None, dataset: str
) -> str:
    """The first title line of a figure.

    Args:
        args: ``build_parser()`` namespace (subcommand, config file).
        checkpoint: the loaded checkpoint's path, or None.
        iteration: its training iteration.
        dataset: the dataset drawn.

    Returns:
        ``"<subcommand> | config <file> | checkpoint <name> (iteration <n>) | dataset <name>"``.
    """
    parts = [args.command, f"config {args.config_file or '(defaults)'}"]
    if checkpoint is not None:
        parts.append(f"checkpoint {os.path.basename(checkpoint)} (iteration {iteration})")
    if dataset:
        parts.append(f"dataset {dataset}")
    return " | ".join(parts)


def _labels(indices: list[int]) -> list[str]:
    return [f"#{i}" for i in indices]


# ----------------------------------------------------------------------------------------------
# Subcommands: each returns the figure
# ----------------------------------------------------------------------------------------------
def cmd_decomposition(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``decomposition``.

    Args:
        args: ``build_parser()`` namespace.
        cfg: ``build_cfg(args)``.

    Returns:
        The figure (not yet saved).
    """
    model, path, iteration, device = load_model(cfg)
    name, images, masks, indices = load_images(cfg, args.index, args.num_images)
    out = run_model(model, images, device, cfg.TEST.NUM_SLOTS, cfg.TEST.NUM_ITERS)
    k, t = out["masks"].shape[2], out["masks"].shape[1] - 1
    title = f"{describe(args, path, iteration, name)}\nK={k} slots, T={t} steps; ARI in %"
    if masks is None:
        title += " (no true masks: ARI not computed)"
    return figures.decomposition_figure(
        images, out["masks"], out["recon"], out["components"], masks, title, _labels(indices),
        steps_for=0 if args.steps else None, background=args.background,
        cell_px=_cell(args, cfg), dpi=args.dpi,
    )  # fmt: skip


def cmd_refinement(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``refinement``.

    Args:
        args: ``build_parser()`` namespace.
        cfg: ``build_cfg(args)``.

    Returns:
        The figure (not yet saved).
    """
    model, path, iteration, device = load_model(cfg)
    name, images, masks, indices = load_images(cfg, args.index, 1)
    out = run_model(model, images, device, cfg.TEST.NUM_SLOTS, cfg.TEST.NUM_ITERS)
    metrics = step_metrics(images[0], out["masks"][0], out["recon"][0], _first(masks))
    title = (
        f"{describe(args, path, iteration, name)}\nimage #{indices[0]}: "
        f"MSE {metrics['mse'][0]:.4f} -> {metrics['mse'][-1]:.4f}"
    )
    if masks is not None:
        title += (
            f", fg ARI {format_percent(metrics['fg_ari'][0])} -> "
            f"{format_percent(metrics['fg_ari'][-1])} (%)"
        )
    return figures.refinement_figure(
        images[0], out["masks"][0], out["recon"][0], _first(masks), title,
        cell_px=_cell(args, cfg), dpi=args.dpi,
    )  # fmt: skip


def _cell(args, cfg) -> int:
    return args.cell_size or auto_cell_px(cfg.INPUT.IMAGE_SIZE)


def _first(masks):
    return None if masks is None else masks[0]


def cmd_traversal(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``traversal`` (final-step posterior means, one slot varied).

    Args:
        args: ``build_parser()`` namespace.
        cfg: ``build_cfg(args)``.

    Returns:
        The figure (not yet saved).
    """
    model, path, iteration, device = load_model(cfg)
    name, images, masks, indices = load_images(cfg, args.index, 1)
    out = run_model(model, images, device, cfg.TEST.NUM_SLOTS, cfg.TEST.NUM_ITERS)
    loc, scale = out["posterior_loc"][0, -1], out["posterior_scale"][0, -1]  # (K, D)
    k = loc.shape[0]
    slot = (
        args.slot if args.slot >= 0 else choose_traversal_slot(out["masks"][0, -1], _first(masks))
    )
    if not 0 <= slot < k:
        raise RunError(f"--slot {slot} is out of range: the model has K={k} slots")
    with torch.no_grad():
        kl = model.latent_kl(loc.to(device), scale.to(device))[slot].float().cpu()  # (D,)
    dims = rank_latent_dims(kl, args.dims)
    offsets = traversal_offsets(args.range, args.steps_per_dim)
    unit = {
        "absolute": None,
        "posterior": scale[slot],
        "prior": torch.full_like(scale[slot], float(model.prior_scale)),
    }[args.range_unit]
    height, width = images.shape[-2:]
    traversal = traverse_slot(
        model, loc.to(device), slot, dims, offsets, height, width,
        None if unit is None else unit.to(device),
    )  # fmt: skip
    traversal = _to_cpu(traversal)
    unit_name = {
        "absolute": "absolute latent units",
        "posterior": "posterior std of each dimension",
        "prior": f"prior std ({float(model.prior_scale):.3f})",
    }[args.range_unit]
    title = (
        f"{describe(args, path, iteration, name)}\nimage #{indices[0]}, final step; rows = the "
        f"{len(dims)} dimensions of largest KL of slot {slot}"
    )
    return figures.traversal_figure(
        images[0], traversal, slot, dims, kl, offsets, unit_name, title,
        show_component=args.show_component, background=args.background,
        cell_px=_cell(args, cfg), dpi=args.dpi,
    )  # fmt: skip


def _to_cpu(value):
    if torch.is_tensor(value):
        return value.detach().float().cpu()
    return {k: _to_cpu(v) for k, v in value.items()}


def cmd_generalisation(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``generalisation``: K as trained vs K = TEST.NUM_SLOTS.

    Args:
        args: ``build_parser()`` namespace.
        cfg: ``build_cfg(args)``.

    Returns:
        The figure (not yet saved).
    """
    if not cfg.TEST.NUM_SLOTS:
        raise RunError("generalisation needs more slots: pass --num-slots K or TEST.NUM_SLOTS K")
    model, path, iteration, device = load_model(cfg)
    name, images, masks, indices = load_images(cfg, args.index, args.num_images)
    k_trained, k_given = model.num_slots, cfg.TEST.NUM_SLOTS
    runs, summary = [], []
    for k in (k_trained, k_given):
        out = run_model(model, images, device, k, cfg.TEST.NUM_ITERS)
        final = {key: out[key][:, -1] for key in ("masks", "recon", "components")}
        tag = f"K={k} (as trained)" if k == k_trained else f"K={k}"
        runs.append((tag, final))
        if masks is not None:
            _, fg = segmentation_scores(masks, final["masks"])
            summary.append(f"{tag}: fg ARI {format_percent(mean_ari(fg))}")
    scope = f"fg ARI (%) computed directly on these {images.shape[0]} images"
    if masks is None:
        scope = "no true masks: ARI not computed"
    line = f"{scope}: " + ", ".join(summary) if summary else scope
    if args.full_eval:
        line += "\n" + _full_eval(cfg, model, device, name, k_trained, k_given)
    title = f"{describe(args, path, iteration, name)}\n{line}"
    return figures.generalisation_figure(
        images, runs, masks, title, _labels(indices), background=args.background,
        cell_px=_cell(args, cfg), dpi=args.dpi,
    )  # fmt: skip


def _full_eval(cfg, model, device, name, k_trained, k_given) -> str:
    """do_evaluate on the whole dataset for both K; one summary line."""
    from lib.data import make_data_loader
    from lib.engine.inference import do_evaluate

    build_datasets(cfg, [name], is_train=False)  # prepares a missing built-in dataset
    try:
        loaders = make_data_loader(cfg, False)[:1]
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise RunError(f"dataset {name}: {exc}") from exc
    parts = []
    for k in (k_trained, k_given):
        metrics = do_evaluate(model, loaders, device, k, cfg.TEST.NUM_ITERS)[name]
        parts.append(f"K={k}: fg ARI {format_percent(metrics['fg_ari'])}")
        count = metrics["num_images"]
    return f"do_evaluate on all {count} images of {name}: " + ", ".join(parts)


def cmd_curves(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``curves`` (TensorBoard scalars of OUTPUT_DIR or --logdir).

    Args:
        args: ``build_parser()`` namespace.
        cfg: ``build_cfg(args)``.

    Returns:
        The figure (not yet saved).
    """
    logdir = args.logdir or cfg.OUTPUT_DIR
    if not os.path.isdir(logdir):
        raise RunError(f"no run folder {logdir} (train first, or pass --logdir)")
    scalars = read_scalars(logdir)
    if not scalars:
        raise RunError(f"no TensorBoard scalars in {logdir}")
    last = max(steps[-1] for steps, _ in scalars.values() if steps)
    dataset = ", ".join(cfg.DATASETS.TRAIN)
    title = (
        f"curves | config {args.config_file or '(defaults)'} | run {logdir} "
        f"(last logged iteration {last}) | training data {dataset}"
    )
    width = max(400, int(10 * args.dpi))
    return figures.curves_figure(scalars, title, dpi=args.dpi, size_px=(width, int(width * 0.72)))


def cmd_dataset(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``dataset`` (no model).

    Args:
        args: ``build_parser()`` namespace.
        cfg: ``build_cfg(args)``.

    Returns:
        The figure (not yet saved).
    """
    name, images, masks, indices = load_images(cfg, args.index, args.num_images)
    title = f"dataset {name} | config {args.config_file or '(defaults)'} | images {indices[0]}"
    title += f"..{indices[-1]} at {images.shape[-1]}x{images.shape[-2]}"
    if masks is None:
        title += " (no true masks)"
    return figures.dataset_figure(
        images, masks, title, _labels(indices), pairs_per_row=args.pairs_per_row,
        cell_px=_cell(args, cfg), dpi=args.dpi,
    )  # fmt: skip


COMMAND_FUNCTIONS = {
    "decomposition": cmd_decomposition,
    "refinement": cmd_refinement,
    "traversal": cmd_traversal,
    "generalisation": cmd_generalisation,
    "curves": cmd_curves,
    "dataset": cmd_dataset,
}


def draw(args: argparse.Namespace, cfg: CfgNode) -> tuple[str, tuple[int, int]]:
    """Draw and save the figure of one subcommand.

    Args:
        args: ``build_parser()`` namespace.
        cfg: ``build_cfg(args)``.

    Returns:
        ``(path of the PNG, (width, height) in pixels)``.
    """
    fig = COMMAND_FUNCTIONS[args.command](args, cfg)
    out = args.out or os.path.join(cfg.OUTPUT_DIR, "figures", f"{args.command}.png")
    size = save_figure(fig, out)
    return out, size


def run(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Draw the subcommand's figure and say where it went."""
    path, (width, height) = draw(args, cfg)
    print(f"wrote {path} ({width}x{height} px)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with a one-line message on a known failure)."""
    return run_tool(argv, build_parser(), run, make_cfg=build_cfg)


if __name__ == "__main__":
    sys.exit(main())
