"""The optimiser's parameter groups and learning rates."""

from lib.config import get_cfg
from lib.engine.solver import make_lr_scheduler, make_optimizer
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
