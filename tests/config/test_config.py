"""Config loading: dataset name forms, validation errors that name the key, defaults."""

import pytest

from lib.config import get_cfg, load_cfg
from lib.config.defaults import _C


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("sprites_train", ("sprites_train",)),
        ('("a_train", "b_train")', ("a_train", "b_train")),
        ("[a_train, folder:/x/y]", ("a_train", "folder:/x/y")),
    ],
)
def test_dataset_names_in_yaml(tmp_path, value, expected):
    cfg = load_cfg(_write(tmp_path, f"DATASETS:\n  TRAIN: {value}\n"))
    assert cfg.DATASETS.TRAIN == expected


def test_dataset_override_bare_string_and_output_dir(tmp_path):
    cfg = load_cfg(_write(tmp_path, "SEED: 3\n"), ["DATASETS.TEST", "folder:/tmp/data"])
    assert cfg.DATASETS.TEST == ("folder:/tmp/data",)
    assert cfg.OUTPUT_DIR.endswith("logs/c") and cfg.SEED == 3


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "MODEL:\n  IODINE:\n    NUM_SLOTZ: 3\n")
    with pytest.raises(KeyError, match="NUM_SLOTZ") as err:
        load_cfg(path)
    assert path in str(err.value)
    with pytest.raises(ValueError, match="SOLVER.MAX_ITERS"):
        load_cfg(None, ["SOLVER.MAX_ITERS", "3"])


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("MODEL.IODINE.LIKELIHOOD", "'laplace'", "LIKELIHOOD"),
        ("SOLVER.BASE_LR", "-1.0", "BASE_LR"),
        ("SOLVER.MAX_ITER", "'ten'", "MAX_ITER"),
        ("SEED", "-1", "SEED"),
        ("SOLVER.DECAY_RATE", "0.0", "DECAY_RATE"),
        ("SOLVER.MAX_NONFINITE", "0", "MAX_NONFINITE"),
        ("INPUT.IMAGE_SIZE", "3", "total stride 16"),
    ],
)
def test_bad_values_fail_naming_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        load_cfg(None, [key, value])


def test_get_cfg_is_a_fresh_copy_and_every_key_is_commented():
    cfg = get_cfg()
    cfg.SEED = 99
    assert get_cfg().SEED == _C.SEED != 99
    import inspect

    import lib.config.defaults as defaults

    lines = inspect.getsource(defaults).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("_C.") and "= CN()" not in line:
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above: {line}"


def test_removed_compile_step_keys_load_and_are_ignored(tmp_path):
    # Configs written for the removed compiled training step still load (with a warning).
    path = tmp_path / "old.yaml"
    path.write_text("SOLVER:\n  COMPILE_STEP: True\n  COMPILE_MODE: reduce-overhead\n")
    cfg = load_cfg(str(path), ["SOLVER.COMPILE_BACKEND", "eager"])
    assert "COMPILE_STEP" not in cfg.SOLVER and "COMPILE_BACKEND" not in cfg.SOLVER
    assert cfg.SOLVER.ADAM == "tf1"
