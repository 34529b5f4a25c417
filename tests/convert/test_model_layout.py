"""The converted weights run our decoder and refinement network as the released code runs
them: same channel orders (no permutation is applied by the converter), same outputs."""

import math

import numpy as np
import pytest
import torch

from lib.config import get_cfg
from lib.model import build_model
from tests.convert import numpy_tf

DECODER = "pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_{}"
ENCODER = "encoder_net/cnn/conv_net_2d/conv_2d_{}"


@pytest.fixture(scope="module")
def model(tetrominoes_cfg, converted_tetrominoes):
    model = build_model(tetrominoes_cfg)
    model.load_state_dict(converted_tetrominoes.state, strict=True)
    return model.eval()


def test_decoder_matches_the_released_broadcast_decoder(model, tf_values):
    # Non-square output: a y/x swap of the coordinate channels cannot pass.
    z = np.random.default_rng(2).normal(size=(3, 32)).astype(np.float32)
    convs = [
        (tf_values[DECODER.format(i) + "/w"], tf_values[DECODER.format(i) + "/b"]) for i in range(5)
    ]
    expected = numpy_tf.broadcast_decoder(z, convs, 11, 7)  # (N, H, W, 4): mask logit, RGB
    with torch.no_grad():
        got = model.decoder(torch.from_numpy(z), 11, 7).numpy().transpose(0, 2, 3, 1)
    # The fixture's weights are N(0, 0.5), not fan-in scaled: outputs reach 1e5, so the float32
    # tolerance is relative to the output scale.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_refinement_network_matches_the_released_one(model, tf_values):
    rng = np.random.default_rng(3)
    image_in = rng.normal(size=(3, 13, 10, 24)).astype(np.float32)  # odd and even sides
    vector_in = rng.normal(size=(3, 129)).astype(np.float32)
    lam = rng.normal(size=(3, 64)).astype(np.float32)
    convs = [
        (tf_values[ENCODER.format(i) + "/w"], tf_values[ENCODER.format(i) + "/b"]) for i in range(3)
    ]
    linears = [
        (tf_values["encoder_net/cnn/mlp/linear_0/w"], tf_values["encoder_net/cnn/mlp/linear_0/b"])
    ]
    head = (
        tf_values["refinement_head/residual_head/linear/w"],
        tf_values["refinement_head/residual_head/linear/b"],
    )
    expected = numpy_tf.refinement_net(image_in, vector_in, lam, convs, linears, head)
    with torch.no_grad():
        got, state = model.refinement(
            torch.from_numpy(image_in.transpose(0, 3, 1, 2).copy()),
            torch.from_numpy(vector_in),
            torch.from_numpy(lam),
            None,
        )
    assert state is None
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


# The released refinement input: spatial inputs concatenated in sorted order of their names.
RELEASED_CHANNELS = {
    "capacity": 1,
    "components": 3,
    "coordinates": None,  # 2 (linear) or 8 (cosine)
    "counterfactual": 1,
    "dcomponents": 3,
    "dmask": 1,
    "image": 3,
    "log_prob": 1,
    "mask": 1,
    "posterior": 1,
    "pred_mask": 1,
}


def _offsets(coord_channels):
    offsets, start = {}, 0
    for name in sorted(RELEASED_CHANNELS):
        size = RELEASED_CHANNELS[name] or coord_channels
        offsets[name] = slice(start, start + size)
        start += size
    return offsets


def _released_coordinates(coord_type, height, width):
    if coord_type == "linear":  # x (along W), then y (along H)
        xs = np.broadcast_to(np.linspace(-1, 1, width)[None, :], (height, width))
        ys = np.broadcast_to(np.linspace(-1, 1, height)[:, None], (height, width))
        return np.stack([xs, ys])
    valx, valy = np.linspace(0, math.pi, width), np.linspace(0, math.pi, height)
    basis = [
        np.cos(fx * valx)[None, :] * np.cos(fy * valy)[:, None]
        for fx in range(3)
        for fy in range(3)
    ]
    return np.stack(basis[1:])  # the constant (0, 0) channel dropped


@pytest.mark.parametrize("coord_type, coord_channels", [("linear", 2), ("cosine", 8)])
def test_refinement_inputs_are_in_the_released_channel_order(coord_type, coord_channels):
    cfg = get_cfg()
    cfg.MODEL.IODINE.NUM_SLOTS = 3
    cfg.MODEL.IODINE.NUM_ITERS = 1
    cfg.MODEL.IODINE.LATENT_DIM = 4
    cfg.MODEL.REFINEMENT.COORD_TYPE = coord_type
    cfg.MODEL.REFINEMENT.CONV_CHANNELS = (8,)
    cfg.MODEL.REFINEMENT.MLP_SIZES = (8,)
    cfg.MODEL.REFINEMENT.LSTM_SIZE = 8
    cfg.MODEL.DECODER.CONV_CHANNELS = (8,)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    captured = {}

    def grab(module, args):
        captured["image"], captured["vector"], captured["lam"] = args[0], args[1], args[2]

    handle = model.refinement.register_forward_pre_hook(grab)
    images = torch.rand(2, 3, 9, 6)
    with torch.no_grad():
        out = model(images)
    handle.remove()
    x = captured["image"].view(2, 3, -1, 9, 6)  # (B, K, C, H, W)
    at = _offsets(coord_channels)
    assert x.shape[2] == at["pred_mask"].stop
    torch.testing.assert_close(x[:, :, at["capacity"]], torch.full_like(x[:, :, :1], 0.5))
    torch.testing.assert_close(x[:, :, at["components"]], out["components"][:, 0])
    coords = torch.from_numpy(_released_coordinates(coord_type, 9, 6)).float()
    torch.testing.assert_close(x[:, :, at["coordinates"]], coords.expand(2, 3, -1, -1, -1))
    torch.testing.assert_close(x[:, :, at["image"]], images[:, None].expand(2, 3, -1, -1, -1))
    torch.testing.assert_close(x[:, :, at["mask"]][:, :, 0], out["mask_logits"][:, 0])
    torch.testing.assert_close(x[:, :, at["pred_mask"]][:, :, 0], out["masks"][:, 0])
    posterior = x[:, :, at["posterior"]][:, :, 0]
    assert torch.all(posterior.sum(dim=1) <= 1.0 + 1e-5) and torch.all(posterior >= 0)
    # LayerNorm-ed inputs have zero mean per slot (gain 1, bias 0 at initialisation).
    for name in ("counterfactual", "dcomponents", "dmask"):
        means = x[:, :, at[name]].mean(dim=(2, 3, 4))
        torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-4, rtol=0)
    # Vector inputs after the MLP output: [dzp (2Z), flat_capacity, zp (2Z)].
    vector, lam = captured["vector"], captured["lam"]
    assert vector.shape[1] == 4 * 4 + 1
    torch.testing.assert_close(vector[:, 8], torch.full_like(vector[:, 8], 0.5))
    torch.testing.assert_close(vector[:, 9:], lam)
    torch.testing.assert_close(lam, model.init_posterior.detach().expand(6, -1))
