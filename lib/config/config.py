"""Loading and validating yacs configurations."""

from __future__ import annotations

import os
from collections.abc import Sequence

from yacs.config import CfgNode

from lib import spec
from lib.config.defaults import _C
from lib.errors import ConfigError

# A DATASETS.TRAIN / TEST value as a tuple of names (lib.spec; importers use it from here).
dataset_names = spec.dataset_names
# The model's switches take their allowed values from lib.spec, which the model checks too.
_CHOICES = {
    "MODEL.DEVICE": ("auto", "cpu", "cuda"),
    "MODEL.PRECISION": spec.PRECISIONS,
    "MODEL.IODINE.LIKELIHOOD": spec.LIKELIHOODS,
    "MODEL.IODINE.LOSS_WEIGHTS": spec.LOSS_WEIGHTS,
    "MODEL.IODINE.INIT": spec.INITS,
    "MODEL.IODINE.GRAD_INPUT_REDUCTION": spec.GRAD_INPUT_REDUCTIONS,
    "MODEL.REFINEMENT.COORD_TYPE": spec.COORD_TYPES,
    "MODEL.REFINEMENT.LSTM_INIT": spec.LSTM_INITS,
    "MODEL.REFINEMENT.PADDING": spec.PADDINGS,
    "MODEL.REFINEMENT.POOL": spec.POOLS,
    "INPUT.RESIZE": spec.RESIZE_MODES,
    "SOLVER.ADAM": ("tf1", "torch"),
}
_IMAGE_INPUTS = set(spec.IMAGE_INPUTS)
_VECTOR_INPUTS = set(spec.VECTOR_INPUTS)
_POSITIVE = (
    "MODEL.IODINE.NUM_SLOTS",
    "MODEL.IODINE.NUM_ITERS",
    "MODEL.IODINE.LATENT_DIM",
    "MODEL.IODINE.PIXEL_SCALE",
    "MODEL.IODINE.PRIOR_SCALE",
    "INPUT.IMAGE_SIZE",
    "SOLVER.MAX_ITER",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.BASE_LR",
    "SOLVER.ACCUMULATE_STEPS",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.CHECKPOINT_KEEP",
    "SOLVER.DECAY_STEPS",
    "TEST.IMS_PER_BATCH",
)
_NON_NEGATIVE = (
    "DATASETS.MAX_OBJECTS",
    "MODEL.IODINE.INIT_POSTERIOR_SCALE",
    "DATASETS.TEST_SIZE",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.GRAD_CLIP_NORM",
    "SOLVER.WARMUP_ITERS",
    "TEST.NUM_SLOTS",
    "TEST.NUM_ITERS",
    "TEST.EVAL_PERIOD",
    "LOG.IMAGE_PERIOD",
    "MODEL.REFINEMENT.LSTM_SIZE",
    "MODEL.IODINE.EVAL_GRAD_DIVISOR",
)


def get_cfg() -> CfgNode:
    """Return a fresh, mutable copy of the default configuration."""
    return _C.clone()


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate_cfg(cfg: CfgNode) -> None:
    """Check values that yacs' type check cannot; raise ConfigError (a ValueError) naming the
    key at fault, which the tools print as one line."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key {key} = {value!r} is not one of {list(choices)}")
    for key in _POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"config key {key} = {_get(cfg, key)!r} must be > 0")
    for key in _NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"config key {key} = {_get(cfg, key)!r} must be >= 0")
    unknown = set(cfg.MODEL.REFINEMENT.IMAGE_INPUTS) - _IMAGE_INPUTS
    if unknown:
        raise ConfigError(
            f"config key MODEL.REFINEMENT.IMAGE_INPUTS has unknown names {sorted(unknown)}; "
            f"known: {sorted(_IMAGE_INPUTS)}"
        )
    unknown = set(cfg.MODEL.REFINEMENT.VECTOR_INPUTS) - _VECTOR_INPUTS
    if unknown:
        raise ConfigError(
            f"config key MODEL.REFINEMENT.VECTOR_INPUTS has unknown names {sorted(unknown)}; "
            f"known: {sorted(_VECTOR_INPUTS)}"
        )
    for key in ("MODEL.REFINEMENT.CONV_CHANNELS", "MODEL.DECODER.CONV_CHANNELS"):
        if len(_get(cfg, key)) == 0 or min(_get(cfg, key)) <= 0:
            raise ConfigError(f"config key {key} = {_get(cfg, key)!r} needs positive entries")
    if not 0.0 <= cfg.SOLVER.BETA1 < 1.0 or not 0.0 <= cfg.SOLVER.BETA2 < 1.0:
        raise ConfigError("config keys SOLVER.BETA1 and SOLVER.BETA2 must lie in [0, 1)")
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        if len(_get(cfg, key)) == 0:
            raise ConfigError(f"config key {key} names no dataset")


def _is_literal(value: str) -> bool:
    # A YAML or command-line value written as a tuple or list literal, for yacs to evaluate.
    return value.lstrip().startswith(("(", "["))


def _as_tuple(cfg: CfgNode) -> None:
    for key in ("TRAIN", "TEST"):
        cfg.DATASETS[key] = dataset_names(cfg.DATASETS[key])


def _synth_suffix(names: Sequence[str], stem: str) -> str:
    # A paper config trained on the generated stand-ins writes to logs/<stem>_synth, so its
    # folder does not pass for a run on the official data.
    from lib.data.format import SYNTH_OF, builtin_of

    synth = set(SYNTH_OF.values())
    if "synth" not in stem and any(builtin_of(name) in synth for name in names):
        return "_synth"
    return ""


def load_cfg(
    config_file: str | None = None, opts: Sequence[str] = (), freeze: bool = True
) -> CfgNode:
    """Build the configuration of a run: defaults, then a YAML file, then ``KEY VALUE`` overrides.

    Args:
        config_file: path of a YAML file that sets only what differs from the defaults, or None.
        opts: flat list of trailing overrides, ``["SOLVER.MAX_ITER", "100", ...]``.
        freeze: freeze the returned node.

    Returns:
        The validated config. ``OUTPUT_DIR`` defaults to ``logs/<config file stem>``, plus
        ``_synth`` when DATASETS.TRAIN reads a generated stand-in of a paper dataset.

    Raises:
        FileNotFoundError: the config file does not exist.
        KeyError / ValueError: a key that does not exist or a value of the wrong type or range;
            the message names the key (and the file).
    """
    cfg = get_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file} does not exist")
        loaded = CfgNode.load_cfg(open(config_file, encoding="utf-8"))
        # A bare string for DATASETS.TRAIN/TEST would fail yacs' check against the tuple default.
        for key in ("TRAIN", "TEST"):
            value = loaded.get("DATASETS", {}).get(key)
            if isinstance(value, str) and not _is_literal(value):
                loaded.DATASETS[key] = dataset_names(value)
        try:
            cfg.merge_from_other_cfg(loaded)
        except (KeyError, ValueError) as exc:
            raise type(exc)(f"in config file {config_file}: {exc}") from exc
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"overrides must come in KEY VALUE pairs, got {opts}")
    fixed = []
    for key, value in zip(opts[0::2], opts[1::2]):
        if key in ("DATASETS.TRAIN", "DATASETS.TEST") and not _is_literal(value):
            value = repr(dataset_names(value))
        fixed += [key, value]
    try:
        cfg.merge_from_list(fixed)
    except (KeyError, ValueError, AssertionError) as exc:
        raise ConfigError(f"in command-line overrides: {exc}") from exc
    _as_tuple(cfg)
    if not cfg.OUTPUT_DIR:
        stem = os.path.splitext(os.path.basename(config_file))[0] if config_file else "default"
        cfg.OUTPUT_DIR = os.path.join("logs", stem + _synth_suffix(cfg.DATASETS.TRAIN, stem))
    validate_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg
