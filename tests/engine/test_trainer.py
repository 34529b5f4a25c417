"""do_train: steps, schedule, accumulation, clipping, non-finite handling, logging."""

import itertools
import os

import numpy as np
import pytest
import torch

from lib.engine.checkpoint import LAST_CHECKPOINT, Checkpointer
from lib.engine.inference import make_heldout_batches
from lib.engine.solver import make_lr_scheduler, make_optimizer
from lib.engine.trainer import NonFiniteError, do_train, train_step
from lib.model import build_model
from tests.engine.engine_helpers import StandIn, tiny_cfg

CPU = torch.device("cpu")


class RecordingWriter:
    """Stands in for SummaryWriter: records tags and steps."""

    def __init__(self):
        self.scalars, self.images = {}, {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, float(value)))

    def add_image(self, tag, image, step):
        assert image.dim() == 3 and image.shape[0] == 3
        self.images.setdefault(tag, []).append(step)

    def flush(self):
        pass


def _loader(batch: int, size: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.rand(batch, 3, size, size, generator=gen), None


def _setup(cfg, model):
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    checkpointer = Checkpointer(model, optimizer, scheduler, cfg.OUTPUT_DIR, keep=5)
    return optimizer, scheduler, checkpointer


def test_lr_schedule_decay_and_warmup():
    cfg = tiny_cfg(**{"SOLVER.DECAY_RATE": 0.5, "SOLVER.DECAY_STEPS": 10})
    optimizer = make_optimizer(cfg, StandIn())
    scheduler = make_lr_scheduler(cfg, optimizer)
    assert optimizer.param_groups[0]["betas"] == (0.95, 0.999)
    for it in range(21):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** (it / 10))
        optimizer.step()
        scheduler.step()
    cfg = tiny_cfg(**{"SOLVER.WARMUP_ITERS": 4, "SOLVER.DECAY_RATE": 1.0})
    optimizer = make_optimizer(cfg, StandIn())
    scheduler = make_lr_scheduler(cfg, optimizer)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_trains_checkpoints_and_logs(tmp_path):
    cfg = tiny_cfg(str(tmp_path), **{"SOLVER.MAX_ITER": 5, "LOG.PERIOD": 2})
    model = StandIn()
    optimizer, scheduler, checkpointer = _setup(cfg, model)
    writer = RecordingWriter()
    summary = do_train(
        cfg, model, _loader(4), optimizer, scheduler, checkpointer, CPU, 0, writer=writer
    )
    assert summary["iteration"] == 5 and summary["skipped_steps"] == 0
    assert scheduler.last_epoch == 5
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_0000002.pth",
        "model_0000004.pth",
        "model_0000005.pth",
    ]
    assert open(tmp_path / LAST_CHECKPOINT).read().strip() == "model_0000005.pth"
    assert [s for s, _ in writer.scalars["loss/total"]] == [2, 4, 5]
    for tag in (
        "loss/nll_t0",
        "loss/nll_t2",
        "loss/kl_t2",
        "train/grad_norm",
        "train/images_per_s",
    ):
        assert tag in writer.scalars
    # The logged lr is the one the step used: BASE_LR * 0.1 ** (it / 1e6) at it = 3 for step 4.
    assert writer.scalars["train/lr"][1][1] == pytest.approx(1e-3 * 0.1 ** (3 / 1e6))
    assert writer.images["train_images/refinement"] == [2, 4, 5]


def test_resume_continues_from_start_iter(tmp_path):
    cfg = tiny_cfg(str(tmp_path), **{"SOLVER.MAX_ITER": 6, "SOLVER.DECAY_STEPS": 4})
    model = StandIn()
    optimizer, scheduler, checkpointer = _setup(cfg, model)
    do_train(
        tiny_cfg(str(tmp_path), **{"SOLVER.MAX_ITER": 4, "SOLVER.DECAY_STEPS": 4}),
        model, _loader(4), optimizer, scheduler, checkpointer, CPU, 0,
    )  # fmt: skip
    model2 = StandIn()
    optimizer2, scheduler2, checkpointer2 = _setup(cfg, model2)
    start = checkpointer2.load(checkpointer2.last_checkpoint())["iteration"]
    assert start == 4 and optimizer2.param_groups[0]["lr"] == pytest.approx(1e-4)
    writer = RecordingWriter()
    do_train(
        cfg, model2, _loader(4), optimizer2, scheduler2, checkpointer2, CPU, start, writer=writer
    )
    assert [s for s, _ in writer.scalars["train/lr"]] == [5, 6]
    assert writer.scalars["train/lr"][0][1] == pytest.approx(1e-4)
    assert scheduler2.last_epoch == 6


def test_do_train_feeds_accumulate_micro_batches_per_step(tmp_path):
    # With SOLVER.ACCUMULATE_STEPS 2, one step sees two micro-batches and Adam's first moment
    # is (1 - beta1) times the gradient of the mean loss over both (closed form for StandIn).
    cfg = tiny_cfg(
        str(tmp_path),
        **{"SOLVER.MAX_ITER": 1, "SOLVER.ACCUMULATE_STEPS": 2, "SOLVER.GRAD_CLIP_NORM": 0.0},
    )
    data = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    loader = ((data[i : i + 2], None) for i in itertools.cycle((0, 2)))
    model = StandIn()
    optimizer, scheduler, checkpointer = _setup(cfg, model)
    do_train(cfg, model, loader, optimizer, scheduler, checkpointer, CPU, 0)
    assert model.seen_batches == [2, 2]
    # loss = mean_i sum_c (mean_pixels(x_ic) - w_c)^2, so dloss/dw = -2 mean_i (m_i - w), w = 1.
    means = data.double().mean(dim=(2, 3)).numpy()
    grad = -2 * (means - 1.0).mean(axis=0)
    exp_avg = optimizer.state[model.weight]["exp_avg"].double().numpy()
    np.testing.assert_allclose(exp_avg, (1 - 0.95) * grad, rtol=1e-5)


def _real_model_and_batches(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_cfg()).train()
    gen = torch.Generator().manual_seed(seed + 1)
    micro_batches = [torch.rand(2, 3, 16, 16, generator=gen) for _ in range(2)]
    params = [p for p in model.parameters() if p.requires_grad]
    return model, micro_batches, params


def _hand_gradients(model, micro_batches, params, noise_seed):
    """Mean over micro-batches of each one's batch-mean-loss gradient, one autograd.grad call
    per micro-batch, with the noise stream train_step will see."""
    torch.manual_seed(noise_seed)
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    losses = []
    for images in micro_batches:
        loss = model(images)["loss"]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(total, grads):
            if g is not None:
                acc += g.double() / len(micro_batches)
        losses.append(loss.item())
    return total, float(np.mean(losses))


def test_train_step_accumulates_the_real_model_gradients():
    model, micro_batches, params = _real_model_and_batches()
    expected, mean_loss = _hand_gradients(model, micro_batches, params, noise_seed=5)
    before = [p.detach().clone().double() for p in params]
    # Plain SGD with lr 1: each parameter moves by exactly minus its accumulated gradient.
    optimizer = torch.optim.SGD(params, lr=1.0)
    torch.manual_seed(5)
    step = train_step(model, optimizer, micro_batches, params)
    assert not step.skipped
    assert step.stats["loss"].item() == pytest.approx(mean_loss, rel=1e-5)
    assert step.images is micro_batches[-1]
    for p, p0, g in zip(params, before, expected):
        torch.testing.assert_close(p0 - p.detach().double(), g, rtol=1e-4, atol=1e-6)
    hand_norm = np.sqrt(sum(float((g**2).sum()) for g in expected))
    assert step.stats["grad_norm"].item() == pytest.approx(hand_norm, rel=1e-4)


def test_train_step_clips_the_global_norm():
    model, micro_batches, params = _real_model_and_batches(seed=3)
    expected, _ = _hand_gradients(model, micro_batches, params, noise_seed=7)
    hand_norm = np.sqrt(sum(float((g**2).sum()) for g in expected))
    clip = hand_norm / 10
    before = [p.detach().clone().double() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    torch.manual_seed(7)
    step = train_step(model, optimizer, micro_batches, params, clip=clip)
    assert step.stats["grad_norm"].item() == pytest.approx(hand_norm, rel=1e-4)  # before clipping
    for p, p0, g in zip(params, before, expected):
        torch.testing.assert_close(p0 - p.detach().double(), g / 10, rtol=1e-3, atol=1e-7)


def test_train_step_skips_a_non_finite_step():
    model = StandIn(nan_calls={0})
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    step = train_step(model, optimizer, [torch.rand(2, 3, 4, 4)], list(model.parameters()))
    assert step.skipped and not torch.isfinite(step.stats["loss"])
    assert torch.equal(model.weight.detach(), torch.ones(3)) and model.weight.grad is None


def test_gradient_clipping(tmp_path):
    cfg = tiny_cfg(str(tmp_path), **{"SOLVER.MAX_ITER": 1, "SOLVER.GRAD_CLIP_NORM": 1e-3})
    model = StandIn()
    optimizer, scheduler, checkpointer = _setup(cfg, model)
    writer = RecordingWriter()
    do_train(cfg, model, _loader(4), optimizer, scheduler, checkpointer, CPU, 0, writer=writer)
    assert writer.scalars["train/grad_norm"][0][1] > 1e-2  # the norm before clipping
    exp_avg = optimizer.state[model.weight]["exp_avg"]
    assert exp_avg.norm().item() == pytest.approx((1 - 0.95) * 1e-3, rel=1e-4)


def test_non_finite_step_is_skipped(tmp_path):
    cfg = tiny_cfg(str(tmp_path), **{"SOLVER.MAX_ITER": 3})
    model = StandIn(nan_calls={1})
    optimizer, scheduler, checkpointer = _setup(cfg, model)
    summary = do_train(cfg, model, _loader(4), optimizer, scheduler, checkpointer, CPU, 0)
    assert summary["skipped_steps"] == 1
    assert optimizer.state[model.weight]["step"] == 2  # Adam stepped twice of three
    assert scheduler.last_epoch == 3
    assert torch.isfinite(model.weight).all()


def test_consecutive_non_finite_stop_and_keep_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg(str(tmp_path), **{"SOLVER.MAX_ITER": 10, "SOLVER.MAX_NONFINITE": 2})
    model = StandIn(nan_calls=set(range(2, 100)))
    optimizer, scheduler, checkpointer = _setup(cfg, model)
    with pytest.raises(NonFiniteError, match="2 consecutive non-finite.*MAX_NONFINITE = 2"):
        do_train(cfg, model, _loader(4), optimizer, scheduler, checkpointer, CPU, 0)
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == ["model_0000002.pth"]
    assert open(tmp_path / LAST_CHECKPOINT).read().strip() == "model_0000002.pth"
    state = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert torch.isfinite(state["model"]["weight"]).all()


def test_real_model_with_heldout_evaluation(tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer, scheduler, checkpointer = _setup(cfg, model)
    gen = torch.Generator().manual_seed(0)
    dataset = [
        (torch.rand(3, 16, 16, generator=gen), torch.randint(0, 3, (16, 16), generator=gen))
        for _ in range(5)
    ]
    heldout = make_heldout_batches(dataset, num_images=3, batch_size=2)
    assert [b[0].shape[0] for b in heldout] == [2, 1] and heldout[0][1].shape == (2, 16, 16)
    assert [b[0].shape[0] for b in make_heldout_batches(dataset, 5, 2, rank=1, world_size=2)] == [2]
    writer = RecordingWriter()
    summary = do_train(
        cfg, model, _loader(4), optimizer, scheduler, checkpointer, CPU, 0,
        heldout=heldout, heldout_name="toy", writer=writer,
    )  # fmt: skip
    assert summary["last_eval"]["num_images"] == 3
    assert len(summary["last_eval"]["fg_ari_per_iter"]) == 3
    # The tags name the held-out dataset.
    assert [s for s, _ in writer.scalars["eval/toy/fg_ari"]] == [2, 4]
    assert {
        "eval/toy/ari",
        "eval/toy/mse",
        "eval/toy/fg_ari_t0",
        "eval/toy/msc_t0",
        "eval/toy/miou_t0",
        "loss/kl_t1",
    } <= set(writer.scalars)
    assert writer.images["eval_images/toy/slots"] == [2, 4]
    assert model.training
