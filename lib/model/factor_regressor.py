"""The released factor regressor: a linear read-out of the object factors from each slot's z.

DeepMind's IODINE training (``iodine/modules/factor_eval.py`` ``FactorRegressor``) carries a
linear map ``predict_latents`` from stop-gradient final z per slot to every object factor.
Each true object is matched to the slot whose final softmax mask overlaps its true mask most;
the loss over the matched pairs, divided by the number of visible objects, joins the total loss
(so its gradient enters the clipping norm), while its input is detached, so IODINE's own
gradients do not change. It reports R^2 for scalar and angle factors and accuracy for
categorical ones.

Shapes: B images, K slots, L true entities (background included, entry 0), Z latent size,
M = sum of the factor sizes in mapping order, H x W pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lib.spec import FACTOR_TYPES, Factor


def preprocess_factor(factor: Factor, value: torch.Tensor) -> torch.Tensor:
    """The released target of one factor.

    Args:
        factor: the factor.
        value: (B, L) or (B, L, n) raw values: labels for categorical, radians for angle.

    Returns:
        (B, L, factor.size) float32.

    Raises:
        ValueError: the preprocessed size is not ``factor.size``.
    """
    flat = value.reshape(value.shape[0], value.shape[1], -1)
    if factor.type == "categorical":
        classes = torch.arange(factor.size, device=value.device)
        out = (flat[..., :1].round().long() == classes).float()
    elif factor.type == "angle":
        out = torch.cat([torch.cos(flat.float()), torch.sin(flat.float())], dim=-1)
    elif factor.type == "scalar":
        out = flat.float()
    else:
        raise ValueError(f"factor {factor.name!r}: unknown type {factor.type!r} ({FACTOR_TYPES})")
    if out.shape[-1] != factor.size:
        raise ValueError(
            f"factor {factor.name!r} ({factor.type}) has {out.shape[-1]} values per object "
            f"after preprocessing, the mapping says {factor.size}"
        )
    return out


def match_objects(
    pred_masks: torch.Tensor, true_masks: torch.Tensor, visibility: torch.Tensor
) -> torch.Tensor:
    """Assign each true object to the slot whose mask overlaps it most (released rule).

    Args:
        pred_masks: (B, K, H, W) softmax masks.
        true_masks: (B, L, H, W) 0/1 masks of the true entities.
        visibility: (B, L) 1 for visible entities, 0 for absent ones.

    Returns:
        (B, L, K) float one-hot assignment, zero rows for invisible entities.
    """
    overlap = torch.einsum("blhw,bkhw->blk", true_masks.float(), pred_masks.float())
    best = overlap.argmax(dim=2)  # (B, L); ties go to the first slot, as tf.argmax
    assignment = F.one_hot(best, pred_masks.shape[1]).float()
    return assignment * visibility.float()[:, :, None]


class FactorRegressor(nn.Module):
    """Linear read-out ``predict_latents`` of the factors from each slot's detached z.

    Args:
        latent_dim: Z.
        mapping: the factors in the released order, e.g. ``[Factor("color", 9,
            "categorical"), ...]``; the output columns follow it.
        loss_weight: weight of its loss when IODINE adds it to the total (released 1.0).

    Released deviation: the released R^2 averages ``1 - SS_res / var`` over every (image,
    entity) pair, invisible entities included (each counting 1), with ``var`` from a running
    estimator over all training batches. Here R^2 is the proper one over visible objects,
    ``1 - sum SS_res / sum (y - mean)^2`` per dimension, averaged over dimensions, with the
    batch's own statistics (``FactorMetrics`` accumulates them exactly over a test set).
    """

    def __init__(
        self, *, latent_dim: int, mapping: Sequence[Factor], loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.mapping = tuple(Factor(*m) for m in mapping)
        if not self.mapping:
            raise ValueError("FactorRegressor needs at least one factor")
        for m in self.mapping:
            if m.type not in FACTOR_TYPES:
                raise ValueError(f"factor {m.name!r}: unknown type {m.type!r} ({FACTOR_TYPES})")
        self.predict_latents = nn.Linear(latent_dim, sum(m.size for m in self.mapping))
        # Released init (snt.Linear): truncated normal std 1/sqrt(fan_in), zero bias.
        std = latent_dim**-0.5
        nn.init.trunc_normal_(self.predict_latents.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.predict_latents.bias)

    def forward(
        self,
        z: torch.Tensor,
        pred_masks: torch.Tensor,
        true_masks: torch.Tensor,
        factors: Mapping[str, torch.Tensor],
        visibility: torch.Tensor,
    ) -> dict:
        """Match objects to slots, compute the loss and the per-factor scores.

        Args:
            z: (B, K, Z) final latents (detached here).
            pred_masks: (B, K, H, W) final softmax masks (detached here).
            true_masks: (B, L, H, W) 0/1 true entity masks.
            factors: {name: (B, L) or (B, L, n)} raw factor values for every mapped name.
            visibility: (B, L).

        Returns:
            dict with ``loss`` (scalar, differentiable in the regressor's parameters only),
            ``scores`` {name: scalar tensor} (R^2 or accuracy over this batch's visible
            objects), ``assignment`` (B, L, K), ``targets`` {name: (B, L, size)} and
            ``matched`` {name: (B, L, size)}, the matched slot's (detached) prediction
            (logits for categorical factors).
        """
        z = z.detach().float()
        assignment = match_objects(pred_masks.detach(), true_masks, visibility)
        num_visible = assignment.sum().clamp_min(1.0)
        sizes = [m.size for m in self.mapping]
        preds = self.predict_latents(z).split(sizes, dim=-1)  # each (B, K, size)
        total = z.new_zeros(())
        scores, targets, matched = {}, {}, {}
        for m, slot_pred in zip(self.mapping, preds):
            if m.name not in factors:
                raise KeyError(f"factor {m.name!r} missing from the batch ({sorted(factors)})")
            target = preprocess_factor(m, factors[m.name].to(z.device))  # (B, L, size)
            targets[m.name] = target
            pred = slot_pred[:, None]  # (B, 1, K, size)
            tgt = target[:, :, None]  # (B, L, 1, size)
            if m.type == "categorical":
                err = -(tgt * F.log_softmax(pred, dim=-1)).sum(dim=-1)  # (B, L, K)
            else:
                err = ((tgt - pred) ** 2).sum(dim=-1)
            total = total + (assignment * err).sum()
            with torch.no_grad():
                matched[m.name] = torch.einsum("blk,bks->bls", assignment, slot_pred.detach())
                scores[m.name] = factor_score(m, target, matched[m.name], assignment.sum(dim=2))
        return {
            "loss": total / num_visible,
            "scores": scores,
            "assignment": assignment,
            "targets": targets,
            "matched": matched,
        }


def add_factor_loss(
    regressor: FactorRegressor,
    out: dict,
    labels: torch.Tensor | None,
    factors: Mapping[str, torch.Tensor] | None,
    keep_chain: bool,
) -> None:
    """Run the factor regressor on IODINE's final z and masks; add its loss to ``out``.

    Args:
        regressor: the model's factor regressor.
        out: IODINE's outputs (``z`` and ``masks`` (B, T+1, K, ...), ``loss``), updated in
            place with ``loss`` and the ``factor_*`` entries (see ``IODINE.forward``).
        labels: (B, H, W) int64 true label maps (entity l = label l), or None.
        factors: ``{name: (B, L, ...)}`` plus ``visibility`` (B, L), or None.
        keep_chain: whether a backward pass follows.
    """
    if factors is None or labels is None:
        if keep_chain:
            # Not fed this batch: a zero term gives its parameters a (zero) gradient, as
            # DistributedDataParallel needs every parameter to take part in backward.
            unused = sum(p.sum() for p in regressor.parameters())
            out["loss"] = out["loss"] + 0.0 * unused
        return
    visibility = factors["visibility"].to(labels.device)
    entities = torch.arange(visibility.shape[1], device=labels.device)
    true_masks = (labels[:, None] == entities[None, :, None, None]).float()  # (B, L, H, W)
    with torch.enable_grad() if keep_chain else torch.no_grad():
        res = regressor(out["z"][:, -1], out["masks"][:, -1], true_masks, factors, visibility)
    out["loss"] = out["loss"] + regressor.loss_weight * res["loss"]
    out["factor_loss"] = res["loss"].detach()
    out["factor_scores"] = res["scores"]
    out["factor_assignment"] = res["assignment"]
    out["factor_targets"] = res["targets"]
    out["factor_matched"] = res["matched"]


def factor_score(
    factor: Factor, target: torch.Tensor, matched: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """R^2 (scalar, angle) or accuracy (categorical) over the objects with weight 1.

    Args:
        factor: the factor.
        target: (B, L, size) preprocessed targets.
        matched: (B, L, size) the matched slot's prediction for each object.
        weight: (B, L) 1 for the visible (assigned) objects.

    Returns:
        Scalar tensor; NaN when no object counts (or, for R^2, when a dimension is constant).
    """
    # On the device, without host syncs (called every training step).
    w = weight.to(target.dtype)[..., None]  # (B, L, 1)
    count = w.sum()
    if factor.type == "categorical":
        correct = (matched.argmax(-1) == target.argmax(-1)).to(target.dtype)[..., None]
        return (correct * w).sum() / count
    mean = (w * target).sum(dim=(0, 1)) / count
    ss_tot = (w * (target - mean) ** 2).sum(dim=(0, 1))
    ss_res = (w * (target - matched) ** 2).sum(dim=(0, 1))
    return (1.0 - ss_res / ss_tot).mean()


class FactorMetrics:
    """Exact R^2 / accuracy accumulated over many batches (a test set's own variance).

    Args:
        mapping: the factors.
    """

    def __init__(self, mapping: Sequence[Factor]) -> None:
        self.mapping = tuple(Factor(*m) for m in mapping)
        self.sums: dict[str, dict[str, torch.Tensor]] = {}

    def update(
        self,
        targets: Mapping[str, torch.Tensor],
        matched: Mapping[str, torch.Tensor],
        weight: torch.Tensor,
    ) -> None:
        """Add a batch.

        Args:
            targets: {name: (B, L, size)} preprocessed targets.
            matched: {name: (B, L, size)} the matched slot's predictions.
            weight: (B, L) 1 for counted objects, 0 otherwise.
        """
        w = weight.detach().double().cpu()[..., None]
        batch = {}
        for m in self.mapping:
            y = targets[m.name].detach().double().cpu()
            p = matched[m.name].detach().double().cpu()
            if m.type == "categorical":
                correct = (p.argmax(-1) == y.argmax(-1)).double()[..., None]
                batch[m.name] = {"count": w.sum(), "correct": (correct * w).sum()}
            else:
                batch[m.name] = {
                    "count": w.sum(),
                    "sum_y": (w * y).sum(dim=(0, 1)),
                    "sum_yy": (w * y * y).sum(dim=(0, 1)),
                    "ss_res": (w * (y - p) ** 2).sum(dim=(0, 1)),
                }
        self.merge(batch)

    def merge(self, sums: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Add another accumulator's ``sums`` (e.g. gathered from another process)."""
        for name, new in sums.items():
            old = self.sums.get(name)
            self.sums[name] = dict(new) if old is None else {k: old[k] + v for k, v in new.items()}

    def compute(self) -> dict[str, float]:
        """{name: R^2 (mean over dimensions) or accuracy}; NaN where nothing was counted."""
        out = {}
        for m in self.mapping:
            s = self.sums.get(m.name)
            if s is None or float(s["count"]) == 0:
                out[m.name] = float("nan")
            elif m.type == "categorical":
                out[m.name] = float(s["correct"] / s["count"])
            else:
                ss_tot = s["sum_yy"] - s["sum_y"] ** 2 / s["count"]
                out[m.name] = float((1.0 - s["ss_res"] / ss_tot).mean())
        return out
