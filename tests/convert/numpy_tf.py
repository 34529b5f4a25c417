"""NumPy versions of the released (TensorFlow / Sonnet 1.35) layer arithmetic, for the tests.

Written from TensorFlow's and Sonnet's documented semantics, in their layouts (NHWC, HWIO,
[in, out]); nothing here calls our model code.
"""

import numpy as np


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow SAME: output ceil(size / stride); the odd padding pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def conv2d(x, w, b, stride, pads=None):
    """NHWC x HWIO convolution; ``pads`` ((top, bottom), (left, right)) or TF SAME if None."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    if pads is None:
        top, bottom, oh = same_pads(h, k, stride)
        left, right, ow = same_pads(wd, k, stride)
    else:
        (top, bottom), (left, right) = pads
        oh = (h + top + bottom - k) // stride + 1
        ow = (wd + left + right - k) // stride + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = np.zeros((n, oh, ow, w.shape[3]))
    for i in range(k):
        for j in range(k):
            patch = xp[
                :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
            ]
            out += patch @ w[i, j].astype(np.float64)
    return out + b


def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def sonnet_lstm_step(x, h, c, w_gates, b_gates, forget_bias=1.0):
    """One snt.LSTM step: gates [x, h] @ w + b split i, j, f, o; forget_bias added to f."""
    gates = np.concatenate([x, h], axis=1) @ w_gates + b_gates
    i, j, f, o = np.split(gates, 4, axis=1)
    c_next = sigmoid(f + forget_bias) * c + sigmoid(i) * np.tanh(j)
    return np.tanh(c_next) * sigmoid(o), c_next


def sonnet_layer_norm(x, gamma, beta, eps=1e-5):
    """snt.LayerNorm on (N, ..., C): moments over every axis but the first, per-C gain/bias."""
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def broadcast_decoder(z, convs, height, width):
    """The released BroadcastConv: [z, 5.0] tiled, then y (along H) and x (along W) linear
    coordinates, stride-1 SAME convs with ELU between; returns (N, H, W, 4)."""
    n = z.shape[0]
    z = np.concatenate([z, np.full((n, 1), 5.0)], axis=1)
    tiled = np.broadcast_to(z[:, None, None, :], (n, height, width, z.shape[1]))
    ys = np.broadcast_to(np.linspace(-1, 1, height)[None, :, None, None], (n, height, width, 1))
    xs = np.broadcast_to(np.linspace(-1, 1, width)[None, None, :, None], (n, height, width, 1))
    x = np.concatenate([tiled, ys, xs], axis=3)
    for i, (w, b) in enumerate(convs):
        x = conv2d(x, w, b, 1)
        if i < len(convs) - 1:
            x = elu(x)
    return x


def refinement_net(image_inputs, vector_inputs, posterior, convs, linears, head):
    """The released refinement without LSTM: stride-2 SAME convs + ELU, mean over H, W, MLP
    (ELU between), concatenation with the vector inputs, residual linear head."""
    x = image_inputs
    for w, b in convs:
        x = elu(conv2d(x, w, b, 2))
    h = x.mean(axis=(1, 2))
    for i, (w, b) in enumerate(linears):
        h = h @ w + b
        if i < len(linears) - 1:
            h = elu(h)
    h = np.concatenate([h, vector_inputs], axis=1)
    return posterior + h @ head[0] + head[1]
