"""Prepare a built-in dataset under DATASETS.ROOT: convert the official TFRecords or generate it.

    # convert the official file (multi_object_datasets release)
    python tools/prepare_data.py --dataset tetrominoes --tfrecords tetrominoes_train.tfrecords
    python tools/prepare_data.py --dataset clevr6 --tfrecords clevr_with_masks_train.tfrecords
    # generate a procedural stand-in on every core (training part from --seed, test part
    # from its own stream); an interrupted run resumes when run again
    python tools/prepare_data.py --dataset multi_dsprites_synth --num-examples 50000 --seed 0
    # take the defaults from a config's DATASETS keys (ROOT, GENERATE_SIZE, GENERATE_SEED,
    # TEST_SIZE, CLEVR_TRAIN_RECORDS), with trailing KEY VALUE overrides
    python tools/prepare_data.py --dataset sprites --config-file configs/quickstart.yaml

An option given on the command line wins over the config key. Writes <root>/<dataset>/
(images.npy, masks.npy, factors/, meta.json) atomically; see data/README.md,
lib/data/format.py and lib/prepare/ for the format and the split rules.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from yacs.config import CfgNode

from lib.cli import default_argument_parser, run_tool
from lib.data.format import BUILTIN_DATASETS
from lib.errors import ConfigError
from lib.prepare import convert_official, generate_dataset


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``--config-file``, the options below and ``KEY VALUE`` overrides."""
    parser = default_argument_parser("Convert or generate a built-in dataset.")
    parser.add_argument("--dataset", required=True, choices=sorted(BUILTIN_DATASETS))
    parser.add_argument(
        "--tfrecords",
        metavar="FILE",
        help="official GZIP TFRecord file to convert; omit to generate",
    )
    parser.add_argument("--root", help="folder to write into (default: DATASETS.ROOT)")
    parser.add_argument(
        "--num-examples",
        type=int,
        help="generation: training examples (default: DATASETS.GENERATE_SIZE)",
    )
    parser.add_argument(
        "--seed", type=int, help="generation: generator seed (default: DATASETS.GENERATE_SEED)"
    )
    parser.add_argument(
        "--test-size",
        type=int,
        help="examples of the test part, stored last (default: DATASETS.TEST_SIZE)",
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        help="conversion: only the first N records (CLEVR: at most N training scenes)",
    )
    parser.add_argument(
        "--train-records",
        type=int,
        help="CLEVR conversion: raw records of the training part "
        "(default: DATASETS.CLEVR_TRAIN_RECORDS)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="generation: processes (default: every core this process may use)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _settings(cfg: CfgNode, args: argparse.Namespace) -> argparse.Namespace:
    """The options with the config's DATASETS keys filled in where none was given."""
    defaults = {
        "root": cfg.DATASETS.ROOT,
        "num_examples": cfg.DATASETS.GENERATE_SIZE,
        "seed": cfg.DATASETS.GENERATE_SEED,
        "test_size": cfg.DATASETS.TEST_SIZE,
        "train_records": cfg.DATASETS.CLEVR_TRAIN_RECORDS,
    }
    settings = argparse.Namespace(**vars(args))
    for name, value in defaults.items():
        if getattr(settings, name) is None:
            setattr(settings, name, value)
    for name in ("num_examples", "test_size", "max_examples", "train_records"):
        value = getattr(settings, name)
        if value is not None and value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if settings.workers is not None and settings.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {settings.workers}")
    return settings


def prepare(cfg: CfgNode, args: argparse.Namespace) -> str:
    """Convert or generate the dataset; returns its folder."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    s = _settings(cfg, args)
    official = BUILTIN_DATASETS[s.dataset].official_format is not None
    if official and not s.tfrecords:
        raise ConfigError(
            f"--dataset {s.dataset} is the official data: give --tfrecords FILE (see "
            f"data/README.md), or generate its stand-in with --dataset {s.dataset}_synth"
        )
    if s.tfrecords and not official:
        raise ConfigError(f"--dataset {s.dataset} is generated only: drop --tfrecords")
    if s.tfrecords:
        path = convert_official(
            s.dataset,
            s.tfrecords,
            s.root,
            test_size=s.test_size,
            max_examples=s.max_examples,
            train_records=s.train_records,
            overwrite=s.overwrite,
            progress=not s.no_progress,
        )
    else:
        path = generate_dataset(
            s.dataset,
            s.root,
            num_examples=s.num_examples,
            seed=s.seed,
            test_size=s.test_size,
            overwrite=s.overwrite,
            progress=not s.no_progress,
            workers=s.workers,
        )
    print(f"wrote {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 = success, 1 = error)."""
    return run_tool(argv, build_parser(), prepare)


if __name__ == "__main__":
    sys.exit(main())
