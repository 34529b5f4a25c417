"""The optimiser (TensorFlow 1's Adam by default), its parameter groups and learning rates."""

import numpy as np
import torch

from lib.config import get_cfg
from lib.engine.solver import TF1Adam, make_lr_scheduler, make_optimizer
from lib.model.build import build_model


def _small_cfg():
    cfg = get_cfg()
    cfg.MODEL.IODINE.LATENT_DIM = 4
    cfg.MODEL.REFINEMENT.CONV_CHANNELS = (8,)
    cfg.MODEL.REFINEMENT.MLP_SIZES = (8,)
    cfg.MODEL.REFINEMENT.LSTM_SIZE = 8
    cfg.MODEL.DECODER.CONV_CHANNELS = (8,)
    cfg.SOLVER.BASE_LR = 2e-3
    cfg.SOLVER.DECODER_LR_FACTOR = 0.25
    return cfg


def test_decoder_group_runs_at_its_factor_and_every_parameter_is_in_one_group():
    cfg = _small_cfg()
    model = build_model(cfg)
    opt = make_optimizer(cfg, model)
    decoder_ids = {id(p) for p in model.decoder.parameters()}
    seen = [id(p) for group in opt.param_groups for p in group["params"]]
    # Every trainable parameter once; frozen ones (the LSTM's zero bias_hh) not at all.
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        want = 2e-3 * 0.25 if ids <= decoder_ids else 2e-3
        assert ids <= decoder_ids or not ids & decoder_ids
        assert abs(group["lr"] - want) < 1e-15


def test_scheduler_decays_both_groups_alike():
    cfg = _small_cfg()
    cfg.SOLVER.DECAY_RATE = 0.5
    cfg.SOLVER.DECAY_STEPS = 2
    model = build_model(cfg)
    opt = make_optimizer(cfg, model)
    sched = make_lr_scheduler(cfg, opt)
    for _ in range(2):
        opt.step()
        sched.step()
    lrs = sorted(group["lr"] for group in opt.param_groups)
    assert abs(lrs[0] - 2e-3 * 0.25 * 0.5) < 1e-15 and abs(lrs[1] - 2e-3 * 0.5) < 1e-15


def test_released_factor_keeps_a_single_group():
    cfg = _small_cfg()
    cfg.SOLVER.DECODER_LR_FACTOR = 1.0
    model = build_model(cfg)
    opt = make_optimizer(cfg, model)
    assert len(opt.param_groups) == 1
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(opt.param_groups[0]["params"]) == len(trainable)


def _tf1_adam_by_hand(p0, grads, lr, beta1, beta2, eps):
    """tf.train.AdamOptimizer's update written out in float64 (ApplyAdam): the bias
    corrections fold into the step size, epsilon is added to sqrt(v)."""
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        lr_t = lr * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        m = m + (g - m) * (1.0 - beta1)
        v = v + (g * g - v) * (1.0 - beta2)
        p = p - lr_t * m / (np.sqrt(v) + eps)
    return p, m, v


def _gradients(shape, steps, rng):
    # Entries from 1e-12 to 1: around epsilon the two placements differ most.
    return [
        rng.standard_normal(shape) * 10.0 ** rng.uniform(-12, 0, size=shape) for _ in range(steps)
    ]


def test_tf1_adam_is_tensorflows_update_in_float64():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((5, 7))
    grads = _gradients(p0.shape, 6, rng)
    lr, betas, eps = 1e-3, (0.95, 0.999), 1e-8
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = TF1Adam([param], lr=lr, betas=betas, eps=eps)
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        opt.step()
    want_p, want_m, want_v = _tf1_adam_by_hand(p0, grads, lr, *betas, eps)
    state = opt.state[param]
    assert float(state["step"]) == len(grads)
    # A few float64 operations per step over 6 steps: a few ulps of each value.
    np.testing.assert_allclose(state["exp_avg"].numpy(), want_m, rtol=1e-13, atol=0)
    np.testing.assert_allclose(state["exp_avg_sq"].numpy(), want_v, rtol=1e-13, atol=0)
    np.testing.assert_allclose(param.detach().numpy(), want_p, rtol=0, atol=1e-13)
    # torch.optim.Adam's placement gives another result on these gradients (eps on sqrt(v_hat)).
    other = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    torch_opt = torch.optim.Adam([other], lr=lr, betas=betas, eps=eps)
    for g in grads:
        other.grad = torch.from_numpy(g.copy())
        torch_opt.step()
    assert np.abs(other.detach().numpy() - want_p).max() > 1e-5


def test_tf1_adam_state_is_torch_adams_so_either_resumes_the_other():
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(4)
    grads = _gradients(p0.shape, 4, rng)
    betas, eps = (0.95, 0.999), 1e-8
    # Two steps with torch.optim.Adam, then the state handed to TF1Adam: its m, v and step
    # continue (the same quantities), the update from then on is TensorFlow's.
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    first = torch.optim.Adam([param], lr=1e-3, betas=betas, eps=eps)
    for g in grads[:2]:
        param.grad = torch.from_numpy(g.copy())
        first.step()
    second = TF1Adam([param], lr=1e-3, betas=betas, eps=eps)
    second.load_state_dict(first.state_dict())
    p_after_two = param.detach().numpy().copy()
    for g in grads[2:]:
        param.grad = torch.from_numpy(g.copy())
        second.step()
    _, m, v = _tf1_adam_by_hand(p0, grads, 1e-3, *betas, eps)
    np.testing.assert_allclose(second.state[param]["exp_avg"].numpy(), m, rtol=1e-13)
    np.testing.assert_allclose(second.state[param]["exp_avg_sq"].numpy(), v, rtol=1e-13)
    # The last two updates are TensorFlow's at steps 3 and 4, from the resumed m and v.
    m2 = v2 = np.zeros_like(p0)
    for g in grads[:2]:
        m2 = m2 + (g - m2) * (1 - betas[0])
        v2 = v2 + (g * g - v2) * (1 - betas[1])
    p = p_after_two
    for t, g in enumerate(grads[2:], start=3):
        m2 = m2 + (g - m2) * (1 - betas[0])
        v2 = v2 + (g * g - v2) * (1 - betas[1])
        lr_t = 1e-3 * np.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
        p = p - lr_t * m2 / (np.sqrt(v2) + eps)
    np.testing.assert_allclose(param.detach().numpy(), p, rtol=0, atol=1e-13)


def test_solver_adam_key_picks_the_placement():
    cfg = _small_cfg()
    model = build_model(cfg)
    assert isinstance(make_optimizer(cfg, model), TF1Adam)  # released default
    cfg.SOLVER.ADAM = "torch"
    opt = make_optimizer(cfg, model)
    assert type(opt) is torch.optim.Adam


def test_tf1_adam_corrects_a_late_parameter_with_the_global_step():
    # TensorFlow keeps one beta1^t, beta2^t per optimiser: a variable whose first gradient
    # comes at step 3 gets lr_t of t = 3 with its fresh m, v.
    lr, beta1, beta2, eps = 1e-3, 0.95, 0.999, 1e-8
    early = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    late = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = TF1Adam([late, early], lr=lr, betas=(beta1, beta2), eps=eps)  # late first
    g = torch.tensor([1e-3, -2.0, 0.5], dtype=torch.float64)
    for t in (1, 2, 3):
        early.grad = g.clone()
        late.grad = g.clone() if t == 3 else None
        opt.step()
    m, v = g * (1 - beta1), g * g * (1 - beta2)
    lr_3 = lr * np.sqrt(1 - beta2**3) / (1 - beta1**3)
    want = 1.0 - lr_3 * m / (torch.sqrt(v) + eps)
    torch.testing.assert_close(late.detach(), want, rtol=1e-13, atol=0)
