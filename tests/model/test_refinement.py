"""lib.model.refinement: the refinement network against the same step written out by hand
(TF SAME padding, ELU, pooling, MLP, the LSTM gates, the residual head)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lib.model.refinement import RefinementNetwork


def _same_conv(x: torch.Tensor, conv: torch.nn.Module, stride: int) -> torch.Tensor:
    # TensorFlow's SAME: total padding so that the output is ceil(H / stride), the odd pixel
    # at the end (bottom / right).
    k = conv.weight.shape[-1]
    size = x.shape[-1]
    total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    return F.conv2d(x, conv.weight, conv.bias, stride=stride)


def _by_hand(net: RefinementNetwork, image, vector, posterior, state, stride):
    x = image
    for conv in net.convs:
        x = F.elu(_same_conv(x, conv, stride))
    h = x.mean(dim=(2, 3)) if net.pool == "avg" else x.flatten(1)
    for i, layer in enumerate(net.mlp):
        h = h @ layer.weight.T + layer.bias
        h = F.elu(h) if i < len(net.mlp) - 1 else h
    h = torch.cat([h, vector], dim=1)
    if net.lstm is not None:
        hx, cx = state
        lstm = net.lstm
        gates = h @ lstm.weight_ih.T + lstm.bias_ih + hx @ lstm.weight_hh.T + lstm.bias_hh
        i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's gate order
        c = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        state = (h, c)
    return posterior + h @ net.head.weight.T + net.head.bias, state


@pytest.mark.parametrize("pool,lstm_size,side", [("avg", 6, 9), ("flatten", 0, 8), ("avg", 0, 7)])
def test_forward_equals_the_step_written_out(pool, lstm_size, side):
    torch.manual_seed(0)
    net = RefinementNetwork(
        in_channels=5, vector_dim=3, posterior_dim=4, conv_channels=(4, 3), kernel_size=3,
        stride=2, mlp_sizes=(7, 5), lstm_size=lstm_size, pool=pool, image_size=side,
    ).double()  # fmt: skip
    n = 6  # B*K slots
    image = torch.randn(n, 5, side, side, dtype=torch.float64)
    vector = torch.randn(n, 3, dtype=torch.float64)
    posterior = torch.randn(n, 4, dtype=torch.float64)
    state = None
    if lstm_size:
        state = tuple(torch.randn(n, lstm_size, dtype=torch.float64) for _ in range(2))
    out, new_state = net(image, vector, posterior, state)
    ref, ref_state = _by_hand(net, image, vector, posterior, state, stride=2)
    assert out.shape == (n, 4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    if lstm_size:
        for a, b in zip(new_state, ref_state):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    else:
        assert new_state is None


def test_initial_state_and_bad_arguments():
    net = RefinementNetwork(5, 3, 4, conv_channels=(4,), lstm_size=6)
    h, c = net.initial_state(10, torch.device("cpu"), torch.float32)
    assert h.shape == c.shape == (10, 6) and not h.any() and not c.any()
    assert RefinementNetwork(5, 3, 4, lstm_size=0).initial_state(10, "cpu", None) is None
    with pytest.raises(ValueError, match="pool"):
        RefinementNetwork(5, 3, 4, pool="max")
    with pytest.raises(ValueError, match="image_size"):
        RefinementNetwork(5, 3, 4, pool="flatten")
    flat = RefinementNetwork(5, 3, 4, conv_channels=(4,), pool="flatten", image_size=8)
    with pytest.raises(ValueError, match="INPUT.IMAGE_SIZE"):
        flat(torch.zeros(2, 5, 10, 10), torch.zeros(2, 3), torch.zeros(2, 4), None)
