"""Convert a released TF1 IODINE checkpoint (DeepMind's iodine_checkpoints.zip) to ours.

    python tools/convert_checkpoint.py --config-file configs/clevr6_prop.yaml \
        --checkpoint iodine/checkpoints/clevr6/model.ckpt --output weights/clevr6_released.pth
    python tools/test_net.py --config-file configs/clevr6_prop.yaml \
        MODEL.WEIGHT weights/clevr6_released.pth

No TensorFlow needed. The config's architecture decides which variables the checkpoint must
hold; any missing, unexpected or mis-shaped variable stops the conversion with the full list.
The output (written atomically) holds ``model`` (what MODEL.WEIGHT loads), the released
``global_step`` as ``iteration``, the config, and the factor regressor's variables in
TensorFlow layout. Trailing ``KEY VALUE`` pairs override the config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from yacs.config import CfgNode

from lib.cli import default_argument_parser, run_tool
from lib.convert.convert import checkpoint_dict, convert_checkpoint, summary_lines
from lib.convert.released import ConversionError
from lib.convert.tf_checkpoint import TFCheckpointError
from lib.utils.io import atomic_torch_save


def convert(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Convert ``args.checkpoint`` for ``cfg``'s model and write ``args.output``."""
    result = convert_checkpoint(cfg, args.checkpoint)
    atomic_torch_save(checkpoint_dict(result, cfg, args.checkpoint), args.output)
    print("\n".join(summary_lines(result, args.checkpoint, args.output)))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = default_argument_parser("Convert a released TF1 IODINE checkpoint.")
    parser.add_argument(
        "--checkpoint", required=True, metavar="PREFIX", help="TF checkpoint prefix or folder"
    )
    parser.add_argument("--output", required=True, metavar="FILE.pth", help="file to write")
    return run_tool(argv, parser, convert, errors=(ConversionError, TFCheckpointError))


if __name__ == "__main__":
    sys.exit(main())
