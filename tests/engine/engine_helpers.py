"""Shared pieces of the engine tests: a tiny config and a stand-in model with known output."""

import torch
from torch import nn

from lib.config import get_cfg


def tiny_cfg(output_dir: str = "", **overrides):
    """A config for the real model small enough for CPU tests (16x16, K=3, T=2)."""
    cfg = get_cfg()
    opts = {
        "OUTPUT_DIR": output_dir,
        "MODEL.DEVICE": "cpu",
        "INPUT.IMAGE_SIZE": 16,
        "MODEL.IODINE.NUM_SLOTS": 3,
        "MODEL.IODINE.NUM_ITERS": 2,
        "MODEL.IODINE.LATENT_DIM": 8,
        "MODEL.REFINEMENT.CONV_CHANNELS": (8, 8),
        "MODEL.REFINEMENT.MLP_SIZES": (16,),
        "MODEL.REFINEMENT.LSTM_SIZE": 16,
        "MODEL.DECODER.CONV_CHANNELS": (8, 8),
        "SOLVER.IMS_PER_BATCH": 4,
        "SOLVER.MAX_ITER": 4,
        "SOLVER.CHECKPOINT_PERIOD": 2,
        "SOLVER.BASE_LR": 1e-3,
        "TEST.IMS_PER_BATCH": 4,
        "TEST.EVAL_PERIOD": 2,
        "LOG.PERIOD": 1,
        "LOG.IMAGE_PERIOD": 2,
        "LOG.NUM_IMAGES": 2,
        "DATALOADER.NUM_WORKERS": 0,
    }
    opts.update(overrides)
    flat = []
    for key, value in opts.items():
        flat += [key, value]
    cfg.merge_from_list(flat)
    return cfg


class StandIn(nn.Module):
    """Mimics the IODINE output contract with a known segmentation.

    The label of each pixel is encoded in the image's first channel (label / 10); the masks
    put all weight on that label's slot (mod K), so ARI is 1 wherever K covers the labels.
    ``loss`` is a differentiable function of a weight; ``nan_calls`` lists forward-call
    indices (training calls only) whose loss is NaN.
    """

    def __init__(self, num_slots: int = 4, num_iters: int = 2, nan_calls=()) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.num_iters = num_iters
        self.weight = nn.Parameter(torch.ones(3))
        self.nan_calls = set(nan_calls)
        self.calls = 0
        self.seen_batches = []

    def forward(self, images, num_slots=None, num_iters=None):
        k = num_slots or self.num_slots
        t = self.num_iters if num_iters is None else num_iters
        b, _, h, w = images.shape
        if self.training:
            self.seen_batches.append(images.shape[0])
        labels = torch.round(images[:, 0] * 10).long() % k  # (B, H, W)
        masks = nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()  # (B, K, H, W)
        masks = masks[:, None].expand(b, t + 1, k, h, w)
        recon = images[:, None].expand(b, t + 1, 3, h, w)
        components = images[:, None, None].expand(b, t + 1, k, 3, h, w)
        loss = ((images.mean(dim=(2, 3)) - self.weight) ** 2).sum(dim=1).mean()
        if self.training:
            if self.calls in self.nan_calls:
                loss = loss * float("nan")
            self.calls += 1
        steps = torch.arange(t + 1, dtype=torch.float32)
        return {
            "loss": loss,
            "nll": steps + loss.detach(),
            "kl": steps * 0.5,
            "masks": masks,
            "recon": recon,
            "components": components,
        }


def labelled_images(labels: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) whose first channel encodes ``labels`` (B, H, W) for StandIn."""
    images = torch.rand(labels.shape[0], 3, *labels.shape[1:])
    images[:, 0] = labels.float() / 10
    return images


def join_or_kill(context, timeout: float = 120.0) -> None:
    """Wait for ``torch.multiprocessing.start_processes(..., join=False)`` workers; kill them
    and fail after ``timeout`` seconds, so that a deadlock cannot hang the test run."""
    import time

    deadline = time.time() + timeout
    while not context.join(timeout=1.0):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"worker processes still running after {timeout} s")
