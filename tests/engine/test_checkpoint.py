"""Checkpointer: atomic files, pruning, resume of every state, clear mismatch errors."""

import os
import random
import signal

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from lib.engine.checkpoint import (
    LAST_CHECKPOINT,
    Checkpointer,
    CheckpointError,
    get_rng_states,
    load_model_state,
    read_checkpoint,
    set_rng_states,
)
from lib.utils.io import atomic_write_bytes


def _net(hidden: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _trainer_state(hidden: int = 4):
    model = _net(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 0.5**it)
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    optimizer.zero_grad()
    model(torch.randn(5, 3)).pow(2).sum().backward()
    optimizer.step()
    scheduler.step()


def test_save_resume_restores_everything(tmp_path):
    model, optimizer, scheduler = _trainer_state()
    for _ in range(3):
        _step(model, optimizer, scheduler)
    ckpt = Checkpointer(model, optimizer, scheduler, str(tmp_path), keep=2)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = ckpt.save(3, cfg_yaml="SEED: 0\n", rng_states=[get_rng_states()])
    assert os.path.basename(path) == "model_0000003.pth"
    assert open(tmp_path / LAST_CHECKPOINT).read().strip() == "model_0000003.pth"
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    model2, optimizer2, scheduler2 = _trainer_state()
    ckpt2 = Checkpointer(model2, optimizer2, scheduler2, str(tmp_path))
    data = ckpt2.load(ckpt2.last_checkpoint())
    assert data["iteration"] == 3 and data["cfg"] == "SEED: 0\n"
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert scheduler2.last_epoch == 3
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert optimizer2.state_dict()["state"][0]["step"] == 3
    set_rng_states(data["rng_states"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    # Training continues identically from the restored state.
    torch.manual_seed(0)
    _step(model, optimizer, scheduler)
    torch.manual_seed(0)
    _step(model2, optimizer2, scheduler2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_keeps_newest_and_points_to_last(tmp_path):
    model, optimizer, scheduler = _trainer_state()
    ckpt = Checkpointer(model, optimizer, scheduler, str(tmp_path), keep=2)
    for it in (10, 20, 30, 40):
        ckpt.save(it)
    assert sorted(os.listdir(tmp_path)) == [
        LAST_CHECKPOINT,
        "model_0000030.pth",
        "model_0000040.pth",
    ]
    assert ckpt.last_checkpoint() == os.path.join(str(tmp_path), "model_0000040.pth")


def test_save_to_disk_false_writes_nothing(tmp_path):
    model, optimizer, scheduler = _trainer_state()
    assert (
        Checkpointer(model, optimizer, scheduler, str(tmp_path), save_to_disk=False).save(1) is None
    )
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_are_removed(tmp_path):
    names = ("model_0000005.pth.tmp.123", "last_checkpoint.tmp.9", "config.yaml.tmp.7")
    for name in (*names, "notes.tmp.1"):
        (tmp_path / name).write_bytes(b"x")
    ckpt = Checkpointer(_net(), save_dir=str(tmp_path))
    assert sorted(ckpt.remove_stale_tmp_files()) == sorted(names)
    assert os.listdir(tmp_path) == ["notes.tmp.1"]


def _corrupt(path: str, offset_in_tensor: int = 8) -> None:
    """Invert 16 bytes inside the data of the file's first tensor, found by an independent
    read of the zip's local header (30 bytes + name + extra field)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    raw = bytearray(open(path, "rb").read())
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len + offset_in_tensor
    raw[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])
    open(path, "wb").write(bytes(raw))


def test_a_corrupted_or_truncated_checkpoint_is_refused_and_a_resume_falls_back(tmp_path, caplog):
    model, optimizer, scheduler = _trainer_state(hidden=64)
    ckpt = Checkpointer(model, optimizer, scheduler, str(tmp_path), keep=3)
    for iteration in (1, 2, 3):
        ckpt.save(iteration)
    newest, middle = str(tmp_path / "model_0000003.pth"), str(tmp_path / "model_0000002.pth")
    _corrupt(newest)
    # torch.load alone still reads it: the tensor is silently wrong.
    assert torch.load(newest, weights_only=True)["iteration"] == 3
    with pytest.raises(CheckpointError, match="model_0000003.pth is corrupted.*CRC-32"):
        read_checkpoint(newest)
    with pytest.raises(CheckpointError, match="model_0000003.pth"):
        ckpt.load(ckpt.last_checkpoint())  # evaluation: refused, no fallback
    with caplog.at_level("WARNING"):
        assert ckpt.last_checkpoint(fall_back=True) == middle
    assert "model_0000003.pth" in caplog.text and "model_0000002.pth" in caplog.text
    # Truncated too: the resume goes back one further; nothing intact is an error.
    with open(middle, "r+b") as f:
        f.truncate(os.path.getsize(middle) // 2)
    (tmp_path / LAST_CHECKPOINT).write_text("model_0000002.pth\n")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*model_0000002.pth"):
        read_checkpoint(middle)
    assert ckpt.last_checkpoint(fall_back=True) == str(tmp_path / "model_0000001.pth")
    assert ckpt.load(str(tmp_path / "model_0000001.pth"))["iteration"] == 1
    os.remove(tmp_path / "model_0000001.pth")
    with pytest.raises(CheckpointError, match="no other checkpoint .* is intact"):
        ckpt.last_checkpoint(fall_back=True)


def test_missing_and_dangling_checkpoints_are_clear_errors(tmp_path):
    ckpt = Checkpointer(_net(), save_dir=str(tmp_path))
    assert ckpt.last_checkpoint() is None
    (tmp_path / LAST_CHECKPOINT).write_text("model_0000007.pth\n")
    with pytest.raises(CheckpointError, match="model_0000007.pth, which does not exist"):
        ckpt.last_checkpoint()
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(str(tmp_path / "nope.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*garbage.pth"):
        read_checkpoint(str(tmp_path / "garbage.pth"))


def test_other_architecture_names_parameter_and_shapes(tmp_path):
    Checkpointer(_net(4), save_dir=str(tmp_path)).save(1)
    path = str(tmp_path / "model_0000001.pth")
    with pytest.raises(CheckpointError) as info:
        Checkpointer(_net(5), save_dir=str(tmp_path)).load(path, weights_only=True)
    message = str(info.value)
    assert "model_0000001.pth" in message
    assert "0.weight: checkpoint (4, 3) vs model (5, 3)" in message
    with pytest.raises(CheckpointError, match="missing from checkpoint: 4.bias, 4.weight"):
        load_model_state(
            nn.Sequential(*_net(4), nn.ReLU(), nn.Linear(2, 2)),
            read_checkpoint(path)["model"],
            path,
        )


def test_weights_only_from_bare_or_wrapped_state_dict(tmp_path):
    source = _net()
    bare = str(tmp_path / "bare.pth")
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, bare)
    model, optimizer, scheduler = _trainer_state()
    data = Checkpointer(model, optimizer, scheduler, str(tmp_path)).load(bare, weights_only=True)
    assert "iteration" not in data
    for a, b in zip(source.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert scheduler.last_epoch == 0  # weights only: optimiser and schedule untouched
    with pytest.raises(CheckpointError, match="no 'optimizer' state"):
        Checkpointer(model, optimizer, scheduler, str(tmp_path)).load(bare)


def _killed_while_saving(save_dir: str) -> None:
    # Child process: start writing checkpoint 2, then die by SIGKILL halfway through.
    def half_then_die(f):
        f.write(b"\x80\x02partial checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    atomic_write_bytes(os.path.join(save_dir, "model_0000002.pth"), half_then_die)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_during_write_leaves_last_good_checkpoint(tmp_path):
    model, optimizer, scheduler = _trainer_state()
    ckpt = Checkpointer(model, optimizer, scheduler, str(tmp_path))
    ckpt.save(1)
    child = mp.get_context("fork").Process(target=_killed_while_saving, args=(str(tmp_path),))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    leftovers = sorted(os.listdir(tmp_path))
    assert "model_0000002.pth" not in leftovers
    assert any(name.startswith("model_0000002.pth.tmp.") for name in leftovers)
    # The pointer still names the complete checkpoint, which loads; the next run cleans up.
    assert ckpt.load(ckpt.last_checkpoint())["iteration"] == 1
    assert len(ckpt.remove_stale_tmp_files()) == 1
    assert sorted(os.listdir(tmp_path)) == [LAST_CHECKPOINT, "model_0000001.pth"]


class _WithRegressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(3, 2)
        self.factor_regressor = torch.nn.Linear(2, 4)


def test_weights_without_factor_regressor_load_and_keep_its_init(caplog):
    source, target = _WithRegressor(), _WithRegressor()
    init = target.factor_regressor.weight.detach().clone()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("factor_regressor")}
    with caplog.at_level("WARNING"):
        load_model_state(target, state, "old.pth")
    assert torch.equal(target.body.weight, source.body.weight)
    assert torch.equal(target.factor_regressor.weight, init)
    assert "factor regressor" in caplog.text
    del state["body.bias"]
    with pytest.raises(CheckpointError, match="body.bias"):
        load_model_state(target, state, "old.pth")
