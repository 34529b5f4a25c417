"""``build_model(cfg)``: the only place that reads the config for the model."""

from __future__ import annotations

import torch
from yacs.config import CfgNode

from lib.model.iodine import IODINE


def build_model(cfg: CfgNode) -> IODINE:
    """Build IODINE from ``cfg.MODEL`` (architecture, likelihood, prior, switches).

    Args:
        cfg: a config from ``lib.config.get_cfg()`` / ``load_cfg()``.

    Returns:
        The model on the CPU, in training mode; ``MODEL.CHANNELS_LAST`` and ``MODEL.COMPILE``
        applied.
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
    )
    if cfg.MODEL.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    if cfg.MODEL.COMPILE:
        model.decoder = torch.compile(model.decoder)
        model.refinement = torch.compile(model.refinement)
    return model
