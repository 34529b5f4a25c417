"""The refinement inputs: one table from each input's name to how it is made.

Which inputs exist, their channels, which are LayerNorm-ed and which are legacy constants are
facts of the released model, kept torch-free in ``lib.spec.REFINEMENT_INPUTS``; each entry of
``REFINEMENT_INPUT_TABLE`` pairs that fact with the function that computes the input, so the
assembly and the channel count cannot fall out of step.

Shapes: B images, K slots, D latent size, H x W pixels; c coordinate channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

import lib.model.distributions as dist
from lib import spec
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


# Image-sized makers return (B or 1, K or 1, C, H or 1, W or 1): a per-image input keeps a
# slot axis of 1 so that its LayerNorm (if any) sees one image, then it is broadcast over K
# with expand (never repeat-then-view, which scrambles images across the batch).
def _counterfactual(s: StepTensors) -> torch.Tensor:
    # log p(x) - log p(x without slot k), all k at once; stop-gradient.
    with torch.no_grad():
        loo = dist.leave_one_out_log_prob(s.mask_logits.detach(), s.comp_lp.detach())
        return (s.log_px.detach()[:, None] - loo)[:, :, None]  # (B, K, 1, H, W)


_IMAGE_MAKERS: dict[str, Callable[[StepTensors], torch.Tensor]] = {
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
}
# Vector makers return (B*K, C) or (1, C).
_VECTOR_MAKERS: dict[str, Callable[[StepTensors], torch.Tensor]] = {
    "dzp": lambda s: s.d_lam.reshape(s.flat_lam.shape),
    "flat_capacity": lambda s: s.flat_lam.new_full((1, 1), 0.5),
    "zp": lambda s: s.flat_lam,
}


class InputEntry(NamedTuple):
    """One row of the table: the released facts (channels, LayerNorm) and the maker."""

    spec: spec.RefinementInput
    make: Callable[[StepTensors], torch.Tensor]


REFINEMENT_INPUT_TABLE: dict[str, InputEntry] = {
    name: InputEntry(fact, (_VECTOR_MAKERS if fact.vector else _IMAGE_MAKERS)[name])
    for name, fact in spec.REFINEMENT_INPUTS.items()
}


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
        sum(spec.input_channels(n, coord_type, latent_dim) for n in names)
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
            n: SlotLayerNorm(spec.input_channels(n, coord_type, latent_dim))
            for n in spec.NORMALISED_INPUTS
            if n in used
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
