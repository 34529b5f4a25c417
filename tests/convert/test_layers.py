"""Each converted layer type against a NumPy computation of TensorFlow's / Sonnet's semantics
(and those NumPy references against TensorFlow's own outputs stored with the fixture)."""

import numpy as np
import pytest
import torch
from torch import nn

from lib.convert.released import conv_to_torch, linear_to_torch, lstm_to_torch
from lib.model.layers import Conv2dSame, SlotLayerNorm
from tests.convert import numpy_tf

CONV = "encoder_net/cnn/conv_net_2d/conv_2d_0"


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("stride", [1, 2])
def test_numpy_conv_reference_is_tensorflows(tf_values, tf_reference, stride):
    out = numpy_tf.conv2d(
        tf_reference["conv_input"], tf_values[CONV + "/w"], tf_values[CONV + "/b"], stride
    )
    np.testing.assert_allclose(out, tf_reference[f"conv_stride{stride}"], rtol=1e-4, atol=1e-4)


def _our_conv(tf_values, stride, padding):
    w = tf_values[CONV + "/w"]
    conv = Conv2dSame(w.shape[2], w.shape[3], w.shape[0], stride=stride, padding=padding)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(conv_to_torch(w)))
        conv.bias.copy_(torch.from_numpy(tf_values[CONV + "/b"]))
    return conv


def test_stride1_conv_matches_tf_same_exactly(tf_values, tf_reference):
    x = tf_reference["conv_input"]
    expected = numpy_tf.conv2d(x, tf_values[CONV + "/w"], tf_values[CONV + "/b"], 1)
    for padding in ("tf_same", "symmetric"):  # identical at stride 1 (odd kernel)
        got = _nhwc(_our_conv(tf_values, 1, padding)(_nchw(x)))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_stride2_conv_tf_same_matches_and_symmetric_is_the_documented_deviation(
    tf_values, tf_reference
):
    x = tf_reference["conv_input"]  # 12x12: TF pads 1 before, 2 after for k=5, s=2
    w, b = tf_values[CONV + "/w"], tf_values[CONV + "/b"]
    expected = numpy_tf.conv2d(x, w, b, 2)
    got = _nhwc(_our_conv(tf_values, 2, "tf_same")(_nchw(x)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # MODEL.REFINEMENT.PADDING "symmetric" pads k//2 = 2 on every side: the sampling grid moves
    # by one pixel, so a converted model with it is not the released function.
    symmetric = _nhwc(_our_conv(tf_values, 2, "symmetric")(_nchw(x)))
    np.testing.assert_allclose(
        symmetric, numpy_tf.conv2d(x, w, b, 2, pads=((2, 2), (2, 2))), rtol=1e-4, atol=1e-4
    )
    assert np.abs(symmetric - expected).max() > 0.1


def test_linear(tf_values):
    w = tf_values["encoder_net/cnn/mlp/linear_0/w"]
    b = tf_values["encoder_net/cnn/mlp/linear_0/b"]
    x = np.random.default_rng(0).normal(size=(5, w.shape[0])).astype(np.float32)
    layer = nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(linear_to_torch(w)))
        layer.bias.copy_(torch.from_numpy(b))
    got = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, x.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("forget_bias", [1.0, 0.0])
def test_sonnet_lstm_steps_equal_converted_lstm_cell(forget_bias):
    rng = np.random.default_rng(1)
    n_in, hidden, batch = 13, 6, 4
    w_gates = rng.normal(0, 0.4, size=(n_in + hidden, 4 * hidden)).astype(np.float32)
    b_gates = rng.normal(0, 0.4, size=(4 * hidden,)).astype(np.float32)
    cell = nn.LSTMCell(n_in, hidden)
    params = lstm_to_torch(w_gates, b_gates, forget_bias)
    with torch.no_grad():
        for name, value in params.items():
            getattr(cell, name).copy_(torch.from_numpy(value))
    assert not params["bias_hh"].any()
    h = rng.normal(size=(batch, hidden)).astype(np.float32)
    c = rng.normal(size=(batch, hidden)).astype(np.float32)
    state = (torch.from_numpy(h), torch.from_numpy(c))
    for _ in range(3):
        x = rng.normal(size=(batch, n_in)).astype(np.float32)
        h, c = numpy_tf.sonnet_lstm_step(x, h, c, w_gates, b_gates, forget_bias)
        state = cell(torch.from_numpy(x), state)
        np.testing.assert_allclose(state[0].detach().numpy(), h, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state[1].detach().numpy(), c, rtol=1e-5, atol=1e-5)
    # Folding the forget bias matters: without it the converted cell is another function.
    other = lstm_to_torch(w_gates, b_gates, forget_bias + 1.0)["bias_ih"]
    assert np.abs(other - params["bias_ih"]).max() == pytest.approx(1.0)


def test_sonnet_layer_norm(tf_values, tf_reference):
    gamma = tf_values["model/iodine/preprocess/layer_norm_dcomponents/gamma"]
    beta = tf_values["model/iodine/preprocess/layer_norm_dcomponents/beta"]
    y = tf_reference["layer_norm_input"]  # (N, H*W, C) as the release feeds it
    expected = numpy_tf.sonnet_layer_norm(y.astype(np.float64), gamma, beta)
    np.testing.assert_allclose(expected, tf_reference["layer_norm"], rtol=1e-4, atol=1e-4)
    norm = SlotLayerNorm(3)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(gamma))
        norm.bias.copy_(torch.from_numpy(beta))
    ours = torch.from_numpy(y.reshape(4, 12, 12, 3).transpose(0, 3, 1, 2).copy())
    got = norm(ours).detach().numpy().transpose(0, 2, 3, 1).reshape(y.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
