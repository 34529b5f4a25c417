"""What a model figure starts from: the checkpoint's model, a few dataset images, a forward pass.

``load_model`` builds the model from the config and loads its checkpoint (``--weights``, else
MODEL.WEIGHT, else ``OUTPUT_DIR/last_checkpoint``, as ``tools/test_net.py`` does);
``take_images`` cuts consecutive images out of a built dataset; ``run_model`` is the eval-mode
forward pass of every model figure; ``figure_heading`` is the first title line they share.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from yacs.config import CfgNode

from lib.errors import RunError


@dataclass(frozen=True)
class LoadedModel:
    """A built model with its weights loaded, in eval mode.

    Attributes:
        model: the IODINE model.
        checkpoint: path of the loaded checkpoint.
        iteration: its training iteration, or None when the file does not say.
        device: where the model is.
    """

    model: torch.nn.Module
    checkpoint: str
    iteration: int | None
    device: torch.device


@dataclass(frozen=True)
class ImageBatch:
    """Consecutive images of one dataset.

    Attributes:
        dataset: the dataset's name.
        images: (N, 3, S, S) inputs.
        masks: (N, S, S) int64 true label maps, or None for a dataset without masks.
        indices: the N dataset indices.
    """

    dataset: str
    images: Tensor
    masks: Tensor | None
    indices: list[int]

    @property
    def labels(self) -> list[str]:
        """``"#<index>"`` per image, the row labels of the figures."""
        return [f"#{i}" for i in self.indices]

    @property
    def first_mask(self) -> Tensor | None:
        """(S, S) true label map of the first image, or None."""
        return None if self.masks is None else self.masks[0]


@dataclass(frozen=True)
class ModelInputs:
    """What a model figure starts from: the model, the images and the first title line.

    Attributes:
        loaded: the model.
        batch: the images drawn.
        heading: the first title line (``figure_heading``).
        num_slots: K at test time (None or 0 = as trained).
        num_iters: T at test time (None or 0 = as trained).
    """

    loaded: LoadedModel
    batch: ImageBatch
    heading: str
    num_slots: int | None = None
    num_iters: int | None = None

    def forward(self, num_slots: int | None = None) -> dict[str, Tensor]:
        """``run_model`` on the batch with ``num_slots`` (None: ``self.num_slots``) and T.

        Returns:
            The outputs, ``masks`` (N, T+1, K, H, W), ... on the CPU.
        """
        k = self.num_slots if num_slots is None else num_slots
        model, device = self.loaded.model, self.loaded.device
        return run_model(model, self.batch.images, device, k, self.num_iters)


def load_model(cfg: CfgNode) -> LoadedModel:
    """Build the model on MODEL.DEVICE (seeded with SEED) and load its checkpoint.

    Args:
        cfg: the config (MODEL, SEED, MODEL.WEIGHT, OUTPUT_DIR).

    Returns:
        The model in eval mode with its checkpoint's path and iteration.

    Raises:
        RunError: no checkpoint to load ("nothing to draw").
        CheckpointError: unreadable or mismatched checkpoint.
    """
    from lib.engine.setup import load_weights, resolve_device, seed_all
    from lib.model import build_model

    device = resolve_device(cfg.MODEL.DEVICE)
    # Seeded before building, as tools/test_net.py does, so that a figure repeats exactly.
    seed_all(cfg.SEED)
    model = build_model(cfg).to(device)
    path, iteration = load_weights(cfg, model, purpose="draw")
    model.eval()
    return LoadedModel(model, path, iteration, device)


def take_images(dataset: torch.utils.data.Dataset, name: str, start: int, count: int) -> ImageBatch:
    """Images ``start .. start+count-1`` of a dataset, clipped to its end (at least one).

    Args:
        dataset: the built dataset; items are ``(image (3, S, S), mask (S, S) or None)``.
        name: its name (for the batch and the error message).
        start: first dataset index.
        count: number of images (values below 1 take one).

    Returns:
        The batch, collated with ``lib.data.collate``.

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
    model: torch.nn.Module,
    images: Tensor,
    device: torch.device,
    num_slots: int | None,
    num_iters: int | None = None,
) -> dict[str, Tensor]:
    """Eval-mode forward pass (no_grad, not inference_mode: the model needs autograd inside).

    Args:
        model: the model, in eval mode.
        images: (N, 3, H, W) inputs.
        device: where the model is.
        num_slots: K (None or 0 = as trained).
        num_iters: T (None or 0 = as trained).

    Returns:
        The model's tensor outputs as float32 on the CPU: ``masks`` (N, T+1, K, H, W),
        ``recon`` (N, T+1, 3, H, W), ``components`` (N, T+1, K, 3, H, W),
        ``posterior_loc`` / ``posterior_scale`` (N, T+1, K, D), ...
    """
    with torch.no_grad():
        out = model(images.to(device), num_slots=num_slots or None, num_iters=num_iters or None)
    return {k: v.detach().float().cpu() for k, v in out.items() if torch.is_tensor(v)}


def to_cpu(value: Tensor | Mapping) -> Tensor | dict:
    """A tensor, or a nested mapping of tensors, as float32 on the CPU (for drawing).

    Args:
        value: a tensor or a (nested) mapping whose leaves are tensors.

    Returns:
        The same structure, detached; mappings become dicts.
    """
    if torch.is_tensor(value):
        return value.detach().float().cpu()
    return {k: to_cpu(v) for k, v in value.items()}


def figure_heading(
    command: str, config_file: str, checkpoint: str | None, iteration: int | None, dataset: str
) -> str:
    """The first title line of a figure.

    Args:
        command: the figure's kind (the subcommand).
        config_file: the config file, or "" for the defaults.
        checkpoint: the loaded checkpoint's path, or None.
        iteration: its training iteration.
        dataset: the dataset drawn, or "".

    Returns:
        ``"<command> | config <file> | checkpoint <name> (iteration <n>) | dataset <name>"``.
    """
    parts = [command, f"config {config_file or '(defaults)'}"]
    if checkpoint is not None:
        parts.append(f"checkpoint {os.path.basename(checkpoint)} (iteration {iteration})")
    if dataset:
        parts.append(f"dataset {dataset}")
    return " | ".join(parts)
