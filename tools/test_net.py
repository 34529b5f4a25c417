"""Evaluate IODINE: foreground ARI, ARI and MSE on every DATASETS.TEST dataset.

    python tools/test_net.py --config-file configs/tetrominoes.yaml [KEY VALUE ...]
    torchrun --nproc_per_node 8 tools/test_net.py --config-file configs/clevr6_prop.yaml

Evaluates MODEL.WEIGHT if set, else the checkpoint named by OUTPUT_DIR/last_checkpoint. Prints
the metrics and writes OUTPUT_DIR/metrics.json; with TEST.SAVE_PREDICTIONS True also the
argmax-slot PNGs under OUTPUT_DIR/predictions/<dataset>/. When the model has a factor regressor
(MODEL.FACTOR_REGRESSOR) and the test set stores factors, metrics.json also has "factors"
({name: R^2 for scalar/angle factors, with the test set's own variance, or accuracy for
categorical ones}) and "factor_loss".
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from yacs.config import CfgNode

from lib.cli import build_datasets, default_argument_parser, run_tool, tool_session
from lib.data import make_data_loader
from lib.engine.inference import do_evaluate, format_metrics, metrics_document
from lib.engine.setup import load_weights, seed_all
from lib.model import build_model
from lib.utils import comm
from lib.utils.io import atomic_write_text


def test(cfg: CfgNode, args: argparse.Namespace) -> dict:
    """Evaluate the run's checkpoint (or MODEL.WEIGHT) on every test dataset (``args.argv``
    goes to the log); returns the metrics.json document (rank 0 alone writes it)."""
    with tool_session(cfg, [__file__, *args.argv]) as (device, logger):
        seed_all(cfg.SEED)
        model = build_model(cfg).to(device)
        path, iteration = load_weights(cfg, model, logger)
        num_slots = cfg.TEST.NUM_SLOTS or model.num_slots
        num_iters = cfg.TEST.NUM_ITERS or model.num_iters
        message = "evaluating %s (iteration %s) with K=%d slots, T=%d steps"
        logger.info(message, path, iteration, num_slots, num_iters)

        test_sets = build_datasets(cfg, cfg.DATASETS.TEST, is_train=False, logger=logger)
        loaders = make_data_loader(
            cfg,
            False,
            comm.get_world_size(),
            comm.get_rank(),
            with_factors=getattr(model, "factor_regressor", None) is not None,
            datasets=test_sets,
        )
        save = os.path.join(cfg.OUTPUT_DIR, "predictions") if cfg.TEST.SAVE_PREDICTIONS else None
        results = do_evaluate(
            model, loaders, device, num_slots=num_slots, num_iters=num_iters,
            predictions_dir=save, logger=logger, progress=True,
        )  # fmt: skip
        doc = metrics_document(results, path, iteration, num_slots, num_iters)
        if comm.is_main_process():
            logger.info("metrics:\n%s", format_metrics(results))
            out_path = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
            atomic_write_text(out_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
            logger.info("wrote %s", out_path)
        return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with a one-line message on a known failure)."""
    parser = default_argument_parser("Evaluate IODINE (ARI, foreground ARI, MSE).")
    return run_tool(argv, parser, test)


if __name__ == "__main__":
    sys.exit(main())
