"""``build_model(cfg)``: the only place that reads the config for the model."""

from __future__ import annotations

import torch
from yacs.config import CfgNode

from lib.data.format import factor_mapping
from lib.model.factor_regressor import Factor, FactorRegressor
from lib.model.iodine import IODINE

FACTOR_SWITCH = {"auto": None, "true": True, "on": True, "false": False, "off": False}


def eval_grad_divisor(cfg: CfgNode, per_process_batch: int | None = None) -> int:
    """The fixed B dividing the eval-mode gradient inputs (``MODEL.IODINE.EVAL_GRAD_DIVISOR``).

    0 means the training micro-batch of one process, the B that training divided by: given
    (the trainer's, or the one a checkpoint records), else ``SOLVER.IMS_PER_BATCH //
    SOLVER.ACCUMULATE_STEPS`` (one process; at least 1).

    Args:
        cfg: the config.
        per_process_batch: the training batch per process, when known.

    Returns:
        The divisor, an int >= 1.
    """
    fixed = cfg.MODEL.IODINE.EVAL_GRAD_DIVISOR
    if fixed > 0:
        return int(fixed)
    if per_process_batch:
        return int(per_process_batch)
    return max(1, cfg.SOLVER.IMS_PER_BATCH // cfg.SOLVER.ACCUMULATE_STEPS)


def factor_regressor_mapping(cfg: CfgNode) -> tuple[Factor, ...] | None:
    """The factor regressor's mapping for ``DATASETS.TRAIN``, or None when it is off.

    ``MODEL.FACTOR_REGRESSOR.ENABLED``: "auto" (on when every training dataset has a mapping
    and all share it), "true"/"on" (an error if they have none), "false"/"off" (yacs keeps the
    key a string, so booleans are given as these words; a YAML/CLI bool is accepted too).

    Args:
        cfg: the config.

    Returns:
        The mapping as ``Factor`` tuples, or None.

    Raises:
        ValueError: an unknown ENABLED value, or "true" for datasets without one mapping.
    """
    raw = cfg.MODEL.FACTOR_REGRESSOR.ENABLED
    key = str(raw).lower()
    if key not in FACTOR_SWITCH:
        raise ValueError(
            f"MODEL.FACTOR_REGRESSOR.ENABLED must be one of {sorted(FACTOR_SWITCH)}, got {raw!r}"
        )
    switch = FACTOR_SWITCH[key]
    if switch is False:
        return None
    names = cfg.DATASETS.TRAIN
    names = (names,) if isinstance(names, str) else tuple(names)
    mappings = {factor_mapping(n) for n in names}
    if len(mappings) == 1 and None not in mappings:
        return tuple(Factor(*m) for m in mappings.pop())
    if switch is True:
        raise ValueError(
            "MODEL.FACTOR_REGRESSOR.ENABLED is on, but DATASETS.TRAIN "
            f"{names} do not share one factor mapping (folder: and sprites have none)"
        )
    return None


def build_model(cfg: CfgNode) -> IODINE:
    """Build IODINE from ``cfg.MODEL`` (architecture, likelihood, prior, switches).

    Args:
        cfg: a config from ``lib.config.get_cfg()`` / ``load_cfg()``.

    Returns:
        The model on the CPU, in training mode; ``MODEL.CHANNELS_LAST`` and ``MODEL.COMPILE``
        applied; ``model.factor_regressor`` set when ``factor_regressor_mapping`` gives one.
    """
    m, r, d = cfg.MODEL.IODINE, cfg.MODEL.REFINEMENT, cfg.MODEL.DECODER
    model = IODINE(
        num_slots=m.NUM_SLOTS,
        num_iters=m.NUM_ITERS,
        latent_dim=m.LATENT_DIM,
        image_inputs=tuple(r.IMAGE_INPUTS),
        vector_inputs=tuple(r.VECTOR_INPUTS),
        coord_type=r.COORD_TYPE,
        refine_conv_channels=tuple(r.CONV_CHANNELS),
        refine_kernel_size=r.KERNEL_SIZE,
        refine_stride=r.STRIDE,
        refine_padding=r.PADDING,
        refine_mlp_sizes=tuple(r.MLP_SIZES),
        refine_lstm_size=r.LSTM_SIZE,
        refine_pool=r.POOL,
        refine_lstm_init=r.LSTM_INIT,
        refine_lstm_forget_bias=r.LSTM_FORGET_BIAS,
        image_size=cfg.INPUT.IMAGE_SIZE,
        decoder_conv_channels=tuple(d.CONV_CHANNELS),
        decoder_kernel_size=d.KERNEL_SIZE,
        decoder_output_kernel_size=d.OUTPUT_KERNEL_SIZE,
        decoder_factorized_first_layer=d.FACTORIZED_FIRST_LAYER,
        decoder_blob_init_gain=d.BLOB_INIT_GAIN,
        likelihood=m.LIKELIHOOD,
        pixel_scale=m.PIXEL_SCALE,
        prior_scale=m.PRIOR_SCALE,
        loss_weights=m.LOSS_WEIGHTS,
        eval_sample=m.EVAL_SAMPLE,
        eval_seed=m.EVAL_SEED,
        init=m.INIT,
        init_posterior_scale=m.INIT_POSTERIOR_SCALE,
        legacy_constants=m.LEGACY_CONSTANTS,
        grad_input_reduction=m.GRAD_INPUT_REDUCTION,
        eval_grad_divisor=eval_grad_divisor(cfg),
    )
    mapping = factor_regressor_mapping(cfg)
    if mapping is not None:
        model.factor_regressor = FactorRegressor(
            latent_dim=m.LATENT_DIM,
            mapping=mapping,
            loss_weight=cfg.MODEL.FACTOR_REGRESSOR.LOSS_WEIGHT,
        )
    if cfg.MODEL.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    if cfg.MODEL.COMPILE:
        model.compile_("step")
    return model


def trainable_parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameters of IODINE and of the factor regressor, counted apart.

    Args:
        model: a model from ``build_model`` (possibly compiled or wrapped).

    Returns:
        ``{"iodine": n, "factor_regressor": m}``; the released models have 1,177,168 (CLEVR6),
        339,152 (Multi-dSprites) and 199,568 (Tetrominoes) IODINE parameters.
    """
    counts = {"iodine": 0, "factor_regressor": 0}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            counts["factor_regressor" if "factor" in name else "iodine"] += parameter.numel()
    return counts
