"""lib/analysis/traversal_inputs.py: slot, dimensions and unit of the traversal figure."""

import math

import pytest
import torch

from lib.analysis.loading import run_model
from lib.analysis.traversal_inputs import RANGE_UNITS, range_unit, traversal_inputs
from lib.errors import RunError

from .conftest import D, K

CPU = torch.device("cpu")


def test_range_unit():
    scale = torch.tensor([0.5, 2.0])
    assert range_unit("absolute", scale, 0.8) == (None, "absolute latent units")
    unit, name = range_unit("posterior", scale, 0.8)
    assert unit is scale and name == "posterior std of each dimension"
    unit, name = range_unit("prior", scale, 0.8)
    assert unit.tolist() == pytest.approx([0.8, 0.8]) and name == "prior std (0.800)"
    assert RANGE_UNITS == ("absolute", "posterior", "prior")


@pytest.fixture
def forward(tiny_model):
    torch.manual_seed(2)
    return run_model(tiny_model, torch.rand(1, 3, 8, 8), CPU, None, None)


def _kl(loc, scale, prior):
    """Per-dimension KL(N(loc, scale) || N(0, prior)), written out for one slot."""
    return [
        math.log(prior / s) + (s * s + m * m) / (2 * prior * prior) - 0.5
        for m, s in zip(loc.tolist(), scale.tolist())
    ]


@pytest.mark.parametrize("unit", RANGE_UNITS)
def test_traversal_inputs_ranks_by_kl_and_scales_offsets(tiny_model, forward, unit):
    slot = 1
    inputs = traversal_inputs(
        tiny_model, forward, None, CPU, slot=slot, num_dims=3, value_range=2.0,
        steps_per_dim=5, unit=unit,
    )  # fmt: skip
    loc, scale = forward["posterior_loc"][0, -1], forward["posterior_scale"][0, -1]
    prior = float(tiny_model.prior_scale)
    kl = _kl(loc[slot], scale[slot], prior)
    assert inputs.kl.tolist() == pytest.approx(kl, rel=1e-4, abs=1e-5)
    assert inputs.dims == sorted(range(D), key=lambda d: -kl[d])[:3]
    assert inputs.slot == slot and inputs.offsets.tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    step = {"absolute": [1.0] * D, "posterior": scale[slot].tolist(), "prior": [prior] * D}[unit]
    z = inputs.traversal["z"]  # (R, S, K, D)
    assert z.shape == (3, 5, K, D) and z.device.type == "cpu"
    for i, dim in enumerate(inputs.dims):
        for j, offset in enumerate((-2.0, -1.0, 0.0, 1.0, 2.0)):
            expected = float(loc[slot, dim]) + offset * step[dim]
            assert float(z[i, j, slot, dim]) == pytest.approx(expected, abs=1e-5)
    assert inputs.traversal["recon"].shape == (3, 5, 3, 8, 8)


def test_default_slot_is_the_largest_non_background_one(tiny_model, forward):
    inputs = traversal_inputs(
        tiny_model, forward, None, CPU, slot=-1, num_dims=1, value_range=1.0,
        steps_per_dim=1, unit="absolute",
    )  # fmt: skip
    # Without a true mask the background is the slot of largest area; the default is the next.
    masks = forward["masks"][0, -1]
    areas = [float(masks[k].sum()) for k in range(K)]
    assert inputs.slot == sorted(range(K), key=lambda k: -areas[k])[1]


def test_slot_out_of_range(tiny_model, forward):
    with pytest.raises(RunError, match=f"--slot {K} is out of range: the model has K={K} slots"):
        traversal_inputs(
            tiny_model, forward, None, CPU, slot=K, num_dims=1, value_range=1.0,
            steps_per_dim=3, unit="absolute",
        )  # fmt: skip
