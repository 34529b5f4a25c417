"""The tools' shared layer: command line, runner, weights, datasets."""

import numpy as np
import pytest
import torch
from engine_helpers import tiny_cfg
from PIL import Image

import lib.prepare
from lib.engine.checkpoint import Checkpointer, CheckpointError
from lib.engine.launch import (
    RunError,
    build_datasets,
    default_argument_parser,
    load_weights,
    parse_tool_args,
    run_tool,
)
from lib.model import build_model


def _parser():
    parser = default_argument_parser("test tool")
    parser.add_argument("--steps", type=int, default=1)
    return parser


@pytest.mark.parametrize(
    "argv, steps, opts",
    [
        (["--config-file", "c.yaml", "A.B", "1"], 1, ["A.B", "1"]),
        (["A.B", "1", "--steps", "3", "C.D", "-1"], 3, ["A.B", "1", "C.D", "-1"]),
        (["--steps", "2", "A.B", "(8, 8)"], 2, ["A.B", "(8, 8)"]),
        ([], 1, []),
    ],
)
def test_overrides_are_collected_wherever_they_stand(argv, steps, opts):
    args = parse_tool_args(_parser(), argv)
    assert args.steps == steps and args.opts == opts


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_tool_args(_parser(), ["A.B", "1", "--nope", "2"])
    assert exit_info.value.code == 2 and "--nope" in capsys.readouterr().err


def test_run_tool_exit_status_and_one_line_errors(capsys):
    seen = []

    def works(cfg, args):
        seen.append((cfg.SOLVER.MAX_ITER, args.steps, args.argv))

    argv = ["SOLVER.MAX_ITER", "7", "--steps", "4"]
    assert run_tool(argv, _parser(), works) == 0
    assert seen == [(7, 4, argv)]

    def fails(cfg, args):
        raise RunError("dataset x is missing")

    capsys.readouterr()
    assert run_tool([], _parser(), fails) == 1
    assert capsys.readouterr().err == "error: dataset x is missing\n"
    assert run_tool(["SOLVER.NOPE", "1"], _parser(), works) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "SOLVER.NOPE" in err and len(seen) == 1

    def bug(cfg, args):
        raise ZeroDivisionError("a bug, not a user error")

    with pytest.raises(ZeroDivisionError):
        run_tool([], _parser(), bug)
    assert run_tool([], _parser(), bug, errors=(ZeroDivisionError,)) == 1


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


def test_build_datasets_prepares_first_then_builds_each(tmp_path, monkeypatch):
    folder = tmp_path / "pngs" / "images"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{i}.png")
    name = f"folder:{tmp_path / 'pngs'}"
    calls = []
    monkeypatch.setattr(lib.prepare, "prepare_missing", lambda cfg, names: calls.append(names))

    datasets = build_datasets(tiny_cfg(), [name], is_train=False)
    assert calls == [[name]] and list(datasets) == [name]
    image, mask = datasets[name][2]
    np.testing.assert_allclose(image.numpy(), pixels[2].transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert mask is None

    missing = f"folder:{tmp_path / 'nowhere'}"
    with pytest.raises(RunError, match=f"dataset {missing}: .*nowhere"):
        build_datasets(tiny_cfg(), [missing], is_train=False)
    with pytest.raises(RunError, match="no_such_set"):
        build_datasets(tiny_cfg(), ["no_such_set"], is_train=True)
