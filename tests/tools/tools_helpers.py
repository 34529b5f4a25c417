"""Helpers of the tool tests: a tiny config file, the tools as importable modules."""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_YAML = """\
MODEL:
  DEVICE: "cpu"
  IODINE:
    NUM_SLOTS: 3
    NUM_ITERS: 2
    LATENT_DIM: 8
  REFINEMENT:
    CONV_CHANNELS: (8, 8)
    MLP_SIZES: (16,)
    LSTM_SIZE: 16
  DECODER:
    CONV_CHANNELS: (8, 8)
INPUT:
  IMAGE_SIZE: 16
DATASETS:
  TRAIN: tetrominoes_synth_train
  TEST: tetrominoes_synth_test
  ROOT: "{root}"
  TEST_SIZE: 6
DATALOADER:
  NUM_WORKERS: 0
SOLVER:
  MAX_ITER: 4
  IMS_PER_BATCH: 4
  CHECKPOINT_PERIOD: 2
  DECAY_RATE: 0.5
  DECAY_STEPS: 4
TEST:
  IMS_PER_BATCH: 4
  EVAL_PERIOD: 2
  EVAL_NUM_IMAGES: 4
LOG:
  PERIOD: 1
  IMAGE_PERIOD: 2
  NUM_IMAGES: 2
"""


def write_config(folder: str, data_root: str, name: str = "tiny.yaml") -> str:
    """Write the tiny config (datasets under ``data_root``) and return its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(TINY_YAML.format(root=data_root))
    return path


def load_tool(name: str):
    """Import tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env() -> dict:
    """Environment of tool subprocesses: one intra-op thread (the test machine is shared).
    The tools import the installed package (``pip install -e .``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


PYTHON = sys.executable


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
