"""What a model figure starts from: the checkpoint's model, a few dataset images, the forward
pass and the first title line."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from lib.errors import RunError


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on ``device``, loaded from ``checkpoint`` (training ``iteration``,
    None when the file does not say)."""

    model: nn.Module
    checkpoint: str
    iteration: int | None
    device: torch.device


@dataclass(frozen=True)
class ImageBatch:
    """Images ``indices`` of ``dataset``: ``images`` (N, 3, S, S) and ``masks`` (N, S, S) int64
    true label maps, or None for a dataset without masks."""

    dataset: str
    images: Tensor
    masks: Tensor | None
    indices: list[int]

    @property
    def labels(self) -> list[str]:
        """``"#<index>"`` per image, the row labels of the figures."""
        return [f"#{i}" for i in self.indices]

    def mask(self, i: int) -> Tensor | None:
        """(S, S) true label map of image ``i``, or None."""
        return None if self.masks is None else self.masks[i]


def load_model(cfg: CfgNode) -> LoadedModel:
    """Build the model on MODEL.DEVICE (seeded with SEED) and load its checkpoint: MODEL.WEIGHT,
    else ``OUTPUT_DIR/last_checkpoint``, as ``tools/test_net.py`` does.

    Raises:
        RunError: no checkpoint to load ("nothing to draw").
        CheckpointError: unreadable or mismatched checkpoint.
    """
    from lib.engine.setup import load_weights, resolve_device, seed_all
    from lib.model import build_model

    device = resolve_device(cfg.MODEL.DEVICE)
    seed_all(cfg.SEED)  # before building, as tools/test_net.py does: a figure repeats exactly
    model = build_model(cfg).to(device)
    path, iteration = load_weights(cfg, model, purpose="draw")
    return LoadedModel(model.eval(), path, iteration, device)


def take_images(dataset: torch.utils.data.Dataset, name: str, start: int, count: int) -> ImageBatch:
    """Images ``start .. start+count-1`` of a dataset named ``name``, clipped to its end, at
    least one, collated with ``lib.data.collate``.

    Raises:
        RunError: ``start`` is out of range.
    """
    from lib.data import collate

    if not 0 <= start < len(dataset):
        raise RunError(f"--index {start} is out of range: {name} has {len(dataset)} images")
    indices = list(range(start, min(start + max(count, 1), len(dataset))))
    images, masks = collate([dataset[i] for i in indices])
    return ImageBatch(name, images, masks, indices)


def run_model(
    model: nn.Module,
    images: Tensor,
    device: torch.device,
    num_slots: int | None,
    num_iters: int | None = None,
) -> dict[str, Tensor]:
    """Eval-mode forward pass under no_grad (not inference_mode: the model needs autograd).

    Args:
        model: the model, in eval mode.
        images: (N, 3, H, W) inputs.
        device: where the model is.
        num_slots, num_iters: K and T (None or 0 = as trained).

    Returns:
        The tensor outputs as float32 on the CPU: ``masks`` (N, T+1, K, H, W), ``recon``
        (N, T+1, 3, H, W), ``components`` (N, T+1, K, 3, H, W), ``posterior_loc`` /
        ``posterior_scale`` (N, T+1, K, D), ...
    """
    with torch.no_grad():
        out = model(images.to(device), num_slots=num_slots or None, num_iters=num_iters or None)
    return {k: v.detach().float().cpu() for k, v in out.items() if torch.is_tensor(v)}


def figure_heading(
    command: str, config_file: str, checkpoint: str | None, iteration: int | None, dataset: str
) -> str:
    """``"<command> | config <file> | checkpoint <name> (iteration <n>) | dataset <name>"``, the
    first title line; the checkpoint and dataset parts only when given."""
    parts = [command, f"config {config_file or '(defaults)'}"]
    if checkpoint is not None:
        parts.append(f"checkpoint {os.path.basename(checkpoint)} (iteration {iteration})")
    if dataset:
        parts.append(f"dataset {dataset}")
    return " | ".join(parts)
