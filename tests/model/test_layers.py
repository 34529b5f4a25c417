"""Padding, coordinates, LayerNorm and initialisation against explicit computations."""

import math

import torch
import torch.nn.functional as F

from lib.model.layers import (
    Conv2dSame,
    SlotLayerNorm,
    cosine_coordinates,
    linear_coordinates,
    released_init_,
)


def test_tf_same_padding_puts_extra_pixel_bottom_right():
    conv = Conv2dSame(1, 1, 3, stride=2, padding="tf_same")
    x = torch.randn(1, 1, 8, 8)
    # TF SAME for 8 -> 4 with k=3, s=2: total padding 1, all of it at the bottom/right.
    want = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), want)
    assert conv(torch.randn(1, 1, 35, 35)).shape[-1] == 18  # ceil(35 / 2)


def test_symmetric_padding_matches_pytorch_padding():
    conv = Conv2dSame(1, 1, 5, stride=2, padding="symmetric")
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, stride=2, padding=2))


def test_coordinates():
    lin = linear_coordinates(3, 5, "xy")
    assert lin.shape == (2, 3, 5)
    torch.testing.assert_close(lin[0, 1], torch.linspace(-1, 1, 5))  # x varies along W
    torch.testing.assert_close(lin[1, :, 2], torch.linspace(-1, 1, 3))  # y varies along H
    torch.testing.assert_close(linear_coordinates(3, 5, "yx"), lin.flip(0))
    cos = cosine_coordinates(4, 6)
    assert cos.shape == (8, 4, 6)
    u = torch.linspace(0, math.pi, 6)
    v = torch.linspace(0, math.pi, 4)
    # channel index f * 3 + g - 1 holds cos(f u) cos(g v)
    torch.testing.assert_close(cos[2 * 3 + 1 - 1], torch.cos(v)[:, None] * torch.cos(2 * u)[None])


def test_slot_layer_norm_normalises_each_sample_jointly():
    ln = SlotLayerNorm(3)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        ln.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.randn(2, 3, 4, 4) * 5 + 2
    out = ln(x)
    flat = x.reshape(2, -1)
    norm = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(
        flat.var(1, unbiased=False, keepdim=True) + 1e-5
    )
    norm = norm.view(2, 3, 4, 4)
    want = norm * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + torch.tensor(
        [0.0, 1.0, -1.0]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out, want)


def test_released_init_statistics():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3), torch.nn.LSTMCell(100, 50))
    released_init_(net)
    w = net[0].weight
    std = 1 / math.sqrt(64 * 9)
    assert w.abs().max() <= 2 * std + 1e-7
    # a normal truncated at 2 std has std 0.8796 of the untruncated one
    assert abs(w.std().item() / std - 0.8796) < 0.03
    assert (net[0].bias == 0).all()
    lstm = net[1]
    assert (lstm.bias_ih[50:100] == 1).all() and (lstm.bias_ih[:50] == 0).all()
    assert (lstm.bias_hh == 0).all()
