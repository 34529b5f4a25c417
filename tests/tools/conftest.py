"""Fixtures of the tool tests: one tiny generated Tetrominoes set per session, one thread."""

import pytest
import torch

from lib.prepare import generate_dataset


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """DATASETS.ROOT with ``tetrominoes_synth``: 24 training + 6 test scenes."""
    root = str(tmp_path_factory.mktemp("data"))
    # One worker: a process pool's start-up costs seconds, the 30 scenes milliseconds.
    generate_dataset(
        "tetrominoes_synth", root, num_examples=24, seed=0, test_size=6, progress=False, workers=1
    )
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine's few cores are shared; oversubscribed threads slow tiny models a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_precision_switches():
    """Put torch's process-wide precision switches back after a tool set them."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])
    if torch.are_deterministic_algorithms_enabled() != saved[3]:
        torch.use_deterministic_algorithms(saved[3])  # slow (seconds) the first time
    torch.backends.cudnn.benchmark = saved[4]
