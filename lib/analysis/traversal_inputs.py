"""Inputs of the traversal figure: slot, dimensions, offsets and their unit, the decoded points.

From one image's forward pass: the final-step posterior (K, D), the slot to vary (given, else
``choose_traversal_slot``), its latent dimensions of largest KL, the offsets in the chosen unit
and ``traverse_slot``'s decodings, everything on the CPU for
``lib.analysis.figures.traversal_figure``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lib.analysis.loading import to_cpu
from lib.analysis.traversal import (
    choose_traversal_slot,
    rank_latent_dims,
    traversal_offsets,
    traverse_slot,
)
from lib.errors import RunError

# What ``--range`` is measured in: absolute latent units, the varied dimension's posterior
# std, or the prior std.
RANGE_UNITS = ("absolute", "posterior", "prior")


@dataclass(frozen=True)
class TraversalInputs:
    """What ``traversal_figure`` draws besides the input image (all on the CPU).

    Attributes:
        traversal: ``traverse_slot``'s output (entries (R, S, ...), and ``base``).
        slot: the varied slot.
        dims: the R varied dimensions, largest KL first.
        kl: (D,) the slot's per-dimension KL to the prior.
        offsets: (S,) offsets, in units of ``unit_name``.
        unit_name: what the offsets are measured in, for the title.
    """

    traversal: dict[str, Tensor | dict[str, Tensor]]
    slot: int
    dims: list[int]
    kl: Tensor
    offsets: Tensor
    unit_name: str


def range_unit(name: str, posterior_scale: Tensor, prior_scale: float) -> tuple[Tensor | None, str]:
    """The (D,) scale the traversal offsets are multiplied by, and its name for the title.

    Args:
        name: one of ``RANGE_UNITS``.
        posterior_scale: (D,) posterior std of the varied slot.
        prior_scale: the model's prior std.

    Returns:
        ``(scale or None for absolute offsets, unit name)``.
    """
    if name == "absolute":
        return None, "absolute latent units"
    if name == "posterior":
        return posterior_scale, "posterior std of each dimension"
    return torch.full_like(posterior_scale, float(prior_scale)), f"prior std ({prior_scale:.3f})"


def traversal_inputs(
    model: nn.Module,
    out: Mapping[str, Tensor],
    true_mask: Tensor | None,
    device: torch.device,
    *,
    slot: int,
    num_dims: int,
    value_range: float,
    steps_per_dim: int,
    unit: str,
) -> TraversalInputs:
    """Traverse one slot of the first image of a forward pass, at its final step.

    Args:
        model: the model (``latent_kl``, ``decode``, ``prior_scale``), in eval mode.
        out: ``run_model`` output: ``posterior_loc`` / ``posterior_scale`` (N, T+1, K, D),
            ``masks`` (N, T+1, K, H, W), on the CPU.
        true_mask: (H, W) label map of the first image, or None (for the default slot).
        device: where the model is.
        slot: the slot to vary; negative: ``choose_traversal_slot``.
        num_dims: dimensions of largest KL to vary (rows).
        value_range: offsets run over ``linspace(-value_range, value_range)``.
        steps_per_dim: offsets per dimension (columns).
        unit: one of ``RANGE_UNITS``.

    Returns:
        The traversal's inputs.

    Raises:
        RunError: ``slot`` is not a slot of the model.
    """
    loc, scale = out["posterior_loc"][0, -1], out["posterior_scale"][0, -1]  # (K, D)
    k = loc.shape[0]
    if slot < 0:
        slot = choose_traversal_slot(out["masks"][0, -1], true_mask)
    if not 0 <= slot < k:
        raise RunError(f"--slot {slot} is out of range: the model has K={k} slots")
    with torch.no_grad():
        kl = model.latent_kl(loc.to(device), scale.to(device))[slot].float().cpu()  # (D,)
    dims = rank_latent_dims(kl, num_dims)
    offsets = traversal_offsets(value_range, steps_per_dim)
    scale_unit, unit_name = range_unit(unit, scale[slot], float(model.prior_scale))
    height, width = out["masks"].shape[-2:]
    traversal = traverse_slot(
        model, loc.to(device), slot, dims, offsets, height, width,
        None if scale_unit is None else scale_unit.to(device),
    )  # fmt: skip
    return TraversalInputs(to_cpu(traversal), slot, dims, kl, offsets, unit_name)
