"""lib.model.refinement_inputs: the one table of refinement inputs, their channels (from
lib.spec), the released concatenation order, per-image broadcasting and the LayerNorms."""

from __future__ import annotations

import pytest
import torch

from lib import spec
from lib.model.refinement_inputs import (
    REFINEMENT_INPUT_TABLE,
    StepTensors,
    assemble_inputs,
    make_input_norms,
    refinement_channels,
)

B, K, D, H, W = 3, 4, 5, 6, 7


def _step(coord_channels: int = 2, seed: int = 0) -> StepTensors:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    mask_logits = r(B, K, H, W)
    log_masks = torch.log_softmax(mask_logits, dim=1)
    comp_lp = r(B, K, H, W)
    log_px = torch.logsumexp(log_masks + comp_lp, dim=1)
    return StepTensors(
        images=r(B, 3, H, W),
        coords=r(coord_channels, H, W),
        flat_lam=r(B * K, 2 * D),
        mu=r(B, K, 3, H, W),
        mask_logits=mask_logits,
        log_masks=log_masks,
        comp_lp=comp_lp,
        log_px=log_px,
        d_lam=r(B, K, 2 * D),
        d_mu=r(B, K, 3, H, W),
        d_logits=r(B, K, H, W),
    )


def _norms():
    return make_input_norms(spec.NORMALISED_INPUTS, "linear", D).double()


def test_the_table_holds_every_released_input_with_its_facts():
    assert list(REFINEMENT_INPUT_TABLE) == list(spec.REFINEMENT_INPUTS)
    for name, entry in REFINEMENT_INPUT_TABLE.items():
        assert entry.spec is spec.REFINEMENT_INPUTS[name]


@pytest.mark.parametrize("coord_type", ["linear", "cosine"])
def test_each_input_has_the_channels_the_spec_gives(coord_type):
    s = _step(spec.COORD_CHANNELS[coord_type])
    norms = _norms()
    for name in spec.IMAGE_INPUTS:
        image_in, _ = assemble_inputs(s, (name,), ("zp",), norms)
        assert image_in.shape == (B * K, spec.input_channels(name, coord_type, D), H, W), name
    for name in spec.VECTOR_INPUTS:
        _, vector_in = assemble_inputs(s, ("mask",), (name,), norms)
        assert vector_in.shape == (B * K, spec.input_channels(name, coord_type, D)), name
    c, v = refinement_channels(spec.IMAGE_INPUTS, spec.VECTOR_INPUTS, coord_type, D)
    image_in, vector_in = assemble_inputs(s, spec.IMAGE_INPUTS, spec.VECTOR_INPUTS, norms)
    assert image_in.shape[1] == c == 16 + spec.COORD_CHANNELS[coord_type]  # CLEVR6: 18
    assert vector_in.shape[1] == v == 4 * D + 1


def test_concatenation_follows_the_given_order_input_by_input():
    s, norms = _step(), _norms()
    image_in, vector_in = assemble_inputs(s, spec.IMAGE_INPUTS, spec.VECTOR_INPUTS, norms)
    start = 0
    for name in spec.IMAGE_INPUTS:
        alone, _ = assemble_inputs(s, (name,), ("zp",), norms)
        stop = start + alone.shape[1]
        assert torch.equal(image_in[:, start:stop], alone), name
        start = stop
    _, alone = assemble_inputs(s, ("mask",), ("zp",), norms)
    assert torch.equal(vector_in[:, -2 * D :], alone)  # zp last, as released


def test_values_and_per_image_broadcast():
    s, norms = _step(), _norms()

    def one(name):
        return assemble_inputs(s, (name,), ("zp",), norms)[0].view(B, K, -1, H, W)

    for k in range(K):  # per-image inputs: slot k of image b is image b (expand, no scramble)
        assert torch.equal(one("image")[:, k], s.images)
        assert torch.equal(one("coordinates")[:, k], s.coords.expand(B, -1, -1, -1))
    assert torch.equal(one("components"), s.mu)
    assert torch.equal(one("mask")[:, :, 0], s.mask_logits)
    assert torch.equal(one("pred_mask")[:, :, 0], s.log_masks.exp())
    assert (one("capacity") == 0.5).all()
    posterior = s.comp_lp.exp() / (s.comp_lp.exp().sum(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(one("posterior")[:, :, 0], posterior)
    _, flat = assemble_inputs(s, ("mask",), ("flat_capacity",), norms)
    assert flat.shape == (B * K, 1) and (flat == 0.5).all()


def _standardised(x: torch.Tensor, dims) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + 1e-5)


def test_normalised_inputs_are_layer_normed_per_slot_or_per_image():
    s, norms = _step(), _norms()

    def one(name):
        return assemble_inputs(s, (name,), ("zp",), norms)[0].view(B, K, -1, H, W)

    torch.testing.assert_close(one("dcomponents"), _standardised(s.d_mu, (2, 3, 4)))
    torch.testing.assert_close(one("dmask")[:, :, 0], _standardised(s.d_logits, (2, 3)))
    # log_prob: one LayerNorm per image, the same for every slot.
    want = _standardised(s.log_px, (1, 2))
    for k in range(K):
        torch.testing.assert_close(one("log_prob")[:, k, 0], want)
    # counterfactual: log p(x) - log p(x without slot k), normalised per slot.
    loo = []
    for k in range(K):
        keep = [j for j in range(K) if j != k]
        logits = s.mask_logits[:, keep]
        loo.append(torch.logsumexp(torch.log_softmax(logits, 1) + s.comp_lp[:, keep], dim=1))
    cf = s.log_px[:, None] - torch.stack(loo, dim=1)
    torch.testing.assert_close(one("counterfactual")[:, :, 0], _standardised(cf, (2, 3)))
    _, dzp = assemble_inputs(s, ("mask",), ("dzp",), norms)
    torch.testing.assert_close(dzp, _standardised(s.d_lam.reshape(B * K, -1), (1,)))


def test_input_norms_only_for_used_normalised_inputs_in_released_order():
    norms = make_input_norms(("image", "dmask", "zp", "dzp", "counterfactual"), "linear", D)
    assert list(norms) == ["counterfactual", "dmask", "dzp"]
    assert [n.weight.numel() for n in norms.values()] == [1, 1, 2 * D]


def test_a_new_input_is_one_table_row_and_leaves_the_released_facts_alone(monkeypatch):
    import copy

    from lib.errors import ConfigError
    from lib.model import build_model
    from lib.model.refinement_inputs import InputEntry
    from tests.model.conftest import tiny_cfg

    released = copy.deepcopy((spec.REFINEMENT_INPUTS, spec.PAPER_ARCHS, spec.IMAGE_INPUTS))
    cfg = tiny_cfg(**{"MODEL.REFINEMENT.IMAGE_INPUTS": spec.IMAGE_INPUTS + ("edges",)})
    with pytest.raises(ConfigError, match="IMAGE_INPUTS has unknown names \\['edges'\\]"):
        build_model(cfg)

    def edges(s):  # (B, 1, 1, H, W): per image, like "image"
        return (s.images - s.images.roll(1, dims=2)).abs().sum(1)[:, None, None]

    row = InputEntry(spec.RefinementInput("edges", False, 1, normalised=True), edges)
    monkeypatch.setitem(REFINEMENT_INPUT_TABLE, "edges", row)
    torch.manual_seed(0)
    model = build_model(cfg)
    plain = build_model(tiny_cfg())
    in_ch = [p.shape[1] for p in model.refinement.parameters() if p.dim() == 4][0]
    plain_ch = [p.shape[1] for p in plain.refinement.parameters() if p.dim() == 4][0]
    assert in_ch == plain_ch + 1 and "edges" in model.input_norms
    assert list(model.input_norms) == sorted(model.input_norms)  # the released order, extended
    out = model(torch.rand(2, 3, 16, 16))
    assert torch.isfinite(out["loss"])
    assert (spec.REFINEMENT_INPUTS, spec.PAPER_ARCHS, spec.IMAGE_INPUTS) == released
