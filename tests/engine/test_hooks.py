"""The Trainer and its hooks: a loop stopped early still undoes its skipped steps; the hooks'
order does not matter; hooks run in list order and non-training time is left out of images/s;
SIGTERM and SIGINT end the loop at a step boundary with a checkpoint."""

import os
import signal
import time

import pytest
import torch

from lib.engine.checkpoint import Checkpointer, read_checkpoint
from lib.engine.hooks import HookBase, PeriodicCheckpoint, ProgressBar, ScalarLogs
from lib.engine.solver import make_lr_scheduler, make_optimizer
from lib.engine.trainer import Trainer, do_train
from lib.errors import Interrupted
from tests.engine.engine_helpers import StandIn, tiny_cfg

CPU = torch.device("cpu")


def _batches():
    gen = torch.Generator().manual_seed(0)
    while True:
        yield torch.rand(2, 3, 4, 4, generator=gen), None


class StopAfter(HookBase):
    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def after_step(self, trainer) -> None:
        trainer.stop = trainer.iter >= self.iterations


def _adam_by_hand(calls: int, bad: set[int]) -> torch.Tensor:
    # The good updates alone, taken with a fresh Adam on a fresh StandIn.
    twin = StandIn()
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.1)
    gen = _batches()
    for call in range(calls):
        images, _ = next(gen)
        if call in bad:
            continue
        twin_opt.zero_grad()
        twin(images)["loss"].backward()
        twin_opt.step()
    return twin.weight.detach()


def test_a_loop_stopped_early_undoes_its_skipped_steps_on_the_adam_counter():
    # Calls 1 and 3 are non-finite: of 5 iterations 3 are taken. No hook reads the statistics:
    # the trainer's own read at the end must still take the 2 bad steps back.
    model = StandIn(nan_calls={1, 3})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    trainer = Trainer(model, optimizer, _batches(), None, CPU, 0, 10**6, [StopAfter(5)])
    trainer.train()
    assert trainer.iter == 5 and trainer.skipped_steps == 2
    assert float(optimizer.state[model.weight]["step"]) == 3.0  # bias correction: good steps
    torch.testing.assert_close(model.weight.detach(), _adam_by_hand(5, {1, 3}))


@pytest.mark.parametrize("checkpoint_first", [True, False])
def test_the_order_of_the_hooks_does_not_matter(tmp_path, checkpoint_first):
    # Call 1 is non-finite and the checkpoint of iteration 2 comes before any log: whichever
    # hook runs first, the checkpoint holds Adam's counter of the good step only.
    model = StandIn(nan_calls={1})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    checkpointer = Checkpointer(model, optimizer, save_dir=str(tmp_path))
    hooks = [ScalarLogs(100), PeriodicCheckpoint(checkpointer, 2, ""), ProgressBar(100)]
    hooks = hooks[::-1] if checkpoint_first else hooks
    Trainer(model, optimizer, _batches(), None, CPU, 0, 2, hooks).train()
    state = read_checkpoint(str(tmp_path / "model_0000002.pth"))
    assert float(state["optimizer"]["state"][0]["step"]) == 1.0
    torch.testing.assert_close(state["model"]["weight"], _adam_by_hand(2, {1}))


def test_hooks_run_in_order_and_evaluation_time_is_not_training_time():
    calls = []

    class Slow(HookBase):
        training_time = False

        def after_step(self, trainer):
            calls.append(("slow", trainer.iter))
            time.sleep(0.05)

    starts = {}

    class Record(HookBase):
        def before_train(self, trainer):
            calls.append(("start", trainer.iter))

        def after_step(self, trainer):
            calls.append(("record", trainer.iter))
            starts[trainer.iter] = trainer.meter.start

        def after_train(self, trainer):
            calls.append(("end", trainer.iter))

    model = StandIn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, optimizer, _batches(), None, CPU, 2, 4, [Record(), Slow()])
    trainer.train()
    assert calls == [
        ("start", 2), ("record", 3), ("slow", 3), ("record", 4), ("slow", 4), ("end", 4),
    ]  # fmt: skip
    # The slow hook's time at iteration 3 moved the images/s clock forward by as much.
    assert starts[4] - starts[3] >= 0.05 - 1e-3


def _signalling(signum: int, at_call: int):
    """_batches, sending ``signum`` to this process as it hands out batch ``at_call``."""
    for call, batch in enumerate(_batches()):
        if call == at_call:
            os.kill(os.getpid(), signum)
        yield batch


class SignalWhileSaving(Checkpointer):
    """A second SIGTERM arrives in the middle of each save."""

    def save(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return super().save(*args, **kwargs)


def _run(cfg, model, start, loader, checkpointer_type=Checkpointer):
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    checkpointer = checkpointer_type(model, optimizer, scheduler, cfg.OUTPUT_DIR, keep=5)
    if start:
        checkpointer.load(checkpointer.last_checkpoint())
    for _ in range(start):  # the batches a resumed loader skips
        next(loader)
    return do_train(cfg, model, loader, optimizer, scheduler, checkpointer, CPU, start)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_at_a_step_boundary_with_a_checkpoint(tmp_path, signum):
    opts = {"SOLVER.MAX_ITER": 6, "SOLVER.CHECKPOINT_PERIOD": 4, "TEST.EVAL_PERIOD": 0}
    cfg = tiny_cfg(str(tmp_path / "run"), **opts)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    # The signal comes while iteration 3 loads its batch (the loader's call 2).
    with pytest.raises(Interrupted, match="stopped at iteration 3") as info:
        _run(cfg, StandIn(), 0, _signalling(signum, 2), SignalWhileSaving)
    assert info.value.exit_status == 128 + signum
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    # Iteration 3 was saved, although a second SIGTERM came during the save.
    last = open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")).read().strip()
    assert last == "model_0000003.pth"
    assert read_checkpoint(os.path.join(cfg.OUTPUT_DIR, last))["iteration"] == 3
    # Resumed from it, the run ends with the weights of an uninterrupted one.
    resumed, straight = StandIn(), StandIn()
    assert _run(cfg, resumed, 3, _batches())["iteration"] == 6
    _run(tiny_cfg(str(tmp_path / "straight"), **opts), straight, 0, _batches())
    assert torch.equal(resumed.weight, straight.weight)
