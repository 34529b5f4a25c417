"""Training reads device values on the host at most once per LOG.PERIOD; a skipped step is
undone on the device."""

import os
import sys

import numpy as np
import torch

import lib
from lib.engine.checkpoint import Checkpointer
from lib.engine.solver import make_lr_scheduler, make_optimizer, undo_host_steps
from lib.engine.trainer import do_train, train_step
from lib.model import build_model
from lib.model.iodine import IODINE
from tests.engine.engine_helpers import tiny_cfg

CPU = torch.device("cpu")
LIB = os.path.dirname(lib.__file__)
# The Tensor methods that copy a device value to the host (each one a sync on CUDA).
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def test_training_reads_the_device_once_per_log_period(tmp_path, monkeypatch):
    # A CPU proxy for torch.cuda.set_sync_debug_mode: count the host reads made by the code
    # of the training loop (lib/, frames outside torch), with the real model. The model's
    # step weights come from a host-only linspace: replaced by their values.
    period, iters = 4, 8
    cfg = tiny_cfg(
        str(tmp_path),
        **{
            "INPUT.IMAGE_SIZE": 8,
            "SOLVER.MAX_ITER": iters,
            "SOLVER.CHECKPOINT_PERIOD": 100,
            "LOG.PERIOD": period,
            "LOG.IMAGE_PERIOD": 0,
            "TEST.EVAL_PERIOD": 0,
        },
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    checkpointer = Checkpointer(model, optimizer, scheduler, str(tmp_path), save_to_disk=False)
    weights = {t: IODINE.step_weights(model, t) for t in range(4)}
    monkeypatch.setattr(IODINE, "step_weights", lambda self, t: weights[t])

    class Loader:
        dataset = None  # no factors to feed

        def __iter__(self):
            gen = torch.Generator().manual_seed(0)
            while True:
                yield torch.rand(4, 3, 8, 8, generator=gen), None

    reads_at: dict[int, int] = {}
    current = {"iteration": 0}
    original_step = scheduler.step

    def counting_step(*args, **kwargs):  # marks the end of each iteration's step
        current["iteration"] += 1
        return original_step(*args, **kwargs)

    monkeypatch.setattr(scheduler, "step", counting_step)

    def counter(name):
        method = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(LIB):
                reads_at[current["iteration"]] = reads_at.get(current["iteration"], 0) + 1
            return method(self, *args, **kwargs)

        return wrapped

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counter(name))
    do_train(cfg, model, Loader(), optimizer, scheduler, checkpointer, CPU, 0)
    monkeypatch.undo()
    # One read per period, at iterations 4 and 8 (after the step of that iteration).
    assert reads_at == {period: 1, 2 * period: 1}, reads_at


def test_deferred_check_undoes_a_bad_adam_step_exactly():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2, 3))]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = torch.optim.Adam(params, lr=0.1)
    ref = torch.optim.Adam(twin, lr=0.1)

    def grads(ps, scale):
        for i, p in enumerate(ps):
            p.grad = torch.full_like(p, scale * (i + 1))

    class Fixed(torch.nn.Module):
        def __init__(self, ps, value):
            super().__init__()
            self.ps, self.value = ps, value

        def forward(self, images):
            loss = sum((p * self.value).sum() for p in self.ps)
            steps = torch.zeros(2)
            return {"loss": loss, "nll": steps, "kl": steps}

    # Good step, bad step (NaN loss: undone), good step on one; two good steps on the twin.
    for value in (1.0, float("nan"), 0.5):
        step = train_step(Fixed(params, value), opt, [torch.zeros(1)], params, defer_check=True)
        assert step.skipped is None and step.bad.item() == (1.0 if value != value else 0.0)
    for value in (1.0, 0.5):
        train_step(Fixed(twin, value), ref, [torch.zeros(1)], twin)
    for p, q in zip(params, twin):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], ref.state[q][key]), key


def test_undo_host_steps_only_touches_host_counters():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p])
    opt.state[p]["step"] = torch.tensor(5.0, device="meta")  # a "host" counter elsewhere
    undo_host_steps(opt, 2)
    opt.state[p]["step"] = torch.tensor(5.0)  # on the parameter's device: restored on device
    undo_host_steps(opt, 2)
    assert opt.state[p]["step"].item() == 5.0
    opt.state[p]["step"] = 5
    undo_host_steps(opt, 2)
    assert opt.state[p]["step"] == 3


def test_uint8_images_convert_on_the_device_bitwise_as_the_datasets_do():
    from lib.engine.trainer import images_to_device

    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    # Independent of torch: NumPy's float32 division of every byte value.
    expected = torch.from_numpy(pixels.numpy().astype(np.float32) / np.float32(255))
    got = images_to_device(pixels, CPU)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    floats = torch.rand(2, 3, 4, 4)
    assert torch.equal(images_to_device(floats, CPU), floats)
