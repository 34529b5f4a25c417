"""Fixtures of the analysis tests: one intra-op thread, a tiny IODINE model."""

import pytest
import torch

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
    model = IODINE(
        num_slots=K,
        num_iters=T,
        latent_dim=D,
        refine_conv_channels=(8, 8),
        refine_mlp_sizes=(16,),
        refine_lstm_size=16,
        decoder_conv_channels=(8, 8),
    )
    return model.eval()
