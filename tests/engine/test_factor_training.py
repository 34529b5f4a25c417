"""The factor regressor in a training step: its loss trains it, IODINE's update is unchanged."""

import copy
import math

import torch

from lib.engine.trainer import train_step
from lib.model import build_model
from tests.model.conftest import clevr_factor_batch, tiny_cfg

SMALL = {"INPUT.IMAGE_SIZE": 8, "MODEL.IODINE.NUM_ITERS": 1}


def test_train_step_with_factors_moves_the_regressor_and_leaves_iodine_as_without():
    images, labels, factors = clevr_factor_batch(3)
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**SMALL))  # clevr6_train: regressor on
    params = [p for p in model.parameters() if p.requires_grad]
    state0 = copy.deepcopy(model.state_dict())

    def step(batch):
        model.load_state_dict(state0)
        opt = torch.optim.Adam(params, lr=1e-2)
        torch.manual_seed(1)  # the same training noise in both runs
        result = train_step(model, opt, [batch], params, clip=math.inf)
        return copy.deepcopy(model.state_dict()), result

    state_plain, _ = step(images)
    state_joint, result = step((images, labels, factors))
    for name, value in state_joint.items():
        if "factor" in name:
            assert torch.equal(state_plain[name], state0[name]), name  # zero gradient: no move
            assert not torch.equal(value, state0[name]), name
        else:
            assert torch.equal(value, state_plain[name]), name
    assert result.out["factor_loss"] > 0
    assert set(result.out["factor_scores"]) == {"color", "shape", "size", "position"}
