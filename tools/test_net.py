"""Evaluate IODINE: foreground ARI, ARI and MSE on every DATASETS.TEST dataset.

    python tools/test_net.py --config-file configs/tetrominoes.yaml [KEY VALUE ...]
    torchrun --nproc_per_node 8 tools/test_net.py --config-file configs/clevr6.yaml

Evaluates MODEL.WEIGHT if set, else the checkpoint named by OUTPUT_DIR/last_checkpoint. Prints
the metrics and writes OUTPUT_DIR/metrics.json; with TEST.SAVE_PREDICTIONS True also the
argmax-slot PNGs under OUTPUT_DIR/predictions/<dataset>/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Runnable without `pip install -e .` (e.g. on a bare GPU machine): the repo root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yacs.config import CfgNode  # noqa: E402

from lib.engine.inference import do_evaluate, format_metrics  # noqa: E402
from lib.engine.launch import RunError, log_config, run_tool, seed_all, setup_run  # noqa: E402
from lib.utils import comm  # noqa: E402
from lib.utils.checkpoint import Checkpointer, CheckpointError, atomic_write_text  # noqa: E402
from lib.utils.logger import close_logger  # noqa: E402

METRIC_KEYS = (
    "fg_ari",
    "ari",
    "mse",
    "num_images",
    "fg_ari_per_iter",
    "ari_per_iter",
    "mse_per_iter",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: ``--config-file CFG`` then trailing ``KEY VALUE`` config overrides."""
    parser = argparse.ArgumentParser(description="Evaluate IODINE (ARI, foreground ARI, MSE).")
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return parser.parse_args(argv)


def _test_loaders(cfg: CfgNode, logger):
    """``[(name, loader)]`` for DATASETS.TEST; rank 0 builds (maybe generates) them first."""
    from lib.data import make_data_loader

    def build():
        try:
            return make_data_loader(
                cfg, False, num_replicas=comm.get_world_size(), rank=comm.get_rank()
            )
        except (FileNotFoundError, ValueError, KeyError) as exc:
            logger.debug("test data failed", exc_info=True)
            raise RunError(f"test data {list(cfg.DATASETS.TEST)}: {exc}") from exc

    error, loaders = None, None
    if comm.is_main_process():
        try:
            loaders = build()
        except RunError as exc:
            error = str(exc)
    error = comm.broadcast_object(error)
    if error is not None:
        raise RunError(error)
    return loaders if loaders is not None else build()


def metrics_document(
    results: dict[str, dict], checkpoint: str, iteration: int | None, num_slots, num_iters
) -> dict:
    """The content of metrics.json: the first dataset's metrics at the top level, every
    dataset's under ``datasets``, and what was evaluated."""
    first_name = next(iter(results))
    first = results[first_name]
    doc = {key: first[key] for key in METRIC_KEYS}
    for key in ("fg_ari_num_images", "reason", "provenance"):
        if key in first:
            doc[key] = first[key]
    doc.update(
        dataset=first_name,
        datasets=results,
        checkpoint=checkpoint,
        iteration=iteration,
        num_slots=num_slots,
        num_iters=num_iters,
    )
    return doc


def test(cfg: CfgNode, argv: list[str]) -> dict:
    """Evaluate the run's checkpoint (or MODEL.WEIGHT) on every test dataset.

    Args:
        cfg: config from ``load_cfg``.
        argv: the command line (for the log).

    Returns:
        The metrics.json document (identical on every rank; only rank 0 writes it).
    """
    from lib.model import build_model

    device, logger = setup_run(cfg, [__file__, *argv])
    try:
        log_config(logger, cfg)
        seed_all(cfg.SEED)
        model = build_model(cfg).to(device)
        checkpointer = Checkpointer(
            model, save_dir=cfg.OUTPUT_DIR, save_to_disk=False, logger=logger
        )
        path = cfg.MODEL.WEIGHT or checkpointer.last_checkpoint()
        if not path:
            raise RunError(
                f"nothing to evaluate: MODEL.WEIGHT is empty and {cfg.OUTPUT_DIR}/last_checkpoint "
                "does not exist (train first, or set MODEL.WEIGHT)"
            )
        state = checkpointer.load(path, weights_only=True)
        iteration = state.get("iteration")
        num_slots = cfg.TEST.NUM_SLOTS or model.num_slots
        num_iters = cfg.TEST.NUM_ITERS or model.num_iters
        logger.info(
            "evaluating %s (iteration %s) with K=%d slots, T=%d steps",
            path,
            iteration,
            num_slots,
            num_iters,
        )

        loaders = _test_loaders(cfg, logger)
        predictions_dir = (
            os.path.join(cfg.OUTPUT_DIR, "predictions") if cfg.TEST.SAVE_PREDICTIONS else None
        )
        results = do_evaluate(
            model,
            loaders,
            device,
            num_slots=num_slots,
            num_iters=num_iters,
            predictions_dir=predictions_dir,
            logger=logger,
            progress=True,
        )
        doc = metrics_document(results, path, iteration, num_slots, num_iters)
        if comm.is_main_process():
            logger.info("metrics:\n%s", format_metrics(results))
            out_path = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
            atomic_write_text(out_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
            logger.info("wrote %s", out_path)
        return doc
    except (RunError, CheckpointError) as exc:
        logger.debug("evaluation failed: %s", exc, exc_info=True)
        raise
    finally:
        close_logger(logger)
        comm.destroy_distributed()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with a one-line message on a known failure)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_tool(argv, parse_args, test, (RunError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
