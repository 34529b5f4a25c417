"""Latent traversal: vary one slot's latent dimensions and decode, the others held fixed.

Also the default choices of a traversal: which slot (the largest non-background one) and which
dimensions (largest KL first, the paper's ranking).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def choose_traversal_slot(masks: Tensor, true_mask: Tensor | None = None) -> int:
    """The default slot of a traversal: the largest slot that is not the background slot.

    The background slot is the one holding the most mask mass on true background pixels
    (label 0) when ``true_mask`` is given and has background, else the slot of largest mask
    area. Among the other slots the one of largest mask area (sum of its soft mask) is chosen.
    With a single slot, 0.

    Args:
        masks: (K, H, W) softmax masks of the image (final step).
        true_mask: (H, W) label map, or None.

    Returns:
        The slot index.
    """
    k = masks.shape[0]
    if k == 1:
        return 0
    area = masks.float().sum(dim=(1, 2))
    if true_mask is not None and bool((true_mask == 0).any()):
        background = (masks.float() * (true_mask == 0).to(masks.device).float()).sum(dim=(1, 2))
        bg_slot = int(background.argmax())
    else:
        bg_slot = int(area.argmax())
    area[bg_slot] = -1.0
    return int(area.argmax())


def rank_latent_dims(kl: Tensor, num_dims: int) -> list[int]:
    """Latent dimensions in decreasing order of KL (the paper's ranking for traversals).

    Args:
        kl: (D,) per-dimension KL of one slot's posterior to the prior.
        num_dims: how many to return (clipped to [0, D]).

    Returns:
        The indices of the ``num_dims`` largest entries, largest first (ties: lower index).
    """
    order = sorted(range(kl.shape[0]), key=lambda d: (-float(kl[d]), d))
    return order[: max(0, min(num_dims, kl.shape[0]))]


def traversal_offsets(value_range: float, steps: int) -> Tensor:
    """Offsets added to a latent dimension, evenly spaced and centred on 0.

    Args:
        value_range: largest absolute offset.
        steps: number of offsets (odd: the middle one is 0, the unchanged latent).

    Returns:
        (steps,) float32 ``linspace(-value_range, value_range, steps)``; ``[0]`` for one step.

    Raises:
        ValueError: ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
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

    The other slots keep z = ``loc``. The decoder treats each slot independently (slots are
    folded into the batch), so the unchanged slots are decoded once with ``model.decode`` and
    reused for every traversal point, which makes them bit-identical across the traversal;
    only the chosen slot is decoded again for each point. Masks are the softmax over the slots'
    mask logits and the reconstruction is sum_k m_k mu_k, exactly as ``model.decode`` computes
    them, so the other slots' masks, masked components and the reconstruction change only
    through the softmax.

    Args:
        model: the IODINE model (its ``decode``).
        loc: (K, D) posterior means of one image (usually the final step).
        slot: the slot whose latent varies.
        dims: latent dimensions to vary (one row each).
        offsets: (S,) values added to ``loc[slot, d]``.
        height, width: decoded image size.
        unit: (D,) scale the offsets are multiplied by (e.g. the slot's posterior std), or
            None for absolute offsets.

    Returns:
        dict with ``z`` (R, S, K, D), ``mask_logits`` (R, S, K, H, W), ``components``
        (R, S, K, 3, H, W), ``masks`` (R, S, K, H, W) and ``recon`` (R, S, 3, H, W), R =
        len(dims); and ``base`` = ``model.decode`` of ``loc`` (entries without the R, S axes).

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
    loc = loc.detach()
    offsets = offsets.to(loc)
    scale = torch.ones(d, dtype=loc.dtype, device=loc.device) if unit is None else unit.to(loc)
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
    return {
        "z": z,
        "mask_logits": mask_logits.view(r, s, k, height, width),
        "components": components.view(r, s, k, 3, height, width),
        "masks": masks.view(r, s, k, height, width),
        "recon": recon.view(r, s, 3, height, width),
        "base": {name: value[0] for name, value in base.items()},
    }
