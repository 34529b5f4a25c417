"""The factor regressor against explicit loops over objects and slots, and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, r2_score

from lib.model.factor_regressor import Factor, FactorMetrics, FactorRegressor

MAPPING = [Factor("color", 3, "scalar"), Factor("shape", 4, "categorical")]
MAPPING_ANGLE = [*MAPPING, Factor("orientation", 2, "angle")]


def _batch(seed: int = 0, b: int = 3, k: int = 3, n_ent: int = 4, z_dim: int = 5, hw: int = 6):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, k, z_dim, generator=g)
    pred_masks = torch.softmax(torch.randn(b, k, hw, hw, generator=g), dim=1)
    labels = torch.randint(0, n_ent, (b, hw, hw), generator=g)
    true_masks = (labels[:, None] == torch.arange(n_ent)[None, :, None, None]).float()
    visibility = (torch.rand(b, n_ent, generator=g) > 0.3).float()
    visibility[:, 0] = 1.0
    factors = {
        "color": torch.rand(b, n_ent, 3, generator=g),
        "shape": torch.randint(0, 4, (b, n_ent), generator=g).float(),
        "orientation": torch.rand(b, n_ent, generator=g) * 2 * math.pi,
    }
    return z, pred_masks, true_masks, factors, visibility


def _reference(reg, z, pred_masks, true_masks, factors, visibility):
    """Explicit loops: matching by overlap, summed pair errors over visible objects."""
    w = reg.predict_latents.weight.detach().double().numpy()
    bias = reg.predict_latents.bias.detach().double().numpy()
    b, k = z.shape[:2]
    n_ent = true_masks.shape[1]
    total, n_vis, matches = 0.0, 0, {}
    for bi in range(b):
        for li in range(n_ent):
            if visibility[bi, li] == 0:
                continue
            n_vis += 1
            overlaps = [float((true_masks[bi, li] * pred_masks[bi, ki]).sum()) for ki in range(k)]
            best = int(np.argmax(overlaps))
            matches[bi, li] = best
            out = w @ z[bi, best].double().numpy() + bias
            start = 0
            for m in reg.mapping:
                p = out[start : start + m.size]
                start += m.size
                if m.type == "scalar":
                    total += float(((factors[m.name][bi, li].double().numpy() - p) ** 2).sum())
                elif m.type == "angle":
                    th = float(factors[m.name][bi, li])
                    total += (math.cos(th) - p[0]) ** 2 + (math.sin(th) - p[1]) ** 2
                else:
                    label = int(factors[m.name][bi, li])
                    total += -(p[label] - math.log(np.exp(p).sum()))
    return total / n_vis, matches


@pytest.mark.parametrize("mapping", [MAPPING, MAPPING_ANGLE])
def test_loss_and_matching_match_explicit_loops(mapping):
    torch.manual_seed(0)
    reg = FactorRegressor(latent_dim=5, mapping=mapping)
    batch = _batch(1)
    out = reg(*batch)
    expected, matches = _reference(reg, *batch)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assignment = out["assignment"]
    for (bi, li), ki in matches.items():
        assert assignment[bi, li].tolist() == [1.0 if j == ki else 0.0 for j in range(3)]
    assert assignment.sum().item() == len(matches)  # invisible objects assigned nowhere


def test_input_is_detached_and_loss_trains_the_regressor_only():
    torch.manual_seed(0)
    reg = FactorRegressor(latent_dim=5, mapping=MAPPING)
    z, pred_masks, true_masks, factors, vis = _batch(2)
    z.requires_grad_(True)
    pred_masks.requires_grad_(True)
    reg(z, pred_masks, true_masks, factors, vis)["loss"].backward()
    assert z.grad is None and pred_masks.grad is None
    assert reg.predict_latents.weight.grad.abs().sum() > 0


def test_scores_match_sklearn_over_matched_visible_objects():
    torch.manual_seed(0)
    reg = FactorRegressor(latent_dim=5, mapping=MAPPING_ANGLE)
    batches = [_batch(s) for s in (3, 4)]
    metrics = FactorMetrics(reg.mapping)
    ys = {m.name: [] for m in reg.mapping}
    ps = {m.name: [] for m in reg.mapping}
    for batch in batches:
        out = reg(*batch)
        metrics.update(out["targets"], out["matched"], out["assignment"].sum(dim=2))
        _, matches = _reference(reg, *batch)
        w = reg.predict_latents.weight.detach().double().numpy()
        bias = reg.predict_latents.bias.detach().double().numpy()
        z, _, _, factors, _ = batch
        for (bi, li), ki in matches.items():
            pred = w @ z[bi, ki].double().numpy() + bias
            ys["color"].append(factors["color"][bi, li].numpy())
            ps["color"].append(pred[0:3])
            ys["shape"].append(int(factors["shape"][bi, li]))
            ps["shape"].append(int(np.argmax(pred[3:7])))
            th = float(factors["orientation"][bi, li])
            ys["orientation"].append([math.cos(th), math.sin(th)])
            ps["orientation"].append(pred[7:9])
    got = metrics.compute()
    assert got["color"] == pytest.approx(r2_score(np.array(ys["color"]), np.array(ps["color"])))
    assert got["shape"] == pytest.approx(accuracy_score(ys["shape"], ps["shape"]))
    assert got["orientation"] == pytest.approx(
        r2_score(np.array(ys["orientation"]), np.array(ps["orientation"]))
    )
    # The per-batch score of forward() is the same computation on one batch.
    out = reg(*batches[0])
    one = FactorMetrics(reg.mapping)
    one.update(out["targets"], out["matched"], out["assignment"].sum(dim=2))
    for name, value in one.compute().items():
        assert out["scores"][name].item() == pytest.approx(value)


def test_bad_sizes_and_missing_factors_are_named():
    reg = FactorRegressor(latent_dim=5, mapping=[Factor("color", 2, "scalar")])
    z, pred_masks, true_masks, factors, vis = _batch(5)
    with pytest.raises(ValueError, match="color"):
        reg(z, pred_masks, true_masks, factors, vis)
    reg = FactorRegressor(latent_dim=5, mapping=[Factor("size", 3, "categorical")])
    with pytest.raises(KeyError, match="size"):
        reg(z, pred_masks, true_masks, factors, vis)


def test_iodine_gradients_are_identical_with_and_without_the_regressor():
    from lib.model import build_model

    from .conftest import clevr_factor_batch, tiny_cfg

    small = {"INPUT.IMAGE_SIZE": 8, "MODEL.IODINE.NUM_ITERS": 1}
    cfg = tiny_cfg(**{"MODEL.FACTOR_REGRESSOR.ENABLED": "auto"}, **small)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.factor_regressor, FactorRegressor)  # clevr6_train: on by default
    images, labels, factors = clevr_factor_batch(7)

    def grads(**kwargs):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same training noise in both runs
        out = model(images, **kwargs)
        out["loss"].backward()
        named = model.named_parameters()
        return out, {n: p.grad.clone() for n, p in named if p.grad is not None}

    plain, g_plain = grads()
    joint, g_joint = grads(labels=labels, factors=factors)
    iodine_names = [n for n in g_joint if "factor" not in n]
    assert sorted(iodine_names) == sorted(n for n in g_plain if "factor" not in n)
    # Unfed, the regressor still takes part in backward (DDP), with zero gradients.
    assert all(g_plain[n].abs().sum() == 0 for n in g_plain if "factor" in n)
    for name in iodine_names:
        assert torch.equal(g_plain[name], g_joint[name]), name
    assert any("factor" in n for n in g_joint)
    # The total is IODINE's loss plus the regressor's, computed on the final z and masks.
    direct = model.factor_regressor(
        joint["z"][:, -1],
        joint["masks"][:, -1],
        (labels[:, None] == torch.arange(4)[None, :, None, None]).float(),
        factors,
        factors["visibility"],
    )["loss"]
    assert joint["loss"].item() == pytest.approx(plain["loss"].item() + direct.item(), rel=1e-6)


def test_build_switch():
    from lib.model import build_model

    from .conftest import tiny_cfg

    assert (
        build_model(tiny_cfg(**{"MODEL.FACTOR_REGRESSOR.ENABLED": "off"})).factor_regressor is None
    )
    folder = tiny_cfg(**{"DATASETS.TRAIN": ("folder:/x",)})
    assert build_model(folder).factor_regressor is None
    folder.MODEL.FACTOR_REGRESSOR.ENABLED = "on"
    with pytest.raises(ValueError, match="folder:/x"):
        build_model(folder)
