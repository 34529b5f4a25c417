"""The refinement inputs: one table from each input's name to its facts and how it is made,
so the assembly, the channel count and the LayerNorms cannot fall out of step.

Shapes: B images, K slots, D latent size, H x W pixels; c coordinate channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

import lib.model.distributions as dist
from lib import spec
from lib.errors import ConfigError
from lib.model.layers import SlotLayerNorm


class StepTensors(NamedTuple):
    """What one refinement step's inputs are made from.

    Attributes:
        images: (B, 3, H, W); coords: (c, H, W).
        flat_lam: (B*K, 2D) the current lambda, slots folded into the batch.
        mu: (B, K, 3, H, W) decoded means; mask_logits, log_masks, comp_lp: (B, K, H, W);
        log_px: (B, H, W) log mixture density.
        d_lam: (B, K, 2D), d_mu: (B, K, 3, H, W), d_logits: (B, K, H, W): gradients of the
            step loss (plain tensors, no graph).
    """

    images: torch.Tensor
    coords: torch.Tensor
    flat_lam: torch.Tensor
    mu: torch.Tensor
    mask_logits: torch.Tensor
    log_masks: torch.Tensor
    comp_lp: torch.Tensor
    log_px: torch.Tensor
    d_lam: torch.Tensor
    d_mu: torch.Tensor
    d_logits: torch.Tensor


# The table: name -> (facts, maker). The released inputs take their facts from
# ``lib.spec.REFINEMENT_INPUTS``, the frozen record of the released architecture that the paper
# configs and the converter read. A new input is one row at the end of the table, with its own
# facts, plus its maker function: the released configs, the converter and their tests do not
# change.
# Image-sized makers return (B or 1, K or 1, C, H or 1, W or 1): a per-image input keeps a
# slot axis of 1 so that its LayerNorm (if any) sees one image, then it is broadcast over K
# with expand (never repeat-then-view, which scrambles images across the batch). Vector makers
# return (B*K, C) or (1, C).
class InputEntry(NamedTuple):
    """One row of the table: the input's facts (vector?, channels, LayerNorm) and its maker."""

    spec: spec.RefinementInput
    make: Callable[[StepTensors], torch.Tensor]


def _counterfactual(s: StepTensors) -> torch.Tensor:
    # log p(x) - log p(x without slot k), all k at once; stop-gradient.
    with torch.no_grad():
        loo = dist.leave_one_out_log_prob(s.mask_logits.detach(), s.comp_lp.detach())
        return (s.log_px.detach()[:, None] - loo)[:, :, None]  # (B, K, 1, H, W)


_MAKERS: dict[str, Callable[[StepTensors], torch.Tensor]] = {
    "capacity": lambda s: s.mu.new_full((1, 1, 1, 1, 1), 0.5),
    "components": lambda s: s.mu,
    "coordinates": lambda s: s.coords[None, None],  # (1, 1, c, H, W)
    "counterfactual": _counterfactual,
    "dcomponents": lambda s: s.d_mu,
    "dmask": lambda s: s.d_logits[:, :, None],
    "image": lambda s: s.images[:, None],  # (B, 1, 3, H, W)
    "log_prob": lambda s: s.log_px.detach()[:, None, None],  # (B, 1, 1, H, W), per image
    "mask": lambda s: s.mask_logits[:, :, None],
    "posterior": lambda s: dist.component_posterior(s.comp_lp)[:, :, None],
    "pred_mask": lambda s: s.log_masks.exp()[:, :, None],
    "dzp": lambda s: s.d_lam.reshape(s.flat_lam.shape),
    "flat_capacity": lambda s: s.flat_lam.new_full((1, 1), 0.5),
    "zp": lambda s: s.flat_lam,
}
REFINEMENT_INPUT_TABLE: dict[str, InputEntry] = {
    **{name: InputEntry(fact, _MAKERS[name]) for name, fact in spec.REFINEMENT_INPUTS.items()},
    # New inputs here, e.g. "edges": InputEntry(spec.RefinementInput("edges", False, 1), _edges),
}


def input_channels(name: str, coord_type: str, latent_dim: int) -> int:
    """Channels of one input of the table (a vector input's size).

    Raises:
        KeyError: an input the table does not have.
    """
    fixed = REFINEMENT_INPUT_TABLE[name].spec.channels
    return fixed or spec.input_channels(name, coord_type, latent_dim)


def check_inputs(image_inputs: Sequence[str], vector_inputs: Sequence[str]) -> None:
    """Refuse names the table does not have, or an input on the wrong side.

    Raises:
        ConfigError: naming the config key and the unknown inputs.
    """
    for key, names, vector in (("IMAGE", image_inputs, False), ("VECTOR", vector_inputs, True)):
        known = sorted(n for n, e in REFINEMENT_INPUT_TABLE.items() if e.spec.vector == vector)
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ConfigError(
                f"config key MODEL.REFINEMENT.{key}_INPUTS has unknown names {unknown}; "
                f"known: {known}"
            )


def refinement_channels(
    image_inputs: Sequence[str], vector_inputs: Sequence[str], coord_type: str, latent_dim: int
) -> tuple[int, int]:
    """Channels of the concatenated image-sized inputs and size of the concatenated vectors.

    Args:
        image_inputs, vector_inputs: the inputs used.
        coord_type: "linear" or "cosine".
        latent_dim: D.

    Returns:
        (image channels, vector size).
    """
    size = [
        sum(input_channels(n, coord_type, latent_dim) for n in names)
        for names in (image_inputs, vector_inputs)
    ]
    return size[0], size[1]


def make_input_norms(used: Sequence[str], coord_type: str, latent_dim: int) -> nn.ModuleDict:
    """One ``SlotLayerNorm`` per normalised input that is used, in the released order.

    Args:
        used: every input used (image-sized and vector).
        coord_type: "linear" or "cosine".
        latent_dim: D.

    Returns:
        ``{name: SlotLayerNorm(channels)}``.
    """
    return nn.ModuleDict(
        {
            n: SlotLayerNorm(input_channels(n, coord_type, latent_dim))
            for n in sorted(used)
            if REFINEMENT_INPUT_TABLE[n].spec.normalised
        }
    )


def _made(name: str, s: StepTensors, norms: nn.ModuleDict) -> torch.Tensor:
    """One input, LayerNorm-ed over each leading item jointly when the table says so."""
    entry = REFINEMENT_INPUT_TABLE[name]
    value = entry.make(s)
    if entry.spec.normalised:
        lead = 2 if value.dim() == 5 else 1  # (B, K', ...) image-sized, (N, C) vector
        flat = value.reshape(-1, *value.shape[lead:])
        value = norms[name](flat).view(value.shape)
    return value


def assemble_inputs(
    s: StepTensors,
    image_inputs: Sequence[str],
    vector_inputs: Sequence[str],
    norms: nn.ModuleDict,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the refinement inputs in the given (released, alphabetical) order.

    Args:
        s: the step's tensors.
        image_inputs, vector_inputs: the inputs used, sorted.
        norms: ``make_input_norms``'s LayerNorms.

    Returns:
        image inputs (B*K, C_in, H, W) and vector inputs (B*K, V).
    """
    b, k, _, h, w = s.mu.shape
    spatial = []
    for name in image_inputs:
        value = _made(name, s, norms)
        target = (b, k, value.shape[2], h, w)
        spatial.append(value if value.shape == target else value.expand(target))
    image_in = torch.cat(spatial, dim=2)  # (B, K, C_in, H, W)
    image_in = image_in.reshape(b * k, -1, h, w)  # (B*K, C_in, H, W)
    vectors = []
    for name in vector_inputs:
        value = _made(name, s, norms)
        vectors.append(value if value.shape[0] == b * k else value.expand(b * k, -1))
    return image_in, torch.cat(vectors, dim=1)  # (B*K, V)
