"""lib.engine.hooks with the Trainer: a loop stopped early still undoes its skipped steps;
hooks run in order and their time is left out of images/s where they are not training."""

import time

import torch

from lib.engine.hooks import HookBase, PeriodicStats
from lib.engine.trainer import Trainer
from tests.engine.engine_helpers import StandIn

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


def test_a_loop_stopped_early_undoes_its_skipped_steps_on_the_adam_counter():
    # Calls 1 and 3 are non-finite: of 5 iterations 3 are taken. The statistics are read only
    # at the end (log period 100): the final read must still take the 2 bad steps back.
    model = StandIn(nan_calls={1, 3})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    stats = PeriodicStats(log_period=100, checkpoint_period=0, max_nonfinite=10)
    trainer = Trainer(model, optimizer, _batches(), None, CPU, 0, 10**6, [stats, StopAfter(5)])
    trainer.train()
    assert trainer.iter == 5 and stats.skipped_steps == 2
    step = optimizer.state[model.weight]["step"]
    assert float(step) == 3.0  # Adam's bias correction counts the good steps only
    # The same 3 good updates, taken by hand with a fresh Adam, give the same weight.
    twin = StandIn()
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.1)
    gen = _batches()
    for call in range(5):
        images, _ = next(gen)
        if call in (1, 3):
            continue
        twin_opt.zero_grad()
        twin(images)["loss"].backward()
        twin_opt.step()
    torch.testing.assert_close(model.weight, twin.weight)


def test_hooks_run_in_order_and_evaluation_time_is_not_training_time():
    calls = []

    class Slow(HookBase):
        training_time = False

        def after_step(self, trainer):
            calls.append(("slow", trainer.iter))
            time.sleep(0.05)

    class Record(HookBase):
        def before_train(self, trainer):
            calls.append(("start", trainer.iter))

        def after_step(self, trainer):
            calls.append(("record", trainer.iter))

        def after_train(self, trainer):
            calls.append(("end", trainer.iter))

    model = StandIn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, optimizer, _batches(), None, CPU, 2, 4, [Record(), Slow()])
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    assert calls == [
        ("start", 2), ("record", 3), ("slow", 3), ("record", 4), ("slow", 4), ("end", 4),
    ]  # fmt: skip
    # The meter's clock was moved forward by the slow hook's time: it started after the
    # loop began plus the 0.1 s spent in the slow hook.
    assert trainer.meter.start - start >= 0.1 - 1e-3 and elapsed >= 0.1
