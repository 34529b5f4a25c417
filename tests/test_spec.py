"""lib.spec: torch-free, and the one source of the facts the model, converter, config and data
format use."""

import subprocess
import sys

import pytest

from lib import spec


def test_importing_the_spec_imports_no_torch_or_numpy():
    code = (
        "import lib.spec, sys; assert 'torch' not in sys.modules; assert 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_refinement_input_groups():
    assert spec.IMAGE_INPUTS == tuple(sorted(spec.IMAGE_INPUTS)) and len(spec.IMAGE_INPUTS) == 11
    assert spec.VECTOR_INPUTS == ("dzp", "flat_capacity", "zp")
    assert spec.NORMALISED_INPUTS == ("counterfactual", "dcomponents", "dmask", "dzp", "log_prob")
    assert spec.LEGACY_INPUTS == ("capacity", "flat_capacity")
    assert [spec.input_channels("coordinates", c, 3) for c in ("linear", "cosine")] == [2, 8]
    assert spec.input_channels("dzp", "linear", 3) == spec.input_channels("zp", "cosine", 3) == 6
    assert spec.used_inputs(("image", "capacity"), ("zp", "flat_capacity"), False) == (
        ("image",),
        ("zp",),
    )


def test_config_defaults_and_choices_come_from_the_spec():
    from lib.config import get_cfg, validate_cfg

    cfg = get_cfg()
    assert tuple(cfg.MODEL.REFINEMENT.IMAGE_INPUTS) == spec.IMAGE_INPUTS
    assert tuple(cfg.MODEL.REFINEMENT.VECTOR_INPUTS) == spec.VECTOR_INPUTS
    for key, node, choices in [
        ("LIKELIHOOD", cfg.MODEL.IODINE, spec.LIKELIHOODS),
        ("POOL", cfg.MODEL.REFINEMENT, spec.POOLS),
        ("PADDING", cfg.MODEL.REFINEMENT, spec.PADDINGS),
    ]:
        assert node[key] in choices
        node[key] = "not-a-choice"
        with pytest.raises(ValueError, match=key):
            validate_cfg(cfg)
        node[key] = choices[0]


def test_one_factor_type_everywhere():
    from lib.convert import released
    from lib.data import format as data_format
    from lib.model import factor_regressor

    assert released.Factor is factor_regressor.Factor is spec.Factor
    assert data_format.factor_mapping("clevr6_train") is spec.FACTOR_MAPPINGS["clevr"]
    assert spec.PAPER_ARCHS["tetrominoes"].factors is spec.FACTOR_MAPPINGS["tetrominoes"]
    assert spec.Factor("x", 1, "scalar") == ("x", 1, "scalar")


@pytest.mark.parametrize("config", sorted(spec.PAPER_ARCHS))
def test_released_layers_give_the_variable_table(config):
    arch = spec.PAPER_ARCHS[config]
    layers = spec.released_layers(arch)
    assert {layer.kind for layer in layers} <= set(spec.LAYER_KINDS)
    assert layers[0].ours == "init_posterior" and layers[-1].ours == "decoder.output"
    table = {}
    for layer in layers:
        table.update(spec.layer_variables(layer))
    # CLEVR6: the release's Eval.ipynb lists 39 trainable tensors, 2 of them the factor
    # regressor's; multi_dsprites has one conv less, tetrominoes no LSTM either.
    assert len(table) == {"clevr6": 37, "multi_dsprites": 33, "tetrominoes": 31}[config]
    first_conv = next(layer for layer in layers if layer.kind == "conv")
    k = arch.refine_kernel_size
    channels = 16 + spec.COORD_CHANNELS[arch.coord_type]
    assert first_conv.shape == (k, k, channels, arch.refine_conv_channels[0])


def test_dataset_names_helper():
    from lib.spec import dataset_names

    assert dataset_names("clevr6_train") == ("clevr6_train",)
    assert dataset_names(["a", "b"]) == ("a", "b")


def test_factor_mapping_of_dataset_names():
    # Split suffixes and stand-ins keep their paper dataset's mapping; others have none.
    from lib.spec import FACTOR_MAPPINGS, factor_mapping

    assert factor_mapping("clevr6_train") is FACTOR_MAPPINGS["clevr"]
    assert factor_mapping("clevr10_synth_test") is FACTOR_MAPPINGS["clevr"]
    assert factor_mapping("multi_dsprites") is FACTOR_MAPPINGS["multi_dsprites"]
    assert factor_mapping("tetrominoes_synth_train") is FACTOR_MAPPINGS["tetrominoes"]
    for name in ("sprites_train", "folder:/x/clevr6", "clevr6_val", "objects_room_train"):
        assert factor_mapping(name) is None, name
