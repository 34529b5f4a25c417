"""``build_model(cfg)``: the only place that reads the config for the model.

It builds the parts (decoder, refinement network, factor regressor), initialises them and
hands them to ``IODINE`` (detectron2's ``from_config`` style: the modules take explicit
arguments, this file maps config keys onto them).
"""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from lib import spec
from lib.model.compile import compile_model
from lib.model.decoder import SpatialBroadcastDecoder
from lib.model.factor_regressor import Factor, FactorRegressor
from lib.model.iodine import IODINE, released_initial_posterior
from lib.model.layers import released_init_
from lib.model.refinement import RefinementNetwork
from lib.model.refinement_inputs import check_inputs, refinement_channels

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
    names = spec.dataset_names(cfg.DATASETS.TRAIN)
    mappings = {spec.factor_mapping(n) for n in names}
    if len(mappings) == 1 and None not in mappings:
        return tuple(Factor(*m) for m in mappings.pop())
    if switch is True:
        raise ValueError(
            "MODEL.FACTOR_REGRESSOR.ENABLED is on, but DATASETS.TRAIN "
            f"{names} do not share one factor mapping (folder: and sprites have none)"
        )
    return None


def _used_inputs(cfg: CfgNode) -> tuple[tuple[str, ...], tuple[str, ...]]:
    r = cfg.MODEL.REFINEMENT
    check_inputs(r.IMAGE_INPUTS, r.VECTOR_INPUTS)
    return spec.used_inputs(r.IMAGE_INPUTS, r.VECTOR_INPUTS, cfg.MODEL.IODINE.LEGACY_CONSTANTS)


def build_decoder(cfg: CfgNode) -> SpatialBroadcastDecoder:
    """The spatial broadcast decoder of ``MODEL.DECODER`` (PyTorch's default init)."""
    d = cfg.MODEL.DECODER
    return SpatialBroadcastDecoder(
        cfg.MODEL.IODINE.LATENT_DIM,
        conv_channels=tuple(d.CONV_CHANNELS),
        kernel_size=d.KERNEL_SIZE,
        output_kernel_size=d.OUTPUT_KERNEL_SIZE,
        legacy_constant=cfg.MODEL.IODINE.LEGACY_CONSTANTS,
        factorized_first_layer=d.FACTORIZED_FIRST_LAYER,
    )


def build_refinement(cfg: CfgNode) -> RefinementNetwork:
    """The refinement network of ``MODEL.REFINEMENT`` (PyTorch's default init); its input
    channels follow from the inputs used (``lib.model.refinement_inputs``)."""
    r, latent_dim = cfg.MODEL.REFINEMENT, cfg.MODEL.IODINE.LATENT_DIM
    in_channels, vector_dim = refinement_channels(*_used_inputs(cfg), r.COORD_TYPE, latent_dim)
    return RefinementNetwork(
        in_channels,
        vector_dim,
        2 * latent_dim,
        conv_channels=tuple(r.CONV_CHANNELS),
        kernel_size=r.KERNEL_SIZE,
        stride=r.STRIDE,
        padding=r.PADDING,
        mlp_sizes=tuple(r.MLP_SIZES),
        lstm_size=r.LSTM_SIZE,
        pool=r.POOL,
        image_size=cfg.INPUT.IMAGE_SIZE,
    )


def initialise_(cfg: CfgNode, decoder: nn.Module, refinement: nn.Module) -> None:
    """``MODEL.IODINE.INIT`` and ``MODEL.DECODER.BLOB_INIT_GAIN`` applied in place.

    Raises:
        ValueError: an unknown INIT.
    """
    init, r = cfg.MODEL.IODINE.INIT, cfg.MODEL.REFINEMENT
    if init == "released":
        lstm = {"lstm_init": r.LSTM_INIT, "lstm_forget_bias": r.LSTM_FORGET_BIAS}
        released_init_(decoder, **lstm)
        released_init_(refinement, **lstm)
    elif init != "pytorch":
        raise ValueError(f"init must be one of {spec.INITS}, got {init!r}")
    if cfg.MODEL.DECODER.BLOB_INIT_GAIN > 0:
        decoder.blob_init_(cfg.MODEL.DECODER.BLOB_INIT_GAIN)


def build_factor_regressor(cfg: CfgNode) -> FactorRegressor | None:
    """The factor regressor when ``factor_regressor_mapping`` gives a mapping, else None."""
    mapping = factor_regressor_mapping(cfg)
    if mapping is None:
        return None
    return FactorRegressor(
        latent_dim=cfg.MODEL.IODINE.LATENT_DIM,
        mapping=mapping,
        loss_weight=cfg.MODEL.FACTOR_REGRESSOR.LOSS_WEIGHT,
    )


def build_model(cfg: CfgNode) -> IODINE:
    """Build IODINE from ``cfg.MODEL`` (architecture, likelihood, prior, switches).

    Args:
        cfg: a config from ``lib.config.get_cfg()`` / ``load_cfg()``.

    Returns:
        The model on the CPU, in training mode; ``MODEL.CHANNELS_LAST`` and ``MODEL.COMPILE``
        applied; its ``factor_regressor`` set when ``factor_regressor_mapping`` gives one.
    """
    m, r = cfg.MODEL.IODINE, cfg.MODEL.REFINEMENT
    # The draws from torch's generator keep this order (decoder, refinement, initial lambda,
    # released init, factor regressor), so a seed gives the weights it always gave.
    decoder = build_decoder(cfg)
    refinement = build_refinement(cfg)
    init_lambda = released_initial_posterior(m.LATENT_DIM, m.INIT_POSTERIOR_SCALE)
    initialise_(cfg, decoder, refinement)
    image_inputs, vector_inputs = _used_inputs(cfg)
    model = IODINE(
        decoder=decoder,
        refinement=refinement,
        factor_regressor=build_factor_regressor(cfg),
        initial_posterior=init_lambda,
        num_slots=m.NUM_SLOTS,
        num_iters=m.NUM_ITERS,
        latent_dim=m.LATENT_DIM,
        image_inputs=image_inputs,
        vector_inputs=vector_inputs,
        coord_type=r.COORD_TYPE,
        likelihood=m.LIKELIHOOD,
        pixel_scale=m.PIXEL_SCALE,
        prior_scale=m.PRIOR_SCALE,
        loss_weights=m.LOSS_WEIGHTS,
        eval_sample=m.EVAL_SAMPLE,
        eval_seed=m.EVAL_SEED,
        grad_input_reduction=m.GRAD_INPUT_REDUCTION,
        eval_grad_divisor=eval_grad_divisor(cfg),
    )
    if cfg.MODEL.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    if cfg.MODEL.COMPILE:
        compile_model(model, "step")
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
