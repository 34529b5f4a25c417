"""The converter and tools/convert_checkpoint.py on the TensorFlow-written Tetrominoes fixture."""

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from lib.config import get_cfg
from lib.convert.convert import convert_variables
from lib.convert.released import PAPER_ARCHS, ConversionError
from lib.convert.tf_checkpoint import TFCheckpoint
from lib.engine.checkpoint import Checkpointer
from lib.model import build_model
from tests.convert.conftest import PREFIX, TETROMINOES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")


def _tool():
    spec = importlib.util.spec_from_file_location(
        "tool_convert_checkpoint", os.path.join(REPO, "tools", "convert_checkpoint.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(capsys, config, checkpoint, output, *overrides):
    argv = ["--config-file", os.path.join(CONFIGS, config), "--checkpoint", checkpoint]
    status = _tool().main([*argv, "--output", str(output), *overrides])
    out, err = capsys.readouterr()
    return status, out, err


def test_converted_values_follow_the_layout_rules(converted_tetrominoes, tf_values):
    state = converted_tetrominoes.state
    rng = np.random.default_rng(0)
    conv_w = tf_values["encoder_net/cnn/conv_net_2d/conv_2d_1/w"]  # HWIO
    for _ in range(20):  # OIHW entry (o, i, y, x) is HWIO entry (y, x, i, o)
        y, x, i, o = (int(rng.integers(s)) for s in conv_w.shape)
        assert state["refinement.convs.1.weight"][o, i, y, x].item() == conv_w[y, x, i, o]
    dec_w = tf_values["pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_4/w"]
    for o in range(4):  # output channel 0 stays the mask logit
        np.testing.assert_array_equal(
            state["decoder.output.weight"][o].numpy()[0], dec_w[..., 0, o]
        )
    head_w = tf_values["refinement_head/residual_head/linear/w"]
    np.testing.assert_array_equal(state["refinement.head.weight"].numpy(), head_w.T)
    np.testing.assert_array_equal(
        state["init_posterior"].numpy(), tf_values["model/iodine/initial_sample_distribution"]
    )
    np.testing.assert_array_equal(
        state["input_norms.dzp.weight"].numpy(),
        tf_values["model/iodine/preprocess/layer_norm_dzp/gamma"],
    )
    assert all(t.dtype == torch.float32 for t in state.values())
    assert converted_tetrominoes.global_step == 123456
    assert converted_tetrominoes.paper_config == "tetrominoes"
    # Kept aside in TF layout: the factor regressor's map; skipped: slots, step, statistics.
    assert sorted(converted_tetrominoes.factor) == [
        "factor_evaluator/repres_content/predict_latents/b",
        "factor_evaluator/repres_content/predict_latents/w",
    ]
    # ... and converted into our factor regressor (on for tetrominoes): w [Z, M] -> [M, Z].
    np.testing.assert_array_equal(
        state["factor_regressor.predict_latents.weight"].numpy(),
        tf_values["factor_evaluator/repres_content/predict_latents/w"].T,
    )
    np.testing.assert_array_equal(
        state["factor_regressor.predict_latents.bias"].numpy(),
        tf_values["factor_evaluator/repres_content/predict_latents/b"],
    )
    skipped = converted_tetrominoes.ignored
    assert len(skipped) == 13 and "global_step" in skipped and "beta1_power" in skipped
    assert sum(n.endswith("/Adam") or n.endswith("/Adam_1") for n in skipped) == 4


def test_tool_writes_what_model_weight_loads(tmp_path, capsys, converted_tetrominoes):
    output = tmp_path / "released.pth"
    status, out, err = _run(capsys, "tetrominoes.yaml", PREFIX, output)
    assert status == 0, err
    assert "paper configuration: tetrominoes" in out and "199,568 values" in out
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, "tetrominoes.yaml"))
    model = build_model(cfg)
    data = Checkpointer(model).load(str(output), weights_only=True)
    assert data["iteration"] == 123456
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, converted_tetrominoes.state[name], rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["released.pth"]


@pytest.mark.parametrize(
    "config, expected",
    [
        ("multi_dsprites.yaml", "missing from checkpoint: recurrent_net/lstm/lstm/w_gates"),
        ("clevr6_prop.yaml", "shape mismatch: encoder_net/cnn/conv_net_2d/conv_2d_0/w"),
    ],
)
def test_checkpoint_of_another_config_is_refused_with_a_list(tmp_path, capsys, config, expected):
    output = tmp_path / "out.pth"
    output.write_bytes(b"previous content")
    status, _, err = _run(capsys, config, PREFIX, output)
    assert status == 1
    assert err.startswith(f"error: {PREFIX}: does not match")
    assert expected in err
    assert len(err.strip().splitlines()) > 3  # every difference, one per line
    assert output.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["out.pth"]


def test_config_override_changing_the_architecture_is_refused(tmp_path, capsys):
    status, _, err = _run(
        capsys, "tetrominoes.yaml", PREFIX, tmp_path / "x.pth", "MODEL.REFINEMENT.LSTM_SIZE", "64"
    )
    assert status == 1
    assert "missing from checkpoint: recurrent_net/lstm/lstm/b_gates [256]" in err
    assert not os.listdir(tmp_path)


def test_truncated_and_foreign_files_are_one_line_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    shutil.copytree(TETROMINOES, folder)
    data = str(folder / "model.ckpt.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(1000)
    status, _, err = _run(capsys, "tetrominoes.yaml", str(folder), tmp_path / "a.pth")
    assert status == 1 and err.count("\n") == 1 and data in err and "truncated" in err
    foreign = tmp_path / "notes.index"
    foreign.write_text("not a checkpoint\n" * 20)
    status, _, err = _run(capsys, "tetrominoes.yaml", str(foreign), tmp_path / "b.pth")
    assert status == 1 and err.count("\n") == 1 and str(foreign) in err
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "notes.index"]


def test_a_failing_write_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    output = tmp_path / "out.pth"
    output.write_bytes(b"previous content")

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _run(capsys, "tetrominoes.yaml", PREFIX, output)
    assert output.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["out.pth"]


def test_our_side_mismatch_is_refused_with_a_list(converted_tetrominoes):
    shapes = {n: tuple(t.shape) for n, t in converted_tetrominoes.state.items()}
    del shapes["refinement.head.bias"]
    shapes["refinement.extra.weight"] = (3,)
    shapes["decoder.output.weight"] = (4, 32, 3, 3)
    with pytest.raises(ConversionError) as exc_info:
        convert_variables(TFCheckpoint(PREFIX), PAPER_ARCHS["tetrominoes"], shapes)
    message = str(exc_info.value)
    assert "our model has no conversion for: refinement.extra.weight" in message
    assert "not in our model: refinement.head.bias" in message
    assert "decoder.output.weight: converted [4, 32, 5, 5] vs model [4, 32, 3, 3]" in message


def test_behaviour_switches_that_differ_from_the_release_are_noted(tmp_path, capsys):
    status, out, _ = _run(
        capsys,
        "tetrominoes.yaml",
        PREFIX,
        tmp_path / "x.pth",
        "MODEL.REFINEMENT.PADDING",
        "symmetric",
        "INPUT.IMAGE_SIZE",
        "64",
    )
    assert status == 0
    assert "note: MODEL.REFINEMENT.PADDING is 'symmetric'" in out
    assert "note: INPUT.IMAGE_SIZE is 64" in out


@pytest.mark.slow
def test_command_line(tmp_path):
    output = tmp_path / "w.pth"
    command = [
        sys.executable,
        os.path.join(REPO, "tools", "convert_checkpoint.py"),
        "--config-file",
        os.path.join(CONFIGS, "tetrominoes.yaml"),
        "--checkpoint",
        TETROMINOES,
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert f"-> {output}" in done.stdout
    data = torch.load(output, map_location="cpu", weights_only=True)
    # 31 IODINE tensors plus the factor regressor's weight and bias (on for tetrominoes).
    assert len(data["model"]) == 33 and data["iteration"] == 123456
    assert sum("factor" in name for name in data["model"]) == 2


def test_model_with_a_factor_regressor_needs_the_released_one():
    from lib.convert.convert import _factor_rules

    with pytest.raises(ConversionError, match="predict_latents/w") as info:
        _factor_rules(PREFIX, {})
    assert "MODEL.FACTOR_REGRESSOR.ENABLED off" in str(info.value)
