"""The released variable tables: CLEVR6 against the release's own printed list, all three
configurations against our model's parameters."""

import numpy as np
import pytest
import torch

from lib.config import get_cfg
from lib.convert.released import (
    PAPER_ARCHS,
    ConversionError,
    arch_from_cfg,
    classify,
    factor_variables,
    is_ignored,
    model_variables,
    paper_config_of,
    parameter_rules,
    released_variables,
)
from lib.model import build_model

# The CLEVR6 checkpoint's variables as printed by snt.format_variables in the release's
# iodine/Eval.ipynb (saved output of loading checkpoints/clevr6/model.ckpt): name, shape.
EVAL_NOTEBOOK_CLEVR6 = """
encoder_net/cnn/conv_net_2d/conv_2d_0/b 64
encoder_net/cnn/conv_net_2d/conv_2d_0/w 3x3x18x64
encoder_net/cnn/conv_net_2d/conv_2d_1/b 64
encoder_net/cnn/conv_net_2d/conv_2d_1/w 3x3x64x64
encoder_net/cnn/conv_net_2d/conv_2d_2/b 64
encoder_net/cnn/conv_net_2d/conv_2d_2/w 3x3x64x64
encoder_net/cnn/conv_net_2d/conv_2d_3/b 64
encoder_net/cnn/conv_net_2d/conv_2d_3/w 3x3x64x64
encoder_net/cnn/mlp/linear_0/b 256
encoder_net/cnn/mlp/linear_0/w 64x256
encoder_net/cnn/mlp/linear_1/b 256
encoder_net/cnn/mlp/linear_1/w 256x256
factor_evaluator/repres_content/position_mean_var/M2 3
factor_evaluator/repres_content/position_mean_var/mean 3
factor_evaluator/repres_content/position_mean_var/total 3
factor_evaluator/repres_content/predict_latents/b 19
factor_evaluator/repres_content/predict_latents/w 64x19
global_step scalar
model/iodine/initial_sample_distribution 128
model/iodine/preprocess/layer_norm_counterfactual/beta 1
model/iodine/preprocess/layer_norm_counterfactual/gamma 1
model/iodine/preprocess/layer_norm_dcomponents/beta 3
model/iodine/preprocess/layer_norm_dcomponents/gamma 3
model/iodine/preprocess/layer_norm_dmask/beta 1
model/iodine/preprocess/layer_norm_dmask/gamma 1
model/iodine/preprocess/layer_norm_dzp/beta 128
model/iodine/preprocess/layer_norm_dzp/gamma 128
model/iodine/preprocess/layer_norm_log_prob/beta 1
model/iodine/preprocess/layer_norm_log_prob/gamma 1
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_0/b 64
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_0/w 3x3x67x64
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_1/b 64
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_1/w 3x3x64x64
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_2/b 64
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_2/w 3x3x64x64
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_3/b 64
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_3/w 3x3x64x64
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_4/b 4
pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_4/w 3x3x64x4
recurrent_net/lstm/lstm/b_gates 1024
recurrent_net/lstm/lstm/w_gates 769x1024
refinement_head/residual_head/linear/b 128
refinement_head/residual_head/linear/w 256x128
"""

CONFIG_FILES = {
    "clevr6": "configs/clevr6_prop.yaml",
    "multi_dsprites": "configs/multi_dsprites.yaml",
    "tetrominoes": "configs/tetrominoes.yaml",
}


def _parse_listing(text):
    table = {}
    for line in text.strip().splitlines():
        name, shape = line.split()
        table[name] = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
    return table


def _cfg(config):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG_FILES[config])
    return cfg


def test_clevr6_table_is_the_released_listing():
    listed = _parse_listing(EVAL_NOTEBOOK_CLEVR6)
    derived = dict(released_variables(PAPER_ARCHS["clevr6"]), global_step=())
    assert derived == listed
    trainable = [n for n in derived if not is_ignored(n)]
    assert len(trainable) == 39  # as the release's notebook reports
    assert len(model_variables(PAPER_ARCHS["clevr6"])) == 37  # without predict_latents


def test_derived_shapes_of_the_other_configs():
    # Arithmetic from the release's configurations.py, independent of the table code:
    # refinement inputs 3+3+1+1+1+3+1+1+1+1 + 8 cosine coordinates = 24 channels; the LSTM and
    # head inputs are MLP out + dzp (2Z) + flat_capacity (1) + zp (2Z).
    mds = released_variables(PAPER_ARCHS["multi_dsprites"])
    assert mds["encoder_net/cnn/conv_net_2d/conv_2d_0/w"] == (5, 5, 24, 32)
    assert mds["recurrent_net/lstm/lstm/w_gates"] == (128 + 32 + 1 + 32 + 128, 4 * 128)
    assert mds["refinement_head/residual_head/linear/w"] == (128, 32)
    assert mds["pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_0/w"] == (5, 5, 16 + 1 + 2, 32)
    assert mds["factor_evaluator/repres_content/predict_latents/w"] == (16, 3 + 4 + 1 + 1 + 1 + 2)
    tet = released_variables(PAPER_ARCHS["tetrominoes"])
    assert not any(n.startswith("recurrent_net/") for n in tet)
    assert tet["refinement_head/residual_head/linear/w"] == (128 + 64 + 1 + 64, 64)
    assert tet["pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_0/w"] == (5, 5, 32 + 1 + 2, 32)
    assert tet["factor_evaluator/repres_content/predict_latents/w"] == (32, 2 + 3 + 20)
    assert len(model_variables(PAPER_ARCHS["multi_dsprites"])) == 33
    assert len(model_variables(PAPER_ARCHS["tetrominoes"])) == 31


@pytest.mark.parametrize("config", sorted(CONFIG_FILES))
def test_config_files_are_the_paper_architectures(config):
    arch = arch_from_cfg(_cfg(config))
    assert paper_config_of(arch) == config
    assert arch == PAPER_ARCHS[config].without_factors()


@pytest.mark.parametrize("config", sorted(CONFIG_FILES))
def test_rules_cover_every_variable_and_make_our_exact_state_dict(config):
    cfg = _cfg(config)
    arch = arch_from_cfg(cfg)
    table = model_variables(arch)
    rules = parameter_rules(arch)
    assert set().union(*(r.sources for r in rules)) == set(table)
    arrays = {n: np.zeros(s, np.float32) for n, s in table.items()}
    made = {r.target: r.fn(*(arrays[n] for n in r.sources)).shape for r in rules}
    with torch.device("meta"):
        ours = {n: tuple(t.shape) for n, t in build_model(cfg).state_dict().items()}
    # The factor regressor is converted apart (convert._factor_rules): its
    # nn.Linear is the transpose of the released predict_latents/w.
    factor = {n: ours.pop(n) for n in list(ours) if n.startswith("factor_regressor.")}
    assert made == ours
    released = factor_variables(PAPER_ARCHS[config])
    w = released["factor_evaluator/repres_content/predict_latents/w"]
    assert factor == {
        "factor_regressor.predict_latents.weight": w[::-1],
        "factor_regressor.predict_latents.bias": (w[1],),
    }


def test_ignored_and_factor_variables_are_classified():
    variables = {
        "encoder_net/cnn/mlp/linear_0/w": (32, 128),
        "encoder_net/cnn/mlp/linear_0/w/Adam": (32, 128),
        "encoder_net/cnn/mlp/linear_0/w/Adam_1": (32, 128),
        "beta1_power": (),
        "beta2_power": (),
        "global_step": (),
        "factor_evaluator/repres_content/predict_latents/w": (32, 25),
        "factor_evaluator/repres_content/position_mean_var/M2": (2,),
        "factor_evaluator/repres_content/position_mean_var/total": (2,),
    }
    split = classify(variables)
    assert split.model == {"encoder_net/cnn/mlp/linear_0/w": (32, 128)}
    assert split.factor == {"factor_evaluator/repres_content/predict_latents/w": (32, 25)}
    assert len(split.ignored) == 7
    # A name that merely contains "Adam" elsewhere is a parameter, not a slot.
    assert not is_ignored("Adam_net/linear/w")


def test_factor_statistics_only_for_scalar_and_angle_factors():
    names = factor_variables(PAPER_ARCHS["clevr6"])
    assert [n for n in names if "_mean_var" in n] == [
        "factor_evaluator/repres_content/position_mean_var/M2",
        "factor_evaluator/repres_content/position_mean_var/mean",
        "factor_evaluator/repres_content/position_mean_var/total",
    ]


def test_flatten_pool_is_refused():
    cfg = _cfg("tetrominoes")
    cfg.MODEL.REFINEMENT.POOL = "flatten"
    with pytest.raises(ConversionError, match="POOL"):
        arch_from_cfg(cfg)


def test_input_without_released_counterpart_is_refused():
    cfg = _cfg("tetrominoes")
    cfg.MODEL.REFINEMENT.IMAGE_INPUTS = ("image", "zp")  # zp is a vector input in the release
    with pytest.raises(ConversionError, match=r"no released counterpart: \['zp'\]"):
        arch_from_cfg(cfg)


def test_name_table_factors_equal_the_data_layer_mappings():
    """The converter keeps its own table (it must import without torch, for the TensorFlow
    fixture script); it must still agree with the mappings the training uses."""
    from lib.convert.released import PAPER_ARCHS
    from lib.data.format import FACTOR_FAMILY, FACTOR_MAPPINGS

    for config, arch in PAPER_ARCHS.items():
        expected = FACTOR_MAPPINGS[FACTOR_FAMILY[config]]
        assert [(f.name, f.size, f.type) for f in arch.factors] == [tuple(f) for f in expected]
