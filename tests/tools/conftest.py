"""Fixtures of the tool tests: one tiny generated Tetrominoes set per session, one thread."""

import pytest
import torch

from lib.prepare import generate_dataset


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """DATASETS.ROOT with ``tetrominoes``: 24 training + 6 test scenes."""
    root = str(tmp_path_factory.mktemp("data"))
    # One worker: a process pool's start-up costs seconds, the 30 scenes milliseconds.
    generate_dataset(
        "tetrominoes", root, num_examples=24, seed=0, test_size=6, progress=False, workers=1
    )
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine's few cores are shared; oversubscribed threads slow tiny models a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
