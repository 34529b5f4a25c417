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


def test_build_model_hands_the_parts_to_iodine_in_the_seeded_order():
    # The parts built by hand in build_model's order give the same weights: the draws from
    # torch's generator (decoder, refinement, initial lambda, released init, factor regressor)
    # and the parameter order (what the optimiser and clipping norm see) are unchanged.
    from lib.model.build import (
        build_decoder,
        build_factor_regressor,
        build_refinement,
        initialise_,
    )
    from lib.model.iodine import IODINE, released_initial_posterior

    cfg = tiny_cfg(
        **{"DATASETS.TRAIN": ("clevr6_train",), "MODEL.IODINE.INIT_POSTERIOR_SCALE": 0.3}
    )
    torch.manual_seed(0)
    built = build_model(cfg)
    torch.manual_seed(0)
    decoder, refinement = build_decoder(cfg), build_refinement(cfg)
    init_lambda = released_initial_posterior(4, 0.3)
    initialise_(cfg, decoder, refinement)
    by_hand = IODINE(
        decoder=decoder,
        refinement=refinement,
        factor_regressor=build_factor_regressor(cfg),
        initial_posterior=init_lambda,
        latent_dim=4,
    )
    names = [n for n, _ in built.named_parameters()]
    assert names == [n for n, _ in by_hand.named_parameters()]
    prefixes = [n.split(".")[0] for n in names]
    order = ["init_posterior", "decoder", "refinement", "input_norms", "factor_regressor"]
    assert sorted(set(prefixes), key=prefixes.index) == order
    for (name, a), b in zip(built.state_dict().items(), by_hand.state_dict().values()):
        assert torch.equal(a, b), name
    raw = built.init_posterior[4:].detach()
    torch.testing.assert_close(torch.nn.functional.softplus(raw).sqrt(), torch.full((4,), 0.3))


def test_parts_follow_the_keys():
    from lib.model.build import build_decoder, build_factor_regressor, build_refinement

    cfg = tiny_cfg(**{"MODEL.IODINE.LEGACY_CONSTANTS": False, "MODEL.REFINEMENT.LSTM_SIZE": 0})
    refinement = build_refinement(cfg)
    # 18 released channels less capacity; vectors dzp + zp (no flat_capacity) after the MLP.
    assert refinement.convs[0].in_channels == 17 and refinement.lstm is None
    assert refinement.head.in_features == 16 + 2 * 2 * 4
    assert build_decoder(cfg).hidden[0].in_channels == 4 + 2  # no constant 5.0
    assert build_factor_regressor(cfg).mapping[0].name == "color"  # clevr6_train: CLEVR's
    cfg.DATASETS.TRAIN = ("folder:/nowhere",)
    assert build_factor_regressor(cfg) is None


def test_the_model_package_imports_no_config_data_or_engine_module():
    # The model is built from explicit arguments; only build_model reads a config object.
    import subprocess
    import sys

    code = (
        "import sys, lib.model; "
        "print([m for m in sys.modules if m.startswith(('lib.config', 'lib.data', 'lib.engine'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
