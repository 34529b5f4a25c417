"""Loading and validating yacs configurations."""

from __future__ import annotations

import os
from collections.abc import Sequence

import yaml
from yacs.config import CfgNode

from lib import spec
from lib.config.defaults import _C
from lib.errors import ConfigError
from lib.spec import dataset_names

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
    "INPUT.RESIZE": spec.RESIZE_CHOICES,
    "SOLVER.ADAM": ("tf1", "torch"),
}
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
    "SOLVER.DECAY_RATE",
    "SOLVER.MAX_NONFINITE",
    "MODEL.REFINEMENT.STRIDE",
    "TEST.IMS_PER_BATCH",
)
_NON_NEGATIVE = (
    "SEED",
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
    for key in ("MODEL.REFINEMENT.CONV_CHANNELS", "MODEL.DECODER.CONV_CHANNELS"):
        if len(_get(cfg, key)) == 0 or min(_get(cfg, key)) <= 0:
            raise ConfigError(f"config key {key} = {_get(cfg, key)!r} needs positive entries")
    stride = cfg.MODEL.REFINEMENT.STRIDE ** len(cfg.MODEL.REFINEMENT.CONV_CHANNELS)
    if cfg.INPUT.IMAGE_SIZE < stride:
        raise ConfigError(
            f"config key INPUT.IMAGE_SIZE = {cfg.INPUT.IMAGE_SIZE} is below the refinement "
            f"convs' total stride {stride} (MODEL.REFINEMENT.STRIDE ** len(CONV_CHANNELS))"
        )
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
    synth = set(spec.SYNTH_OF.values())
    if "synth" not in stem and any(spec.builtin_of(name) in synth for name in names):
        return "_synth"
    return ""


def _read_yaml(path: str) -> CfgNode:
    # yacs would run a .py config and name no file in a YAML error; the top level must map.
    if not path.endswith((".yaml", ".yml")):
        raise ConfigError(f"config file {path} is not a .yaml or .yml file")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            problem = " ".join(str(exc).split())
            raise ConfigError(f"config file {path} is not valid YAML: {problem}") from exc
    if not isinstance(data, dict | None):
        raise ConfigError(
            f"config file {path} holds a {type(data).__name__}; it must map keys to values, "
            "e.g. SOLVER: {BASE_LR: 0.001}"
        )
    return CfgNode(data or {})


def load_cfg(
    config_file: str | None = None, opts: Sequence[str] = (), freeze: bool = True
) -> CfgNode:
    """The validated config of a run: defaults, then ``config_file`` (YAML, setting what
    differs), then the flat ``KEY VALUE`` list ``opts``. ``OUTPUT_DIR`` defaults to
    ``logs/<config file stem>``, plus ``_synth`` when DATASETS.TRAIN reads a generated
    stand-in of a paper dataset.

    Raises:
        FileNotFoundError: the config file does not exist.
        KeyError / ValueError: a bad file, an unknown key, or a value of the wrong type or
            range; the message names the file or key.
    """
    cfg = get_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file} does not exist")
        loaded = _read_yaml(config_file)
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
