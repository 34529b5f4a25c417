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

from lib.analysis import figures
from lib.analysis.layout import auto_cell_px, save_figure
from lib.analysis.loading import ImageBatch, figure_heading, load_model, run_model, take_images
from lib.analysis.traversal import RANGE_UNITS, traversal_inputs
from lib.cli import build_datasets, run_tool
from lib.config import load_cfg
from lib.errors import RunError


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``SUBCOMMAND --config-file CFG [options] [KEY VALUE ...]``: ``command``
    names the subcommand, ``opts`` holds the config overrides."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    # fmt: off
    def command(name: str, help_text: str, groups: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(command=name)
        p.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
        p.add_argument("--out", default="", metavar="FILE.png",
                       help="output PNG (default OUTPUT_DIR/figures/)")
        p.add_argument("--dpi", type=int, default=100, help="resolution (pixels per inch)")
        p.add_argument("--cell-size", type=int, default=0, help="panel width in pixels "
                       "(default: a multiple of INPUT.IMAGE_SIZE near 96)")
        if "model" in groups:
            p.add_argument("--weights", default="", metavar="PATH", help="checkpoint (default "
                           "MODEL.WEIGHT, else OUTPUT_DIR/last_checkpoint)")
        if "data" in groups:
            p.add_argument("--dataset", default="",
                           help="dataset name (default: the first of DATASETS.TEST)")
            p.add_argument("--index", type=int, default=0, help="dataset index of the first image")
        if "draw" in groups:
            p.add_argument("--background", choices=("white", "black"), default="white",
                           help="colour behind masked components")
        return p

    p = command("decomposition", "input, reconstruction, segmentation and slots of N images",
                "model data draw")
    p.add_argument("--num-images", type=int, default=4, help="images (rows)")
    p.add_argument("--steps", action="store_true", help="add every step of the first image")
    command("refinement", "one image's reconstruction and masks after each step", "model data")
    p = command("traversal", "vary one slot's latent dimensions, others fixed", "model data draw")
    p.add_argument("--slot", type=int, default=-1, help="slot to vary (default: the largest "
                   "slot that is not the background slot)")
    p.add_argument("--dims", type=int, default=5, help="dimensions of largest KL to vary (rows)")
    p.add_argument("--range", type=float, default=2.0, help="offsets from -RANGE to +RANGE")
    p.add_argument("--range-unit", choices=RANGE_UNITS, default="absolute", help="unit of "
                   "--range: absolute latent units (default), the dimension's posterior std, "
                   "or the prior std")
    p.add_argument("--steps-per-dim", type=int, default=7, help="offsets per dimension (columns)")
    p.add_argument("--show-component", action="store_true",
                   help="add the slot's masked component rows")
    p = command("generalisation", "K as trained vs K = --num-slots on scenes with more objects",
                "model data draw")
    p.add_argument("--num-images", type=int, default=4, help="images")
    p.add_argument("--num-slots", type=int, default=0, help="K to compare (TEST.NUM_SLOTS)")
    p.add_argument("--full-eval", action="store_true",
                   help="also evaluate the whole dataset with do_evaluate for both K (slower)")
    # fmt: on
    p = command("curves", "training curves from TensorBoard event files", "")
    p.add_argument("--logdir", default="", help="folder of event files (default OUTPUT_DIR)")
    p = command("dataset", "dataset images beside their true masks", "data")
    p.add_argument("--num-images", type=int, default=8, help="images")
    p.add_argument("--pairs-per-row", type=int, default=4, help="image/mask pairs per row")
    for p in sub.choices.values():
        p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return parser


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """The frozen config: the file, the trailing overrides, then ``--weights`` (MODEL.WEIGHT),
    ``--dataset`` (DATASETS.TEST) and ``--num-slots`` (TEST.NUM_SLOTS), which win."""
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


def _model_run(args: argparse.Namespace, cfg: CfgNode, count: int) -> tuple:
    """The loaded model, ``count`` images from ``--index``, their forward pass (K and T of
    TEST) and the first title line."""
    loaded = load_model(cfg)
    batch = _images(cfg, args.index, count)
    k, t = cfg.TEST.NUM_SLOTS, cfg.TEST.NUM_ITERS
    out = run_model(loaded.model, batch.images, loaded.device, k, t)
    path, iteration = loaded.checkpoint, loaded.iteration
    heading = figure_heading(args.command, args.config_file, path, iteration, batch.dataset)
    return loaded, batch, out, heading


def _panels(args: argparse.Namespace, cfg: CfgNode) -> dict:
    """Panel width and resolution, keywords of every panel figure."""
    return {"cell_px": args.cell_size or auto_cell_px(cfg.INPUT.IMAGE_SIZE), "dpi": args.dpi}


def cmd_decomposition(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    _, batch, out, heading = _model_run(args, cfg, args.num_images)
    return figures.decomposition_figure(
        batch, out, heading, steps=args.steps, background=args.background, **_panels(args, cfg)
    )


def cmd_refinement(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    _, batch, out, heading = _model_run(args, cfg, 1)
    return figures.refinement_figure(batch, out, heading, **_panels(args, cfg))


def cmd_traversal(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    loaded, batch, out, heading = _model_run(args, cfg, 1)
    drawn = traversal_inputs(
        loaded.model, out, batch.mask(0), loaded.device, slot=args.slot, num_dims=args.dims,
        value_range=args.range, steps_per_dim=args.steps_per_dim, unit=args.range_unit,
    )  # fmt: skip
    return figures.traversal_figure(
        batch, drawn, heading, show_component=args.show_component, background=args.background,
        **_panels(args, cfg),
    )  # fmt: skip


def cmd_generalisation(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    if not cfg.TEST.NUM_SLOTS:
        raise RunError("generalisation needs more slots: pass --num-slots K or TEST.NUM_SLOTS K")
    loaded, batch, out, heading = _model_run(args, cfg, args.num_images)
    model, device, t = loaded.model, loaded.device, cfg.TEST.NUM_ITERS
    runs = [(model.num_slots, run_model(model, batch.images, device, None, t))]
    runs.append((cfg.TEST.NUM_SLOTS, out))
    eval_line = ""
    if args.full_eval:
        from lib.data import make_data_loader

        loaders = make_data_loader(cfg, False)[:1]  # _images prepared a missing built-in dataset
        ks = [k for k, _ in runs]
        eval_line = figures.full_evaluation_line(model, loaders, device, batch.dataset, ks, t)
    return figures.generalisation_figure(
        batch, runs, model.num_slots, heading, eval_line=eval_line, background=args.background,
        **_panels(args, cfg),
    )  # fmt: skip


def cmd_curves(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    return figures.curves_figure(
        args.logdir or cfg.OUTPUT_DIR, config_file=args.config_file,
        train_datasets=cfg.DATASETS.TRAIN, dpi=args.dpi,
    )  # fmt: skip


def cmd_dataset(args: argparse.Namespace, cfg: CfgNode) -> Figure:
    return figures.dataset_figure(
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
