"""lib.cli, the tools' plumbing: command line, runner, datasets."""

import numpy as np
import pytest
from PIL import Image

import lib.prepare
from lib.cli import build_datasets, default_argument_parser, parse_tool_args, run_tool
from lib.data import UnknownDatasetError
from lib.errors import DatasetError, MissingDatasetError, RunError
from tests.engine.engine_helpers import tiny_cfg


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
    # A value the validation refuses is one line too (validate_cfg raises ConfigError).
    assert run_tool(["SOLVER.ADAM", "nadam"], _parser(), works) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "SOLVER.ADAM" in err and err.count("\n") == 1

    def bug(cfg, args):
        raise ZeroDivisionError("a bug, not a user error")

    with pytest.raises(ZeroDivisionError):
        run_tool([], _parser(), bug)
    assert run_tool([], _parser(), bug, errors=(ZeroDivisionError,)) == 1


def test_only_the_projects_errors_become_one_line(capsys):
    # A KeyError from a bug in a dataset class must not read like a typo in the config.
    def bug_in_a_dataset(cfg, args):
        return {}["frames"]

    with pytest.raises(KeyError, match="frames"):
        run_tool([], _parser(), bug_in_a_dataset)

    def bad_file(cfg, args):
        raise DatasetError("/data/x.hdf5: key 'image' is missing")

    capsys.readouterr()
    assert run_tool([], _parser(), bad_file) == 1
    assert capsys.readouterr().err == "error: /data/x.hdf5: key 'image' is missing\n"


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
    with pytest.raises(MissingDatasetError, match="nowhere"):
        build_datasets(tiny_cfg(), [missing], is_train=False)
    with pytest.raises(UnknownDatasetError, match="no_such_set"):
        build_datasets(tiny_cfg(), ["no_such_set"], is_train=True)


def test_a_stop_signal_in_a_forked_worker_is_a_quiet_keyboard_interrupt(monkeypatch):
    import os
    import signal

    from lib.cli import _interrupt_handler
    from lib.errors import Interrupted

    handler = _interrupt_handler()
    with pytest.raises(Interrupted) as info:
        handler(signal.SIGTERM, None)
    assert info.value.exit_status == 128 + signal.SIGTERM
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)  # as seen from a forked child
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)


def test_a_lock_that_cannot_be_taken_is_not_called_held(tmp_path, monkeypatch):
    import errno
    import fcntl

    from lib.cli import output_dir_lock
    from lib.errors import RunError

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with pytest.raises(RunError, match="cannot lock .*train.lock: No locks available"):
        with output_dir_lock(str(tmp_path)):
            pass
