"""Padding, coordinates, LayerNorm and initialisation against explicit computations."""

import math

import pytest
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


def test_released_init_statistics_with_the_zero_bias_lstm():
    """The earlier LSTM init (MODEL.REFINEMENT.LSTM_INIT zero_bias): zero biases, forget +1."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3), torch.nn.LSTMCell(100, 50))
    released_init_(net, lstm_init="zero_bias")
    w = net[0].weight
    std = 1 / math.sqrt(64 * 9)
    assert w.abs().max() <= 2 * std + 1e-7
    # a normal truncated at 2 std has std 0.8796 of the untruncated one
    assert abs(w.std().item() / std - 0.8796) < 0.03
    assert (net[0].bias == 0).all()
    lstm = net[1]
    assert (lstm.bias_ih[50:100] == 1).all() and (lstm.bias_ih[:50] == 0).all()
    assert (lstm.bias_hh == 0).all() and lstm.bias_hh.requires_grad


def _truncated_normal_std_ratio(values: torch.Tensor, std: float) -> float:
    return values.double().std().item() / std


def test_sonnet_lstm_init_draws_weights_and_gate_biases_and_freezes_bias_hh():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(300, 200)
    released_init_(cell, lstm_forget_bias=2.5)
    std = 1 / math.sqrt(300 + 200)
    b = cell.bias_ih.detach().clone()
    b[200:400] -= 2.5  # Sonnet's b_gates = bias_ih minus the forget constant
    for values in (cell.weight_ih, cell.weight_hh, b):
        assert values.abs().max() <= 2 * std + 1e-6
        assert abs(_truncated_normal_std_ratio(values, std) - 0.8796) < 0.06
    assert abs(b.mean().item()) < 0.1 * std  # the forget block is centred on +2.5
    assert (cell.bias_hh == 0).all() and not cell.bias_hh.requires_grad
    assert cell.weight_ih.requires_grad and cell.bias_ih.requires_grad


def _sonnet_lstm_step(x, h, c, w_gates, b_gates, forget_bias):
    """Sonnet 1.35 snt.LSTM, written out: one [x, h] matmul, gates i, j, f, o."""
    gates = torch.cat([x, h], dim=1) @ w_gates + b_gates
    i, j, f, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f + forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
    return torch.tanh(c_new) * torch.sigmoid(o), c_new


def test_sonnet_lstm_convention_matches_sonnet_outputs_gradients_and_adam_steps():
    """bias_ih = reorder(b_gates) + forget_bias on the f block: the cell computes Sonnet's
    LSTM, its gradients are Sonnet's and three Adam steps keep it equal to Sonnet's."""
    torch.manual_seed(0)
    n_in, n_h, fb = 5, 3, 1.0
    cell = torch.nn.LSTMCell(n_in, n_h).double()
    released_init_(cell, lstm_forget_bias=fb)
    # PyTorch gate order i, f, g, o -> Sonnet order i, j(=g), f, o.
    order = torch.cat([torch.arange(0, n_h), torch.arange(2 * n_h, 3 * n_h),
                       torch.arange(n_h, 2 * n_h), torch.arange(3 * n_h, 4 * n_h)])  # fmt: skip
    with torch.no_grad():
        w_gates = torch.cat([cell.weight_ih, cell.weight_hh], dim=1)[order].T.clone()
        b_gates = cell.bias_ih[order].clone()
        b_gates[2 * n_h : 3 * n_h] -= fb
    w_gates.requires_grad_(True)
    b_gates.requires_grad_(True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, n_in, generator=gen, dtype=torch.float64)
    h0 = torch.randn(4, n_h, generator=gen, dtype=torch.float64)
    c0 = torch.randn(4, n_h, generator=gen, dtype=torch.float64)
    target = torch.randn(4, n_h, generator=gen, dtype=torch.float64)
    opt_t = torch.optim.Adam([p for p in cell.parameters() if p.requires_grad], lr=0.05)
    opt_s = torch.optim.Adam([w_gates, b_gates], lr=0.05)
    for _ in range(3):
        h_t, c_t = cell(x, (h0, c0))
        h_s, c_s = _sonnet_lstm_step(x, h0, c0, w_gates, b_gates, fb)
        torch.testing.assert_close(h_t, h_s)
        torch.testing.assert_close(c_t, c_s)
        for opt, h in ((opt_t, h_t), (opt_s, h_s)):
            opt.zero_grad()
            ((h - target) ** 2).sum().backward()
        g_b = cell.bias_ih.grad[order]
        torch.testing.assert_close(g_b, b_gates.grad)
        assert cell.bias_hh.grad is None
        opt_t.step()
        opt_s.step()
    with torch.no_grad():
        h_t, _ = cell(x, (h0, c0))
        h_s, _ = _sonnet_lstm_step(x, h0, c0, w_gates, b_gates, fb)
    torch.testing.assert_close(h_t, h_s)
    assert (cell.bias_hh == 0).all()


def test_unknown_lstm_init_is_refused():
    with pytest.raises(ValueError, match="lstm_init"):
        released_init_(torch.nn.LSTMCell(2, 2), lstm_init="tf")
