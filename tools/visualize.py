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

from matplotlib.figure import Figure
from yacs.config import CfgNode

from lib.analysis import run_figures
from lib.analysis.layout import auto_cell_px, save_figure
from lib.analysis.loading import ImageBatch, ModelInputs, figure_heading, load_model, take_images
from lib.analysis.traversal_inputs import RANGE_UNITS
from lib.cli import build_datasets, run_tool
from lib.config import load_cfg
from lib.errors import RunError


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _option_groups() -> dict[str, list[tuple[str, dict]]]:
    """Options by group: the shared ones (common, model, data, draw), then each subcommand's."""
    return {
        "common": [
            ("--config-file", dict(default="", metavar="FILE", help="YAML config file")),
            ("--out", dict(default="", metavar="FILE.png",
                           help="output PNG (default OUTPUT_DIR/figures/)")),
            ("--dpi", dict(type=int, default=100, help="resolution (pixels per inch)")),
            ("--cell-size", dict(type=int, default=0, help="panel width in pixels (default: a "
                                 "multiple of INPUT.IMAGE_SIZE near 96)")),
        ],
        "model": [("--weights", dict(default="", metavar="PATH", help="checkpoint (default "
                                     "MODEL.WEIGHT, else OUTPUT_DIR/last_checkpoint)"))],
        "data": [
            ("--dataset", dict(default="",
                               help="dataset name (default: the first of DATASETS.TEST)")),
            ("--index", dict(type=int, default=0, help="dataset index of the first image")),
        ],
        "draw": [("--background", dict(choices=("white", "black"), default="white",
                                       help="colour behind masked components"))],
        "decomposition": [
            ("--num-images", dict(type=int, default=4, help="images (rows)")),
            ("--steps", dict(action="store_true", help="add every step of the first image")),
        ],
        "refinement": [],
        "traversal": [
            ("--slot", dict(type=int, default=-1, help="slot to vary (default: the largest slot "
                            "that is not the background slot)")),
            ("--dims", dict(type=int, default=5, help="dimensions of largest KL to vary (rows)")),
            ("--range", dict(type=float, default=2.0, help="offsets from -RANGE to +RANGE")),
            ("--range-unit", dict(choices=RANGE_UNITS, default="absolute", help="unit of --range: "
                                  "absolute latent units (default), the dimension's posterior "
                                  "std, or the prior std")),
            ("--steps-per-dim", dict(type=int, default=7,
                                     help="offsets per dimension (columns)")),
            ("--show-component", dict(action="store_true",
                                      help="add the slot's masked component rows")),
        ],
        "generalisation": [
            ("--num-images", dict(type=int, default=4, help="images")),
            ("--num-slots", dict(type=int, default=0, help="K to compare (TEST.NUM_SLOTS)")),
            ("--full-eval", dict(action="store_true", help="also evaluate the whole dataset "
                                 "with do_evaluate for both K (slower)")),
        ],
        "curves": [("--logdir", dict(default="",
                                     help="folder of event files (default OUTPUT_DIR)"))],
        "dataset": [
            ("--num-images", dict(type=int, default=8, help="images")),
            ("--pairs-per-row", dict(type=int, default=4, help="image/mask pairs per row")),
        ],
    }  # fmt: skip


# Per subcommand, in --help order: its help text and the shared option groups it takes
# besides "common".
SUBCOMMANDS = (
    ("decomposition", "input, reconstruction, segmentation and slots of N images",
     "model data draw"),
    ("refinement", "one image's reconstruction and masks after each step", "model data"),
    ("traversal", "vary one slot's latent dimensions, others fixed", "model data draw"),
    ("generalisation", "K as trained vs K = --num-slots on scenes with more objects",
     "model data draw"),
    ("curves", "training curves from TensorBoard event files", ""),
    ("dataset", "dataset images beside their true masks", "data"),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``SUBCOMMAND --config-file CFG [options] [KEY VALUE ...]``.

    Returns:
        The parser; its namespace's ``command`` names the subcommand and ``opts`` holds the
        config overrides (``lib.cli.parse_tool_args`` collects them).
    """
    options = _option_groups()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, help_text, groups in SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        for group in ["common", *groups.split(), name]:
            for flag, kwargs in options[group]:
                p.add_argument(flag, **kwargs)
        p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
        p.set_defaults(command=name)
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
# Subcommands: (args = build_parser() namespace, cfg = build_cfg(args)) -> the figure
# ----------------------------------------------------------------------------------------------
def _images(cfg: CfgNode, start: int, count: int) -> ImageBatch:
    """Images ``start ..`` of the first DATASETS.TEST (a missing built-in one is generated)."""
    name = cfg.DATASETS.TEST[0]
    return take_images(build_datasets(cfg, [name], is_train=False)[name], name, start, count)


def _model_inputs(args: argparse.Namespace, cfg: CfgNode, count: int) -> ModelInputs:
    """The loaded model, ``count`` images from ``--index``, the heading, K and T at test time."""
    loaded = load_model(cfg)
    batch = _images(cfg, args.index, count)
    path, iteration = loaded.checkpoint, loaded.iteration
    heading = figure_heading(args.command, args.config_file, path, iteration, batch.dataset)
    return ModelInputs(loaded, batch, heading, cfg.TEST.NUM_SLOTS, cfg.TEST.NUM_ITERS)


def _panels(args: argparse.Namespace, cfg: CfgNode) -> dict:
    """Panel width and resolution, keywords of every panel figure."""
    return {"cell_px": args.cell_size or auto_cell_px(cfg.INPUT.IMAGE_SIZE), "dpi": args.dpi}


def cmd_decomposition(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``decomposition``: inputs, reconstructions, segmentations and slots."""
    inputs = _model_inputs(args, cfg, args.num_images)
    return run_figures.decomposition(
        inputs, steps=args.steps, background=args.background, **_panels(args, cfg)
    )


def cmd_refinement(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``refinement``: the image at ``--index`` after each refinement step."""
    return run_figures.refinement(_model_inputs(args, cfg, 1), **_panels(args, cfg))


def cmd_traversal(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``traversal``: one slot's latent dimensions varied, the others fixed."""
    return run_figures.traversal(
        _model_inputs(args, cfg, 1), slot=args.slot, num_dims=args.dims, value_range=args.range,
        steps_per_dim=args.steps_per_dim, unit=args.range_unit, show_component=args.show_component,
        background=args.background, **_panels(args, cfg),
    )  # fmt: skip


def cmd_generalisation(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``generalisation``: K as trained vs K = TEST.NUM_SLOTS."""
    if not cfg.TEST.NUM_SLOTS:
        raise RunError("generalisation needs more slots: pass --num-slots K or TEST.NUM_SLOTS K")
    inputs = _model_inputs(args, cfg, args.num_images)
    loaders = None
    if args.full_eval:
        from lib.data import make_data_loader

        loaders = make_data_loader(cfg, False)[:1]  # _images prepared a missing built-in dataset
    return run_figures.generalisation(
        inputs, full_eval_loaders=loaders, background=args.background, **_panels(args, cfg)
    )


def cmd_curves(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``curves``: the TensorBoard scalars of OUTPUT_DIR or ``--logdir``."""
    return run_figures.curves(
        args.logdir or cfg.OUTPUT_DIR, config_file=args.config_file,
        train_datasets=cfg.DATASETS.TRAIN, dpi=args.dpi,
    )  # fmt: skip


def cmd_dataset(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    """Figure of ``dataset``: dataset images beside their true masks (no model)."""
    return run_figures.dataset(
        _images(cfg, args.index, args.num_images), config_file=args.config_file,
        pairs_per_row=args.pairs_per_row, **_panels(args, cfg),
    )  # fmt: skip


COMMAND_FUNCTIONS = {
    "decomposition": cmd_decomposition,
    "refinement": cmd_refinement,
    "traversal": cmd_traversal,
    "generalisation": cmd_generalisation,
    "curves": cmd_curves,
    "dataset": cmd_dataset,
}


def run(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Draw the subcommand's figure, save it and say where it went."""
    fig = COMMAND_FUNCTIONS[args.command](args, cfg)
    path = args.out or os.path.join(cfg.OUTPUT_DIR, "figures", f"{args.command}.png")
    width, height = save_figure(fig, path)
    print(f"wrote {path} ({width}x{height} px)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with a one-line message on a known failure)."""
    return run_tool(argv, build_parser(), run, make_cfg=build_cfg)


if __name__ == "__main__":
    sys.exit(main())
