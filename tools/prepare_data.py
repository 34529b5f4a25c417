"""Prepare a built-in dataset under DATASETS.ROOT: convert the official TFRecords or generate it.

    # convert the official file (multi_object_datasets release)
    python tools/prepare_data.py --dataset tetrominoes --tfrecords tetrominoes_train.tfrecords
    python tools/prepare_data.py --dataset clevr6 --tfrecords clevr_with_masks_train.tfrecords
    # generate a procedural stand-in (train part from --seed, test part from its own stream)
    python tools/prepare_data.py --dataset multi_dsprites --num-examples 50000 --seed 0

Writes <root>/<dataset>/ (images.npy, masks.npy, factors/, meta.json) atomically; see
data/README.md and lib/data/prepare.py for the format and the split rules.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Runnable without `pip install -e .`: the repo root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.config import get_cfg  # noqa: E402
from lib.data.prepare import BUILTIN_DATASETS, convert_official, generate_dataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; defaults come from ``lib/config/defaults.py``."""
    cfg = get_cfg()
    parser = argparse.ArgumentParser(
        description="Convert or generate a built-in dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=sorted(BUILTIN_DATASETS))
    parser.add_argument(
        "--tfrecords",
        metavar="FILE",
        help="official GZIP TFRecord file to convert; omit to generate",
    )
    parser.add_argument("--root", default=cfg.DATASETS.ROOT, help="DATASETS.ROOT to write into")
    parser.add_argument(
        "--num-examples",
        type=int,
        default=cfg.DATASETS.GENERATE_SIZE,
        help="generated training examples",
    )
    parser.add_argument(
        "--seed", type=int, default=cfg.DATASETS.GENERATE_SEED, help="generator seed"
    )
    parser.add_argument(
        "--test-size",
        type=int,
        default=cfg.DATASETS.TEST_SIZE,
        help="examples of the test part (stored last)",
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="conversion: only the first N records (CLEVR: at most N training scenes)",
    )
    parser.add_argument(
        "--train-records",
        type=int,
        default=cfg.DATASETS.CLEVR_TRAIN_RECORDS,
        help="CLEVR conversion: raw records of the training part",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    for name in ("num_examples", "test_size", "max_examples", "train_records"):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 = success, 1 = error)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.tfrecords:
            path = convert_official(
                args.dataset,
                args.tfrecords,
                args.root,
                test_size=args.test_size,
                max_examples=args.max_examples,
                train_records=args.train_records,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
        else:
            path = generate_dataset(
                args.dataset,
                args.root,
                num_examples=args.num_examples,
                seed=args.seed,
                test_size=args.test_size,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        print(f"prepare_data: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
