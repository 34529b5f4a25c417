"""Train IODINE.

    python tools/train_net.py --config-file configs/tetrominoes.yaml [KEY VALUE ...]
    torchrun --nproc_per_node 8 tools/train_net.py --config-file configs/clevr6.yaml

Writes TensorBoard events, log.txt, config.yaml and checkpoints to OUTPUT_DIR (default
logs/<config stem>). Rerunning with the same OUTPUT_DIR resumes from its last checkpoint
unless SOLVER.RESUME False; MODEL.WEIGHT initialises the weights of a fresh run only.
"""

from __future__ import annotations

import argparse
import os
import sys

# Runnable without `pip install -e .` (e.g. on a bare GPU machine): the repo root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from yacs.config import CfgNode  # noqa: E402

from lib.engine.inference import find_provenance  # noqa: E402
from lib.engine.launch import RunError, log_config, run_tool, seed_all, setup_run  # noqa: E402
from lib.engine.solver import make_lr_scheduler, make_optimizer  # noqa: E402
from lib.engine.trainer import NonFiniteError, do_train, make_heldout_batches  # noqa: E402
from lib.utils import comm  # noqa: E402
from lib.utils.checkpoint import (  # noqa: E402
    LAST_CHECKPOINT,
    Checkpointer,
    CheckpointError,
    atomic_write_text,
    set_rng_states,
)
from lib.utils.logger import close_logger  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: ``--config-file CFG`` then trailing ``KEY VALUE`` config overrides."""
    parser = argparse.ArgumentParser(description="Train IODINE.")
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return parser.parse_args(argv)


def _build_datasets(cfg: CfgNode, logger, start_iter: int):
    """Datasets and loaders; rank 0 builds (and if needed generates) them first."""
    from lib.data import make_data_loader, make_dataset

    world, rank = comm.get_world_size(), comm.get_rank()
    names = [(n, True) for n in cfg.DATASETS.TRAIN]
    if cfg.TEST.EVAL_PERIOD > 0:
        names.append((cfg.DATASETS.TEST[0], False))

    def build_all():
        built = {}
        for name, is_train in names:
            try:
                built[name, is_train] = make_dataset(name, cfg, is_train)
            except (FileNotFoundError, ValueError, KeyError) as exc:
                logger.debug("dataset %s failed", name, exc_info=True)
                raise RunError(f"dataset {name}: {exc}") from exc
        return built

    # Generation of a missing dataset happens once, on rank 0, behind a barrier; its failure
    # is sent to the other ranks so that they stop too instead of waiting.
    error = None
    if rank == 0:
        try:
            datasets = build_all()
        except RunError as exc:
            error = str(exc)
    error = comm.broadcast_object(error)
    if error is not None:
        raise RunError(error)
    if rank != 0:
        datasets = build_all()

    for (name, is_train), dataset in datasets.items():
        provenance = find_provenance(dataset)
        logger.info(
            "%s dataset %s: %d examples; provenance: %s",
            "train" if is_train else "held-out",
            name,
            len(dataset),
            provenance if provenance is not None else "not recorded",
        )
    try:
        train_loader = make_data_loader(
            cfg, True, num_replicas=world, rank=rank, start_iter=start_iter
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        logger.debug("train loader failed", exc_info=True)
        raise RunError(f"training data: {exc}") from exc
    heldout = None
    if cfg.TEST.EVAL_PERIOD > 0:
        heldout = make_heldout_batches(
            datasets[cfg.DATASETS.TEST[0], False],
            cfg.TEST.EVAL_NUM_IMAGES,
            max(cfg.TEST.IMS_PER_BATCH // world, 1),
            rank,
            world,
        )
    return train_loader, heldout


def _warn_schedule_change(cfg: CfgNode, scheduler, logger) -> None:
    """A resumed run keeps the checkpoint's learning-rate schedule; say so if the config's
    differs (the scheduler state holds BASE_LR and the decay and warm-up settings)."""
    factor = scheduler.lr_lambdas[0]
    saved = {
        "SOLVER.BASE_LR": scheduler.base_lrs[0],
        "SOLVER.DECAY_RATE": factor.decay_rate,
        "SOLVER.DECAY_STEPS": factor.decay_steps,
        "SOLVER.WARMUP_ITERS": factor.warmup_iters,
    }
    for key, value in saved.items():
        wanted = cfg.SOLVER[key.split(".")[1]]
        if abs(float(value) - float(wanted)) > 1e-12 * max(abs(float(wanted)), 1.0):
            logger.warning(
                "%s = %s in the config, but the resumed checkpoint's schedule uses %s: "
                "the checkpoint's value is kept (start a new OUTPUT_DIR to change it)",
                key,
                wanted,
                value,
            )


def train(cfg: CfgNode, argv: list[str]) -> dict:
    """Run (or resume) a training run described by a frozen config.

    Args:
        cfg: config from ``load_cfg``.
        argv: the command line (for the log).

    Returns:
        ``do_train``'s summary (final iteration, skipped steps, last held-out metrics).
    """
    from lib.model import build_model

    device, logger = setup_run(cfg, [__file__, *argv])
    try:
        main = comm.is_main_process()
        log_config(logger, cfg)
        if main:
            atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())

        # Same seed on every rank for the initialisation (DDP also broadcasts rank 0's).
        seed_all(cfg.SEED)
        model = build_model(cfg).to(device)
        optimizer = make_optimizer(cfg, model)
        scheduler = make_lr_scheduler(cfg, optimizer)
        checkpointer = Checkpointer(
            model, optimizer, scheduler, cfg.OUTPUT_DIR, cfg.SOLVER.CHECKPOINT_KEEP, main, logger
        )
        if main:
            for name in checkpointer.remove_stale_tmp_files():
                logger.warning("removed %s, left by a run killed while writing it", name)

        # Resume, or start fresh (optionally from MODEL.WEIGHT); then per-rank noise streams.
        start_iter = 0
        last = checkpointer.last_checkpoint() if cfg.SOLVER.RESUME else None
        seed_all(cfg.SEED + comm.get_rank())
        if last is not None:
            state = checkpointer.load(last)
            start_iter = int(state["iteration"])
            rng = state.get("rng_states") or []
            if len(rng) == comm.get_world_size():
                set_rng_states(rng[comm.get_rank()])
            else:
                logger.warning(
                    "checkpoint has RNG states of %d processes, this run has %d: reseeding",
                    len(rng),
                    comm.get_world_size(),
                )
                seed_all(cfg.SEED + comm.get_rank() + 7919 * start_iter)
            logger.info("resumed from %s at iteration %d", last, start_iter)
            _warn_schedule_change(cfg, scheduler, logger)
        elif cfg.MODEL.WEIGHT:
            checkpointer.load(cfg.MODEL.WEIGHT, weights_only=True)
            logger.info("fresh start from the weights of %s", cfg.MODEL.WEIGHT)
        else:
            if not cfg.SOLVER.RESUME and os.path.exists(
                os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT)
            ):
                logger.warning(
                    "SOLVER.RESUME False: starting over in %s, which holds an earlier run's "
                    "checkpoints (the oldest are deleted as new ones are written)",
                    cfg.OUTPUT_DIR,
                )
            logger.info("fresh start")

        train_loader, heldout = _build_datasets(cfg, logger, start_iter)
        if comm.get_world_size() > 1:
            # The model's inner autograd.grad calls (refinement inputs) touch no parameter's
            # gradient, so DDP's hooks only see the final backward: no unused parameters.
            model = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=False,
            )
        # Events after the resumed checkpoint (written before a crash) are hidden in
        # TensorBoard; those of iteration start_iter itself precede the checkpoint and stay.
        writer = SummaryWriter(cfg.OUTPUT_DIR, purge_step=start_iter + 1) if main else None
        try:
            return do_train(
                cfg,
                model,
                train_loader,
                optimizer,
                scheduler,
                checkpointer,
                device,
                start_iter,
                heldout=heldout,
                heldout_name=cfg.DATASETS.TEST[0],
                writer=writer,
                logger=logger,
            )
        finally:
            if writer is not None:
                writer.close()
    except (RunError, CheckpointError, NonFiniteError) as exc:
        # The message goes to stderr from main(); the traceback only to log.txt.
        logger.debug("run failed: %s", exc, exc_info=True)
        raise
    finally:
        close_logger(logger)
        comm.destroy_distributed()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with a one-line message on a known failure)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_tool(argv, parse_args, train, (RunError, CheckpointError, NonFiniteError))


if __name__ == "__main__":
    sys.exit(main())
