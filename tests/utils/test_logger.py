"""setup_logger routes the tool's and lib.*'s messages to the console and log.txt."""

import logging

import torch

from lib.utils.logger import close_logger, environment_info, git_description, setup_logger


def test_log_file_console_and_cleanup(tmp_path, capsys):
    logger = setup_logger("iodine_test", str(tmp_path), rank=0)
    logger.info("hello")
    logger.debug("only in the file")
    logging.getLogger("lib.data.somewhere").warning("generating the dataset")
    logging.getLogger("lib.data.somewhere").debug("too chatty")
    close_logger(logger)
    text = (tmp_path / "log.txt").read_text()
    assert "hello" in text and "only in the file" in text and "generating the dataset" in text
    assert "too chatty" not in text
    out = capsys.readouterr().out
    assert "hello" in out and "only in the file" not in out
    # Defaults are back: nothing left attached, records propagate again.
    for name in ("iodine_test", "lib"):
        assert logging.getLogger(name).handlers == [] and logging.getLogger(name).propagate


def test_other_ranks_print_warnings_only(tmp_path, capsys):
    logger = setup_logger("iodine_test", str(tmp_path), rank=1)
    logger.info("quiet")
    logger.warning("loud")
    close_logger(logger)
    out = capsys.readouterr().out
    assert "quiet" not in out and "[rank 1]" in out and "loud" in out
    assert not (tmp_path / "log.txt").exists()


def test_environment_info_names_versions_and_device():
    info = environment_info(torch.device("cpu"))
    for key in ("git commit:", "python:", "torch:", "numpy:", "device: cpu"):
        assert key in info
    assert git_description()
