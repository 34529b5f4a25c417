"""lib/analysis/traversal.py: one slot's latent varied, the others unchanged; the slot,
dimensions, offsets and unit of the traversal figure."""

import math

import numpy as np
import pytest
import torch

from lib.analysis.loading import run_model
from lib.analysis.traversal import (
    RANGE_UNITS,
    choose_traversal_slot,
    rank_latent_dims,
    traversal_inputs,
    traversal_offsets,
    traverse_slot,
)
from lib.errors import RunError

from .conftest import D, K

CPU = torch.device("cpu")


def test_traverse_slot_changes_only_the_chosen_slot(tiny_model):
    model = tiny_model
    torch.manual_seed(1)
    loc = torch.randn(K, D)
    slot, dims = 1, [4, 0]
    offsets = traversal_offsets(2.0, 5)
    unit = torch.linspace(0.5, 1.0, D)
    out = traverse_slot(model, loc, slot, dims, offsets, 12, 10, unit=unit)
    r, s = len(dims), 5
    assert out["mask_logits"].shape == (r, s, K, 12, 10)
    assert out["components"].shape == (r, s, K, 3, 12, 10)
    assert out["masks"].shape == (r, s, K, 12, 10)
    assert out["recon"].shape == (r, s, 3, 12, 10)
    assert all(
        v.device.type == "cpu" and v.dtype == torch.float32
        for v in out.values()
        if torch.is_tensor(v)
    )

    # z: only (slot, dim) of each row changes, by offset * unit.
    for i, dim in enumerate(dims):
        for j in range(s):
            expected = loc.clone()
            expected[slot, dim] = loc[slot, dim] + float(offsets[j]) * float(unit[dim])
            assert torch.allclose(out["z"][i, j], expected, atol=1e-6, rtol=0)

    others = [k for k in range(K) if k != slot]
    with torch.no_grad():
        base = model.decode(loc[None], 12, 10)
        for i in range(r):
            for j in range(s):
                # The other slots' decoded means and mask logits: bit-identical to z = loc.
                for k in others:
                    assert torch.equal(out["mask_logits"][i, j, k], base["mask_logits"][0, k])
                    assert torch.equal(out["components"][i, j, k], base["components"][0, k])
                # Masks and recon from the softmax / mixture written out, per pixel.
                logits = out["mask_logits"][i, j].numpy().astype(np.float64)
                e = np.exp(logits - logits.max(axis=0))
                masks = e / e.sum(axis=0)
                recon = (masks[:, None] * out["components"][i, j].numpy()).sum(axis=0)
                np.testing.assert_allclose(out["masks"][i, j].numpy(), masks, atol=1e-6)
                np.testing.assert_allclose(out["recon"][i, j].numpy(), recon, atol=1e-5)
                # Everything agrees with decoding the traversed z directly.
                direct = model.decode(out["z"][i, j][None], 12, 10)
                for key in ("mask_logits", "components", "masks", "recon"):
                    assert torch.allclose(out[key][i, j], direct[key][0], atol=1e-5), key
    # The chosen slot's outputs change along each row (offsets differ), and so does the recon.
    assert not torch.allclose(out["mask_logits"][:, 0, slot], out["mask_logits"][:, -1, slot])
    assert not torch.allclose(out["components"][:, 0, slot], out["components"][:, -1, slot])
    assert not torch.allclose(out["recon"][:, 0], out["recon"][:, -1])
    # The other slots' masks change only through the softmax.
    assert not torch.allclose(out["masks"][:, 0, others[0]], out["masks"][:, -1, others[0]])

    with pytest.raises(ValueError, match="slot 3 is not in"):
        traverse_slot(model, loc, K, dims, offsets, 12, 10)
    with pytest.raises(ValueError, match="dimensions"):
        traverse_slot(model, loc, 0, [D], offsets, 12, 10)


def _choose_by_loop(masks: np.ndarray, true: np.ndarray | None) -> int:
    k = masks.shape[0]
    if k == 1:
        return 0
    area = [masks[j].sum() for j in range(k)]
    if true is not None and (true == 0).any():
        on_background = [masks[j][true == 0].sum() for j in range(k)]
        background = max(range(k), key=lambda j: (on_background[j], -j))
    else:
        background = max(range(k), key=lambda j: (area[j], -j))
    rest = [j for j in range(k) if j != background]
    return max(rest, key=lambda j: (area[j], -j))


def test_choose_traversal_slot_matches_a_loop():
    gen = np.random.default_rng(0)
    for trial in range(20):
        k = int(gen.integers(1, 6))
        logits = gen.normal(size=(k, 6, 6)) * 3
        masks = np.exp(logits) / np.exp(logits).sum(axis=0)
        true = gen.integers(0, 3, (6, 6)) if trial % 3 else None
        if trial % 5 == 4:
            true = np.ones((6, 6), dtype=np.int64)  # no true background pixel
        got = choose_traversal_slot(
            torch.from_numpy(masks).float(), None if true is None else torch.from_numpy(true)
        )
        assert got == _choose_by_loop(masks.astype(np.float32), true), trial


def test_choose_traversal_slot_skips_the_background_slot():
    masks = torch.zeros(4, 4, 4)
    masks[0] = 1.0  # slot 0 covers everything but the object pixels below
    masks[0, :2, :3] = 0.0
    masks[2, :2, :2] = 1.0  # object of 4 pixels
    masks[3, :2, 2] = 1.0  # object of 2 pixels
    assert choose_traversal_slot(masks) == 2
    true = torch.zeros(4, 4, dtype=torch.long)
    true[:2, :3] = 1
    assert choose_traversal_slot(masks, true) == 2


def test_rank_latent_dims_matches_a_stable_sort():
    gen = np.random.default_rng(1)
    kl = np.round(gen.random(12), 1)  # rounding makes ties
    expected = list(np.argsort(-kl, kind="stable"))
    for n in (0, 3, 12, 20):
        assert rank_latent_dims(torch.from_numpy(kl), n) == expected[:n]


def test_traversal_offsets():
    np.testing.assert_allclose(traversal_offsets(2.0, 5).numpy(), np.linspace(-2, 2, 5))
    np.testing.assert_allclose(traversal_offsets(1.5, 4).numpy(), np.linspace(-1.5, 1.5, 4))
    assert traversal_offsets(2.0, 1).tolist() == [0.0]
    with pytest.raises(ValueError, match="steps-per-dim"):  # a ConfigError: one line in the tool
        traversal_offsets(1.0, 0)


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
    assert RANGE_UNITS == ("absolute", "posterior", "prior")
    names = {"absolute": "absolute latent units", "posterior": "posterior std of each dimension"}
    assert inputs.unit_name == names.get(unit, f"prior std ({prior:.3f})")


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
