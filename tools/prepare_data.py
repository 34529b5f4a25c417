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

# Integer options -> help text.
INT_OPTIONS = {
    "--num-examples": "generation: training examples (default: DATASETS.GENERATE_SIZE)",
    "--seed": "generation: generator seed (default: DATASETS.GENERATE_SEED)",
    "--test-size": "examples of the test part, stored last (default: DATASETS.TEST_SIZE)",
    "--max-examples": "conversion: only the first N records (CLEVR: at most N training scenes)",
    "--train-records": "CLEVR conversion: raw records of the training part "
    "(default: DATASETS.CLEVR_TRAIN_RECORDS)",
    "--workers": "generation: processes (default: every core this process may use)",
}


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
    for flag, text in INT_OPTIONS.items():
        parser.add_argument(flag, type=int, help=text)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def prepare(cfg: CfgNode, args: argparse.Namespace) -> str:
    """Convert or generate the dataset, options filled in from the config's DATASETS keys;
    returns its folder."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    s = argparse.Namespace(**vars(args))
    keys = ("ROOT", "GENERATE_SIZE", "GENERATE_SEED", "TEST_SIZE", "CLEVR_TRAIN_RECORDS")
    for name, key in zip(("root", "num_examples", "seed", "test_size", "train_records"), keys):
        if getattr(s, name) is None:
            setattr(s, name, cfg.DATASETS[key])
    for name in ("num_examples", "test_size", "max_examples", "train_records"):
        if getattr(s, name) is not None and getattr(s, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(s, name)}")
    if s.workers is not None and s.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {s.workers}")
    official = BUILTIN_DATASETS[s.dataset].official_format is not None
    if official and not s.tfrecords:
        raise ConfigError(
            f"--dataset {s.dataset} is the official data: give --tfrecords FILE (see "
            f"data/README.md), or generate its stand-in with --dataset {s.dataset}_synth"
        )
    if s.tfrecords and not official:
        raise ConfigError(f"--dataset {s.dataset} is generated only: drop --tfrecords")
    common = dict(test_size=s.test_size, overwrite=s.overwrite, progress=not s.no_progress)
    if s.tfrecords:
        common.update(max_examples=s.max_examples, train_records=s.train_records)
        path = convert_official(s.dataset, s.tfrecords, s.root, **common)
    else:
        path = generate_dataset(
            s.dataset, s.root, num_examples=s.num_examples, seed=s.seed, workers=s.workers, **common
        )
    print(f"wrote {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 = success, 1 = error)."""
    return run_tool(argv, build_parser(), prepare)


if __name__ == "__main__":
    sys.exit(main())
