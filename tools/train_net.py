"""Train IODINE.

    python tools/train_net.py --config-file configs/tetrominoes.yaml [KEY VALUE ...]
    torchrun --nproc_per_node 8 tools/train_net.py --config-file configs/clevr6_prop.yaml \
        SOLVER.IMS_PER_BATCH 32 SOLVER.BASE_LR 1e-3

Writes TensorBoard events, log.txt, config.yaml and checkpoints to OUTPUT_DIR (default
logs/<config stem>). Rerunning with the same OUTPUT_DIR resumes from its last checkpoint
unless SOLVER.RESUME False; MODEL.WEIGHT initialises the weights of a fresh run only (with a
checkpoint of another run in OUTPUT_DIR it is an error). A paper dataset name needs its
official data prepared (the error says how); a missing stand-in (``*_synth``, ``sprites``) is
generated first. SOLVER.IMS_PER_BATCH is the total over processes: the paper's CLEVR6 batch 32
at lr 1e-3 on 8 GPUs is ``SOLVER.IMS_PER_BATCH 32 SOLVER.BASE_LR 1e-3`` on the torchrun line.
"""

from __future__ import annotations

import argparse
import os
import sys

from torch.utils.tensorboard import SummaryWriter
from yacs.config import CfgNode

from lib.cli import build_datasets, default_argument_parser, run_tool, tool_session
from lib.data import make_data_loader
from lib.data.build import per_process_batch
from lib.engine.checkpoint import Checkpointer
from lib.engine.inference import make_heldout_batches
from lib.engine.setup import resume_or_start, seed_all, wrap_distributed
from lib.engine.solver import make_lr_scheduler, make_optimizer
from lib.engine.trainer import do_train
from lib.model import build_model, trainable_parameter_counts
from lib.model.build import eval_grad_divisor
from lib.prepare import prepare_missing
from lib.utils import comm
from lib.utils.io import atomic_write_text


def train(cfg: CfgNode, args: argparse.Namespace) -> dict:
    """Run (or resume) the training run ``cfg`` describes (``args.argv`` goes to the log);
    returns ``do_train``'s summary."""
    with tool_session(cfg, [__file__, *args.argv], lock=True) as (device, logger):
        main = comm.is_main_process()
        # Every dataset first: missing or unreadable data stops the run before any work, and
        # missing stand-ins are generated before the model is built.
        prepare_missing(cfg, [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
        train_sets = build_datasets(cfg, cfg.DATASETS.TRAIN, True, logger, prepare=False)
        # Every test set is built (checked) even when evaluation is off; the first is held out.
        test_sets = build_datasets(cfg, cfg.DATASETS.TEST, False, logger, prepare=False)
        if main:
            atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
        world, rank = comm.get_world_size(), comm.get_rank()
        per_process = per_process_batch(cfg, world)
        message = "batch: %d images per iteration in total = %d processes x %d accumulation "
        message += "steps x %d images per process (the loss and the released gradient inputs "
        message += "average over the %d of a process)"
        total, steps = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.ACCUMULATE_STEPS
        logger.info(message, total, world, steps, per_process, per_process)

        # Same seed on every rank for the initialisation (DDP also broadcasts rank 0's).
        seed_all(cfg.SEED)
        model = build_model(cfg).to(device)
        # Held-out evaluation during training divides like training did (per process).
        model.eval_grad_divisor = float(eval_grad_divisor(cfg, per_process))
        counts = trainable_parameter_counts(model)
        iodine, regressor = f"{counts['iodine']:,}", f"{counts['factor_regressor']:,}"
        logger.info("trainable parameters: IODINE %s, factor regressor %s", iodine, regressor)
        optimizer = make_optimizer(cfg, model)
        scheduler = make_lr_scheduler(cfg, optimizer)
        checkpointer = Checkpointer(
            model, optimizer, scheduler, cfg.OUTPUT_DIR, cfg.SOLVER.CHECKPOINT_KEEP, main, logger
        )
        for name in checkpointer.remove_stale_tmp_files():
            logger.warning("removed %s, left by a run killed while writing it", name)
        start_iter = resume_or_start(cfg, checkpointer, scheduler, logger)

        loader = make_data_loader(
            cfg,
            True,
            world,
            rank,
            start_iter=start_iter,
            with_factors=model.factor_regressor is not None,
            uint8_images=device.type == "cuda",
            datasets=train_sets,
        )
        heldout = None
        if cfg.TEST.EVAL_PERIOD > 0:
            per_rank = max(cfg.TEST.IMS_PER_BATCH // world, 1)
            dataset = test_sets[cfg.DATASETS.TEST[0]]
            heldout = make_heldout_batches(dataset, cfg.TEST.EVAL_NUM_IMAGES, per_rank, rank, world)

        model = wrap_distributed(model, device)
        # Events after the resumed checkpoint (written before a crash) are hidden in
        # TensorBoard; those of iteration start_iter itself precede the checkpoint and stay.
        writer = SummaryWriter(cfg.OUTPUT_DIR, purge_step=start_iter + 1) if main else None
        try:
            return do_train(
                cfg, model, loader, optimizer, scheduler, checkpointer, device, start_iter,
                heldout=heldout, heldout_name=cfg.DATASETS.TEST[0], writer=writer, logger=logger,
            )  # fmt: skip
        finally:
            if writer is not None:
                writer.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with a one-line message on a known failure)."""
    parser = default_argument_parser("Train IODINE.")
    return run_tool(argv, parser, train)


if __name__ == "__main__":
    sys.exit(main())
