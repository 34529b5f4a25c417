"""Fixtures of the analysis tests: one intra-op thread, a tiny IODINE model."""

import pytest
import torch

from lib.config import get_cfg
from lib.model import build_model
from lib.model.iodine import IODINE

K, D, T = 3, 6, 2


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine's few cores are shared; oversubscribed threads slow tiny models a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model() -> IODINE:
    """A seeded IODINE model in eval mode: K=3 slots, D=6 latents, T=2 steps, 8-channel convs."""
    torch.manual_seed(0)
    cfg = get_cfg()
    cfg.merge_from_list(
        ["MODEL.IODINE.NUM_SLOTS", K, "MODEL.IODINE.NUM_ITERS", T, "MODEL.IODINE.LATENT_DIM", D,
         "MODEL.REFINEMENT.CONV_CHANNELS", (8, 8), "MODEL.REFINEMENT.MLP_SIZES", (16,),
         "MODEL.REFINEMENT.LSTM_SIZE", 16, "MODEL.DECODER.CONV_CHANNELS", (8, 8),
         "MODEL.FACTOR_REGRESSOR.ENABLED", "off"]
    )  # fmt: skip
    model = build_model(cfg)
    return model.eval()
