"""Latent traversal: vary one slot's latent dimensions and decode, the other slots held fixed.

Also what the traversal figure draws: the slot (by default the largest non-background one),
its dimensions of largest KL (the paper's ranking), the offsets and their unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lib.errors import ConfigError, RunError

# What ``--range`` is measured in: absolute latent units, the varied dimension's posterior
# std, or the prior std.
RANGE_UNITS = ("absolute", "posterior", "prior")


def choose_traversal_slot(masks: Tensor, true_mask: Tensor | None = None) -> int:
    """The largest slot (sum of its soft mask) other than the background slot; 0 for one slot.

    The background slot holds the most mask mass on true background pixels (label 0) when
    ``true_mask`` has any, else it is the slot of largest area.

    Args:
        masks: (K, H, W) softmax masks of the image.
        true_mask: (H, W) label map, or None.
    """
    if masks.shape[0] == 1:
        return 0
    area = masks.float().sum(dim=(1, 2))
    if true_mask is not None and bool((true_mask == 0).any()):
        background = (masks.float() * (true_mask == 0).to(masks.device)).sum(dim=(1, 2))
        area[int(background.argmax())] = -1.0
    else:
        area[int(area.argmax())] = -1.0
    return int(area.argmax())


def rank_latent_dims(kl: Tensor, num_dims: int) -> list[int]:
    """The ``num_dims`` (clipped to [0, D]) indices of largest KL (D,), largest first, ties
    by lower index."""
    order = sorted(range(kl.shape[0]), key=lambda d: (-float(kl[d]), d))
    return order[: max(0, num_dims)]


def traversal_offsets(value_range: float, steps: int) -> Tensor:
    """(steps,) ``linspace(-value_range, value_range, steps)``, ``[0]`` for one step.

    Raises:
        ConfigError: ``steps`` < 1.
    """
    if steps < 1:
        raise ConfigError(f"the offsets per dimension (--steps-per-dim) must be >= 1, got {steps}")
    if steps == 1:
        return torch.zeros(1, device="cpu")
    return torch.linspace(-value_range, value_range, steps, device="cpu")


def traverse_slot(
    model: nn.Module,
    loc: Tensor,
    slot: int,
    dims: Sequence[int],
    offsets: Tensor,
    height: int,
    width: int,
    unit: Tensor | None = None,
) -> dict[str, Tensor]:
    """Decode the posterior means with one slot's latent dimensions varied, one at a time.

    The decoder treats slots independently, so the other slots (z = ``loc``) are decoded once
    and reused, bit-identical, for every point; only the chosen slot is decoded per point.
    Masks (softmax over the slots) and the reconstruction (sum_k m_k mu_k) are formed as in
    ``model.decode``, so the other slots change only through the softmax.

    Args:
        model: the IODINE model (its ``decode``).
        loc: (K, D) posterior means of one image.
        slot: the slot whose latent varies.
        dims: the R latent dimensions to vary (one row each).
        offsets: (S,) values added to ``loc[slot, d]``, times ``unit[d]`` when given.
        height, width: decoded image size.
        unit: (D,) scale of the offsets, or None for absolute offsets.

    Returns:
        float32 on the CPU: ``z`` (R, S, K, D), ``mask_logits`` and ``masks`` (R, S, K, H, W),
        ``components`` (R, S, K, 3, H, W), ``recon`` (R, S, 3, H, W), and ``base``, the
        decoding of ``loc`` (the same keys without R, S).

    Raises:
        ValueError: ``slot`` or a dimension out of range.
    """
    k, d = loc.shape
    if not 0 <= slot < k:
        raise ValueError(f"slot {slot} is not in [0, {k})")
    dims = list(dims)
    if any(not 0 <= dim < d for dim in dims):
        raise ValueError(f"latent dimensions {dims} are not all in [0, {d})")
    r, s = len(dims), offsets.shape[0]
    loc, offsets = loc.detach(), offsets.to(loc)
    scale = torch.ones_like(loc[0]) if unit is None else unit.to(loc)
    with torch.no_grad():
        base = model.decode(loc[None], height, width)
        z = loc.expand(r, s, k, d).clone()
        for i, dim in enumerate(dims):
            z[i, :, slot, dim] = loc[slot, dim] + offsets * scale[dim]
        varied = model.decode(z[:, :, slot].reshape(r * s, 1, d), height, width)
        mask_logits = base["mask_logits"].expand(r * s, k, height, width).clone()
        components = base["components"].expand(r * s, k, 3, height, width).clone()
        mask_logits[:, slot] = varied["mask_logits"][:, 0]
        components[:, slot] = varied["components"][:, 0]
        masks = torch.softmax(mask_logits, dim=1)
        recon = (masks[:, :, None] * components).sum(dim=1)
    grid = {"mask_logits": mask_logits, "components": components, "masks": masks, "recon": recon}
    out = {key: v.unflatten(0, (r, s)).float().cpu() for key, v in grid.items()}
    out["z"] = z.float().cpu()
    out["base"] = {key: v[0].float().cpu() for key, v in base.items()}
    return out


@dataclass(frozen=True)
class TraversalInputs:
    """What the traversal figure draws besides the image: ``traverse_slot``'s output, the
    varied ``slot``, its R ``dims`` (largest KL first), its (D,) ``kl`` to the prior, the (S,)
    ``offsets`` and ``unit_name``, what they are measured in."""

    traversal: dict[str, Tensor | dict[str, Tensor]]
    slot: int
    dims: list[int]
    kl: Tensor
    offsets: Tensor
    unit_name: str


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
        out: ``run_model`` output (``posterior_loc`` / ``posterior_scale`` (N, T+1, K, D),
            ``masks`` (N, T+1, K, H, W)).
        true_mask: (H, W) label map of the first image, or None (for the default slot).
        device: where the model is.
        slot: the slot to vary; negative: ``choose_traversal_slot``.
        num_dims: dimensions of largest KL to vary (rows).
        value_range, steps_per_dim: offsets ``linspace(-value_range, value_range,
            steps_per_dim)`` (columns).
        unit: one of ``RANGE_UNITS``.

    Raises:
        RunError: ``slot`` is not a slot of the model.
    """
    loc, scale = out["posterior_loc"][0, -1], out["posterior_scale"][0, -1]  # (K, D)
    if slot < 0:
        slot = choose_traversal_slot(out["masks"][0, -1], true_mask)
    if not 0 <= slot < loc.shape[0]:
        raise RunError(f"--slot {slot} is out of range: the model has K={loc.shape[0]} slots")
    with torch.no_grad():
        kl = model.latent_kl(loc.to(device), scale.to(device))[slot].float().cpu()  # (D,)
    dims = rank_latent_dims(kl, num_dims)
    offsets = traversal_offsets(value_range, steps_per_dim)
    prior = float(model.prior_scale)
    scale_unit, unit_name = {
        "absolute": (None, "absolute latent units"),
        "posterior": (scale[slot], "posterior std of each dimension"),
        "prior": (torch.full_like(scale[slot], prior), f"prior std ({prior:.3f})"),
    }[unit]
    height, width = out["masks"].shape[-2:]
    traversal = traverse_slot(
        model, loc.to(device), slot, dims, offsets, height, width,
        None if scale_unit is None else scale_unit.to(device),
    )  # fmt: skip
    return TraversalInputs(traversal, slot, dims, kl, offsets, unit_name)
