"""lib.engine.setup: weights for evaluation."""

import pytest
import torch

from lib.engine.checkpoint import Checkpointer, CheckpointError
from lib.engine.setup import load_weights
from lib.errors import RunError
from lib.model import build_model
from tests.engine.engine_helpers import tiny_cfg


def test_load_weights_prefers_model_weight_then_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    saved_a, saved_b = build_model(tiny_cfg()), build_model(tiny_cfg())
    Checkpointer(saved_a, save_dir=str(tmp_path / "a")).save(3)
    Checkpointer(saved_b, save_dir=str(tmp_path / "run")).save(5)

    def loads(cfg, source):
        model = build_model(cfg)
        path, iteration = load_weights(cfg, model)
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
        return path, iteration

    run = str(tmp_path / "run")
    path, iteration = loads(tiny_cfg(run), saved_b)
    assert path.endswith("model_0000005.pth") and iteration == 5
    weight = str(tmp_path / "a" / "model_0000003.pth")
    assert loads(tiny_cfg(run, **{"MODEL.WEIGHT": weight}), saved_a) == (weight, 3)

    with pytest.raises(RunError, match="nothing to draw: MODEL.WEIGHT is empty"):
        load_weights(tiny_cfg(str(tmp_path / "empty")), saved_a, purpose="draw")
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_weights(tiny_cfg(run, **{"MODEL.WEIGHT": str(tmp_path / "missing.pth")}), saved_a)
