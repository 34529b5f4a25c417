"""build_model's reading of the model keys: LSTM initialisation and the eval gradient divisor."""

import pytest
import torch

from lib.config import load_cfg
from lib.model import build_model
from tests.model.conftest import tiny_cfg


@pytest.mark.parametrize(
    "ims,accumulate,fixed,want", [(32, 1, 0, 32), (32, 4, 0, 8), (12, 5, 0, 2), (32, 4, 5, 5)]
)
def test_eval_grad_divisor_is_the_training_micro_batch_unless_set(ims, accumulate, fixed, want):
    cfg = tiny_cfg(
        **{
            "SOLVER.IMS_PER_BATCH": ims,
            "SOLVER.ACCUMULATE_STEPS": accumulate,
            "MODEL.IODINE.EVAL_GRAD_DIVISOR": fixed,
        }
    )
    assert build_model(cfg).eval_grad_divisor == want


def test_lstm_keys_reach_the_cell():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.REFINEMENT.LSTM_FORGET_BIAS": 3.0}))
    lstm = model.refinement.lstm
    h = lstm.hidden_size
    std = 1 / (lstm.input_size + h) ** 0.5
    forget = lstm.bias_ih[h : 2 * h].detach()
    assert ((forget - 3.0).abs() <= 2 * std + 1e-6).all() and (forget != 3.0).all()
    assert not lstm.bias_hh.requires_grad and (lstm.bias_hh == 0).all()
    old = build_model(tiny_cfg(**{"MODEL.REFINEMENT.LSTM_INIT": "zero_bias"})).refinement.lstm
    assert (old.bias_ih[h : 2 * h] == 1.0).all() and (old.bias_ih[:h] == 0).all()
    assert old.bias_hh.requires_grad
    # PyTorch defaults everywhere: bias_hh is PyTorch's uniform draw, and trainable.
    pt = build_model(tiny_cfg(**{"MODEL.IODINE.INIT": "pytorch"})).refinement.lstm
    assert pt.bias_hh.requires_grad and (pt.bias_hh != 0).all()


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.REFINEMENT.LSTM_INIT", "pytorch"),
        ("MODEL.IODINE.EVAL_GRAD_DIVISOR", "-1"),
        ("MODEL.IODINE.GRAD_INPUT_REDUCTION", "batch_mean"),
    ],
)
def test_bad_model_keys_are_refused_by_name(key, value):
    with pytest.raises(ValueError, match=key):
        load_cfg(None, [key, value])
