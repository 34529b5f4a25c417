"""lib/analysis/scalars.py: TensorBoard scalars read back as written."""

import os

import pytest
from torch.utils.tensorboard import SummaryWriter

from lib.analysis.scalars import per_step_tags, read_scalars


def test_read_scalars_of_a_resumed_run(tmp_path):
    logdir = str(tmp_path)
    written = {"loss/total": {}, "loss/nll_t0": {}, "eval/fg_ari": {}}
    writer = SummaryWriter(logdir)
    for step in range(1, 5):
        for tag in ("loss/total", "loss/nll_t0"):
            value = 0.25 * step + len(tag)
            writer.add_scalar(tag, value, step)
            written[tag][step] = value
    writer.add_scalar("eval/fg_ari", 0.25, 4)
    written["eval/fg_ari"][4] = 0.25
    writer.close()
    # A resumed run writes a second event file; step 4 logged again keeps the newer value.
    writer = SummaryWriter(logdir, filename_suffix=".resumed")
    for step, value in ((4, 1.5), (6, 0.5)):
        writer.add_scalar("loss/total", value, step)
        written["loss/total"][step] = value
    writer.close()

    scalars = read_scalars(logdir)
    assert set(scalars) == set(written)
    for tag, by_step in written.items():
        steps = sorted(by_step)
        assert scalars[tag] == (steps, [pytest.approx(by_step[s]) for s in steps]), tag


def test_read_scalars_of_empty_and_missing_folders(tmp_path):
    os.makedirs(tmp_path / "empty")
    assert read_scalars(str(tmp_path / "empty")) == {}
    with pytest.raises(FileNotFoundError, match="missing"):
        read_scalars(str(tmp_path / "missing"))


def test_per_step_tags():
    tags = ["loss/nll_t10", "loss/nll_t2", "loss/nll_t", "loss/nll_tx", "loss/kl_t0", "nll_t1"]
    assert per_step_tags(tags, "loss/nll_t") == [(2, "loss/nll_t2"), (10, "loss/nll_t10")]
    assert per_step_tags({"loss/kl_t0": 1}, "loss/kl_t") == [(0, "loss/kl_t0")]
