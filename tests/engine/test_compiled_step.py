"""SOLVER.COMPILE_STEP: the compiled step region (forward, backward, clipping, finite check)
gives the eager step's parameters and Adam state, skips a non-finite step the same way,
accumulates micro-batches the same way, and compiles once for a run's fixed shapes.

On the CPU the region is compiled with the "eager" backend (dynamo's graph capture, guards
and graph breaks, eager kernels) in the fast tier and "aot_eager" (plus AOTAutograd's
compiled forward and backward) in the slow tier; inductor's generated kernels need a GPU
session (tools/gpu_profile.sh)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from torch._dynamo.utils import counters

from lib.config import get_cfg
from lib.engine.solver import make_lr_scheduler, make_optimizer
from lib.engine.trainer import Trainer, compile_step_mode, compile_step_region, undo_host_steps
from lib.errors import ConfigError
from lib.model import build_model
from tests.engine.engine_helpers import tiny_cfg

CPU = torch.device("cpu")
SIZE = 8


def _batches(nan_at: tuple[int, ...] = (), count: int = 8):
    """Fixed (images, None) batches of 2 images; those at ``nan_at`` hold a NaN pixel."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for index in range(count):
        images = torch.rand(2, 3, SIZE, SIZE, generator=gen)
        if index in nan_at:
            images[0, 0, 0, 0] = float("nan")
        batches.append((images, None))
    return batches


@dataclass
class _Run:
    """A finished run: its trainer, each iteration's bad flag and, after each chunk of
    iterations, dynamo's count of the graphs it has compiled."""

    trainer: Trainer
    bad: list[float]
    graphs: list[int]


def _run(chunks: tuple[int, ...], compile_backend: str | None, accumulate: int = 1, nan_at=()):
    """Train the tiny model ``sum(chunks)`` iterations, one ``trainer.train()`` per chunk (each
    carries on where the last stopped, as a resumed benchmark does); returns a ``_Run``."""
    cfg = tiny_cfg(
        "",
        **{
            "INPUT.IMAGE_SIZE": SIZE,
            "SOLVER.ACCUMULATE_STEPS": accumulate,
            # A learning rate that changes every iteration: no recompile for it.
            "SOLVER.DECAY_STEPS": 10,
        },
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    mode = None if compile_backend is None else "default"
    trainer = Trainer(
        model, optimizer, itertools.cycle(_batches(nan_at)), scheduler, CPU, 0, 0, (),
        accumulate, 5.0, compile_mode=mode, compile_backend=compile_backend or "inductor",
    )  # fmt: skip
    bad = []

    class Record:
        training_time = True

        def before_train(self, t):
            pass

        def before_step(self, t):
            pass

        def after_step(self, t):
            bad.append(t.step.bad.clone())

        def after_train(self, t):
            pass

    trainer.hooks = [Record()]
    torch.manual_seed(1)  # the same training noise for both runs
    graphs = []
    for count in chunks:
        trainer.start_iter, trainer.max_iter = trainer.iter, trainer.iter + count
        trainer.train()
        graphs.append(counters["stats"]["unique_graphs"])
    flags = [float(b) for b in bad]
    undo_host_steps(optimizer, int(sum(flags)))
    return _Run(trainer, flags, graphs)


def _assert_same_state(eager: Trainer, compiled: Trainer) -> None:
    for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)
        s, t = eager.optimizer.state[p], compiled.optimizer.state[q]
        assert s.keys() == t.keys()
        for key in s:
            torch.testing.assert_close(t[key], s[key], rtol=0, atol=1e-6, msg=f"{name} {key}")


def _eager_and_compiled(
    backend: str, accumulate: int, nan_at=(), chunks: tuple[int, ...] = (4,)
) -> tuple[_Run, _Run]:
    eager = _run(chunks, None, accumulate, nan_at)
    torch._dynamo.reset()  # compile afresh: no frames cached by another test
    counters.clear()
    return eager, _run(chunks, backend, accumulate, nan_at)


def _assert_equivalent(eager: _Run, compiled: _Run, nan_at) -> None:
    assert compiled.graphs[0] > 0  # the region did run compiled
    assert compiled.bad == eager.bad
    assert sum(eager.bad) == len(nan_at)  # the NaN batches' steps were skipped
    _assert_same_state(eager.trainer, compiled.trainer)
    torch.testing.assert_close(
        compiled.trainer.step.values, eager.trainer.step.values, rtol=1e-5, atol=1e-5
    )


def _equivalence(backend: str, accumulate: int, nan_at=()) -> None:
    _assert_equivalent(*_eager_and_compiled(backend, accumulate, nan_at), nan_at)


SKIP_AT = (1,)


@pytest.fixture(scope="module")
def skipped_step_runs() -> tuple[_Run, _Run]:
    """Eager and compiled ("eager" backend) runs with a NaN batch at iteration 2: 2 iterations,
    then 3 more. One compilation serves two tests (it is most of their time)."""
    # Module fixtures are set up before the function-scoped one-thread fixture.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _eager_and_compiled("eager", accumulate=1, nan_at=SKIP_AT, chunks=(2, 3))
    finally:
        torch.set_num_threads(threads)


def test_compiled_step_equals_eager_with_a_skipped_step(skipped_step_runs):
    # Iteration 2's batch holds a NaN pixel: its loss is NaN, the update is undone on the
    # device in both runs, and they go on identically.
    _assert_equivalent(*skipped_step_runs, SKIP_AT)


@pytest.mark.slow  # a fresh compile (~2.5 s); the skipped-step test keeps one in the fast tier
def test_compiled_step_equals_eager_with_accumulation():
    _equivalence("eager", accumulate=2)


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_aot_compiled_step_equals_eager(accumulate):
    _equivalence("aot_eager", accumulate=accumulate, nan_at=(2,))


def test_shapes_stay_static_no_recompile_after_the_first_steps(skipped_step_runs):
    # Adam creates its state in the first update and the data-dependent pieces settle in the
    # second: from then on no frame is compiled again in the 3 further iterations of a second
    # ``train()``, though the learning rate changes (and the skipped step's update is undone).
    first, then = skipped_step_runs[1].graphs
    assert first > 0
    assert then == first


def test_compile_keys():
    cfg = get_cfg()
    assert compile_step_mode(cfg) is None  # released: eager
    cfg.merge_from_list(["SOLVER.COMPILE_STEP", True, "SOLVER.COMPILE_MODE", "reduce-overhead"])
    assert compile_step_mode(cfg) == "reduce-overhead"
    with pytest.raises(ConfigError, match="COMPILE_MODE"):
        compile_step_region(lambda: None, "fastest")
