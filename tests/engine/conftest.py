"""Engine tests run single-threaded: the CI machine's few cores are shared by other jobs, and
oversubscribed intra-op threads make these tiny models many times slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
