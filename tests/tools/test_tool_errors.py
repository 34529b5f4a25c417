"""The tools fail with one clear line (exit status 1) on mistakes a user can make."""

import os

import pytest
import torch

from lib.config import load_cfg
from lib.engine.checkpoint import Checkpointer
from lib.model import build_model
from tests.tools.tools_helpers import load_tool, write_config

train_net = load_tool("train_net")
test_net = load_tool("test_net")


def _fails(tool, argv, capsys, *fragments):
    capsys.readouterr()
    assert tool.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_config_errors(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    _fails(train_net, ["--config-file", config, "SOLVER.NOPE", "1"], capsys, "SOLVER.NOPE")
    _fails(test_net, ["--config-file", str(tmp_path / "missing.yaml")], capsys, "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER:\n  MAX_ITERS: 3\n")
    _fails(train_net, ["--config-file", str(bad)], capsys, "bad.yaml", "SOLVER.MAX_ITERS")
    _fails(train_net, ["--config-file", config, "SOLVER.MAX_ITER", "0"], capsys, "SOLVER.MAX_ITER")
    out = str(tmp_path / "run")
    # A YAML syntax error names the file and line; a list is no config; a .py is not run.
    bad.write_text("SOLVER:\n  BASE_LR: 1\n  MAX_ITER: [1,\n")
    _fails(train_net, ["--config-file", str(bad)], capsys, f"config file {bad}", "line 4")
    listed = tmp_path / "list.yaml"
    listed.write_text("- SOLVER.MAX_ITER\n- 3\n")
    _fails(train_net, ["--config-file", str(listed)], capsys, "list.yaml holds a list")
    marker = tmp_path / "ran"
    python = tmp_path / "config.py"
    python.write_text(f"open({str(marker)!r}, 'w').close()\n")
    _fails(train_net, ["--config-file", str(python)], capsys, "config.py is not a .yaml")
    assert not marker.exists()
    # Values that would fail (or silently do nothing) once training runs.
    for key, value in (
        ("SEED", "-1"),
        ("SOLVER.DECAY_RATE", "-0.5"),
        ("SOLVER.DECAY_RATE", "0.0"),
        ("SOLVER.MAX_NONFINITE", "0"),
        ("INPUT.IMAGE_SIZE", "1"),
        ("INPUT.IMAGE_SIZE", "3"),
    ):
        _fails(train_net, ["--config-file", config, "OUTPUT_DIR", out, key, value], capsys, key)
    assert not os.path.exists(out)  # refused before any work


def test_dataset_errors(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")
    missing = str(tmp_path / "nowhere")
    _fails(
        train_net,
        ["--config-file", config, "OUTPUT_DIR", out, "DATASETS.TRAIN", f"folder:{missing}"],
        capsys,
        "nowhere",
    )
    for period in ("1", "0"):  # an unknown test set is refused even with evaluation off
        _fails(
            train_net,
            ["--config-file", config, "OUTPUT_DIR", out, "DATASETS.TEST", "no_such_set"]
            + ["TEST.EVAL_PERIOD", period],
            capsys,
            "no_such_set",
        )
    _fails(
        test_net,
        ["--config-file", config, "OUTPUT_DIR", out, "DATASETS.TEST", f"folder:{missing}"],
        capsys,
        "nothing to evaluate",
    )
    # The message is also in log.txt, with the traceback for whoever needs it.
    assert "Traceback" in open(os.path.join(out, "log.txt")).read()


def test_checkpoint_errors(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")
    _fails(test_net, ["--config-file", config, "OUTPUT_DIR", out], capsys, "nothing to evaluate")
    # Weights of another architecture (latent size 8 in the file, 4 in the run).
    cfg = load_cfg(config)
    Checkpointer(build_model(cfg), save_dir=str(tmp_path / "w")).save(0)
    weight = str(tmp_path / "w" / "model_0000000.pth")
    other = ["MODEL.IODINE.LATENT_DIM", "4", "MODEL.WEIGHT", weight, "OUTPUT_DIR", out]
    _fails(train_net, ["--config-file", config, *other], capsys, "init_posterior", "(16,)", "(8,)")
    _fails(test_net, ["--config-file", config, *other], capsys, "shape mismatch")
    # A dangling last_checkpoint.
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000009.pth\n")
    _fails(train_net, ["--config-file", config, "OUTPUT_DIR", out], capsys, "model_0000009.pth")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    _fails(
        train_net,
        ["--config-file", config, "OUTPUT_DIR", str(tmp_path / "r"), "MODEL.DEVICE", "cuda"],
        capsys,
        "MODEL.DEVICE",
    )


def test_paper_dataset_without_official_data(tmp_path, data_root, capsys):
    # data_root holds the stand-in tetrominoes_synth only: the paper name must not read it,
    # and nothing is generated or trained.
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")
    before = sorted(os.listdir(data_root))
    paper = ["DATASETS.TRAIN", "tetrominoes_train", "DATASETS.TEST", "tetrominoes_test"]
    _fails(
        train_net,
        ["--config-file", config, "OUTPUT_DIR", out, *paper],
        capsys,
        "official dataset 'tetrominoes' not found",
        "gsutil cp gs://multi-object-datasets/tetrominoes/tetrominoes_train.tfrecords",
        "python tools/prepare_data.py --dataset tetrominoes --tfrecords tetrominoes_train",
        "DATASETS.TRAIN tetrominoes_synth_train DATASETS.TEST tetrominoes_synth_test",
    )
    assert sorted(os.listdir(data_root)) == before
    assert not any(name.endswith(".pth") or "events" in name for name in os.listdir(out))


def test_weight_with_a_checkpoint_in_output_dir(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    cfg = load_cfg(config)
    Checkpointer(build_model(cfg), save_dir=str(tmp_path / "w")).save(0)
    weight = str(tmp_path / "w" / "model_0000000.pth")
    out = str(tmp_path / "run")
    short = ["--config-file", config, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "2"]
    short += ["TEST.EVAL_PERIOD", "0", "LOG.IMAGE_PERIOD", "0"]
    assert train_net.main(short) == 0  # a run from scratch leaves model_0000002.pth
    _fails(
        train_net,
        [*short, "MODEL.WEIGHT", weight, "SOLVER.MAX_ITER", "3"],
        capsys,
        f"MODEL.WEIGHT is {weight}",
        f"OUTPUT_DIR {out} already holds",
        "SOLVER.RESUME False",
        "another OUTPUT_DIR",
    )
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_0000002.pth"]
    # A run started from the weights resumes when its command is run again.
    tuned = ["--config-file", config, "OUTPUT_DIR", str(tmp_path / "tuned"), "MODEL.WEIGHT"]
    tuned += [weight, "TEST.EVAL_PERIOD", "0", "LOG.IMAGE_PERIOD", "0"]
    assert train_net.main([*tuned, "SOLVER.MAX_ITER", "2"]) == 0
    assert train_net.main([*tuned, "SOLVER.MAX_ITER", "3"]) == 0
    log = open(tmp_path / "tuned" / "log.txt").read()
    assert "fresh start from the weights of" in log and "at iteration 2" in log
    # SOLVER.RESUME False starts over from the weights in the same folder.
    assert train_net.main([*short, "MODEL.WEIGHT", weight, "SOLVER.RESUME", "False"]) == 0
    assert open(os.path.join(out, "log.txt")).read().count("fresh start from the weights") == 1


def test_unwritable_output_dir(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    if os.geteuid() == 0:  # root writes through permissions; sysfs refuses new folders
        out = "/sys/iodine_test_run"
    else:
        os.makedirs(tmp_path / "ro")
        os.chmod(tmp_path / "ro", 0o500)
        out = str(tmp_path / "ro" / "run")
    for tool in (train_net, test_net):
        _fails(tool, ["--config-file", config, "OUTPUT_DIR", out], capsys, f"OUTPUT_DIR {out}")


def test_corrupted_weights_are_refused(tmp_path, data_root, capsys):
    from tests.engine.test_checkpoint import _corrupt

    config = write_config(str(tmp_path), data_root)
    Checkpointer(build_model(load_cfg(config)), save_dir=str(tmp_path / "w")).save(0)
    weight = str(tmp_path / "w" / "model_0000000.pth")
    _corrupt(weight)
    argv = ["--config-file", config, "OUTPUT_DIR", str(tmp_path / "run"), "MODEL.WEIGHT", weight]
    _fails(test_net, argv, capsys, f"checkpoint {weight} is corrupted")
    _fails(train_net, argv, capsys, f"checkpoint {weight} is corrupted")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, data_root):
    import resource
    import signal
    import subprocess

    from tests.tools.tools_helpers import PYTHON, REPO, subprocess_env

    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")
    command = [PYTHON, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config]
    command += ["OUTPUT_DIR", out, "TEST.EVAL_PERIOD", "0", "LOG.IMAGE_PERIOD", "0"]
    assert train_net.main([*command[2:], "SOLVER.MAX_ITER", "2"]) == 0
    size = os.path.getsize(os.path.join(out, "model_0000002.pth"))

    def small_files():  # a file-size limit fails writes as a full disk does
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    result = subprocess.run(
        [*command, "SOLVER.MAX_ITER", "4"], env=subprocess_env(), preexec_fn=small_files,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: cannot write {os.path.join(out, 'model_0000004.pth')}")
    assert "Traceback" not in result.stderr
    assert sorted(f for f in os.listdir(out) if "model_" in f) == ["model_0000002.pth"]
    assert (
        Checkpointer(build_model(load_cfg(config)), save_dir=out)
        .last_checkpoint()
        .endswith("model_0000002.pth")
    )
