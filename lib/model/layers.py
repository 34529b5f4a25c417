"""Building blocks shared by the decoder and the refinement network."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lib.spec import LSTM_INITS, PADDINGS


class Conv2dSame(nn.Conv2d):
    """A 2-D convolution with TensorFlow's or symmetric ``SAME`` padding.

    TensorFlow pads ``SAME`` convolutions asymmetrically when the total padding is odd (stride 2
    on even inputs): the extra row/column goes to the bottom/right. ``padding="tf_same"``
    reproduces that; ``"symmetric"`` uses PyTorch's ``k // 2`` on every side (a documented
    deviation that changes border pixels only). For stride 1 and odd kernels both are the same.

    Args:
        in_channels, out_channels, kernel_size, stride: as in ``nn.Conv2d`` (square kernels).
        padding: "tf_same" or "symmetric".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: str = "tf_same",
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        symmetric = padding == "symmetric" or (stride == 1 and kernel_size % 2 == 1)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if symmetric else 0,
        )
        self._tf_pad = not symmetric

    @staticmethod
    def _pad_amounts(size: int, kernel: int, stride: int) -> tuple[int, int]:
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, H, W)
        if self._tf_pad:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = self._pad_amounts(x.shape[-2], k, s)
            left, right = self._pad_amounts(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def linear_coordinates(height: int, width: int, order: str, device=None) -> torch.Tensor:
    """Two coordinate channels with values linearly spaced in [-1, 1].

    Args:
        height, width: spatial size.
        order: "xy" (x along W first; the refinement input) or "yx" (y along H first; the
            decoder, as released).
        device: torch device.

    Returns:
        (2, H, W) float tensor.
    """
    ys = torch.linspace(-1.0, 1.0, height, device=device)[:, None].expand(height, width)
    xs = torch.linspace(-1.0, 1.0, width, device=device)[None, :].expand(height, width)
    return torch.stack([xs, ys] if order == "xy" else [ys, xs])


def cosine_coordinates(height: int, width: int, freqs: int = 3, device=None) -> torch.Tensor:
    """Cosine basis channels cos(f u) cos(g v), f, g in 0..freqs-1, u along W, v along H.

    The constant (f = g = 0) channel is dropped, as released: freqs**2 - 1 channels, ordered
    with f (the x frequency) as the slow index.

    Returns:
        (freqs**2 - 1, H, W) float tensor.
    """
    f = torch.arange(freqs, dtype=torch.float32, device=device)
    u = torch.linspace(0.0, math.pi, width, device=device)
    v = torch.linspace(0.0, math.pi, height, device=device)
    x_basis = torch.cos(u[:, None] * f[None, :])  # (W, F)
    y_basis = torch.cos(v[:, None] * f[None, :])  # (H, F)
    basis = x_basis[None, :, :, None] * y_basis[:, None, None, :]  # (H, W, Fx, Fy)
    basis = basis.reshape(height, width, freqs * freqs)[..., 1:]
    return basis.permute(2, 0, 1).contiguous()


def _trunc_normal_(tensor: torch.Tensor, std: float) -> None:
    # TF1's truncated_normal_initializer: a normal with this std, redrawn beyond 2 std.
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def sonnet_lstm_init_(cell: nn.LSTMCell, forget_bias: float = 1.0) -> None:
    """Make ``cell`` compute what Sonnet 1.35's ``snt.LSTM`` computes at initialisation.

    Sonnet draws its one weight matrix ``w_gates`` (input + hidden, 4 * hidden) and its one
    bias ``b_gates`` (4 * hidden) from a truncated normal with std 1/sqrt(input + hidden), and
    adds ``forget_bias`` as a constant inside the forget gate. Here ``weight_ih`` and
    ``weight_hh`` (the two blocks of ``w_gates``) and ``bias_ih`` get that draw, ``bias_ih``'s
    forget block (PyTorch gate order i, f, g, o: rows hidden..2*hidden) gets ``forget_bias``
    added, and ``bias_hh``, which has no Sonnet counterpart, is zeroed and frozen
    (``requires_grad`` False): otherwise Adam would move the bias sum twice as fast and the
    clipping norm would count its gradient twice. Gradients and Adam steps equal Sonnet's, since
    Adam is invariant to the constant shift. A checkpoint converter inverts exactly this:
    ``bias_ih = reorder(b_gates) + forget_bias`` on the f block, ``bias_hh = 0``.

    Args:
        cell: the LSTM cell, initialised in place.
        forget_bias: constant added to the forget gate's pre-activation (Sonnet default 1.0).
    """
    std = 1.0 / math.sqrt(cell.input_size + cell.hidden_size)
    for tensor in (cell.weight_ih, cell.weight_hh, cell.bias_ih):
        _trunc_normal_(tensor, std)
    with torch.no_grad():
        cell.bias_ih[cell.hidden_size : 2 * cell.hidden_size] += forget_bias
        cell.bias_hh.zero_()
    cell.bias_hh.requires_grad_(False)


def zero_bias_lstm_init_(cell: nn.LSTMCell, forget_bias: float = 1.0) -> None:
    """This project's earlier LSTM initialisation, kept bit-identical for old runs.

    ``weight_ih`` and ``weight_hh`` as in ``sonnet_lstm_init_``; both bias vectors zero except
    ``bias_ih``'s forget block, set to ``forget_bias``; ``bias_hh`` stays trainable.

    Args:
        cell: the LSTM cell, initialised in place.
        forget_bias: value of the forget block of ``bias_ih``.
    """
    std = 1.0 / math.sqrt(cell.input_size + cell.hidden_size)
    for w in (cell.weight_ih, cell.weight_hh):
        _trunc_normal_(w, std)
    nn.init.zeros_(cell.bias_ih)
    nn.init.zeros_(cell.bias_hh)
    with torch.no_grad():
        cell.bias_ih[cell.hidden_size : 2 * cell.hidden_size].fill_(forget_bias)


def released_init_(
    module: nn.Module, *, lstm_init: str = "sonnet", lstm_forget_bias: float = 1.0
) -> None:
    """Initialise like Sonnet 1: truncated normal weights, std 1/sqrt(fan_in), cut at 2 std.

    Conv and linear biases are zero. LSTM cells follow ``lstm_init``: "sonnet" (released,
    ``sonnet_lstm_init_``, freezes ``bias_hh``) or "zero_bias" (``zero_bias_lstm_init_``).

    Args:
        module: every Conv2d, Linear and LSTMCell inside it is initialised in place.
        lstm_init: "sonnet" or "zero_bias".
        lstm_forget_bias: the LSTM forget-gate bias (Sonnet's forget_bias).

    Raises:
        ValueError: an unknown ``lstm_init``.
    """
    if lstm_init not in LSTM_INITS:
        raise ValueError(f"lstm_init must be one of {LSTM_INITS}, got {lstm_init!r}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            _trunc_normal_(m.weight, 1.0 / math.sqrt(fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LSTMCell):
            if lstm_init == "sonnet":
                sonnet_lstm_init_(m, lstm_forget_bias)
            else:
                zero_bias_lstm_init_(m, lstm_forget_bias)


class SlotLayerNorm(nn.Module):
    """LayerNorm over all of a sample's values with a per-channel gain and bias (Sonnet 1).

    Sonnet's ``snt.LayerNorm`` on a (N, H*W, C) tensor normalises each sample over all H*W*C
    values jointly and has gain and bias of size C. This is that, on (N, C, H, W) or (N, C).

    Args:
        num_channels: C.
        eps: added to the variance (Sonnet's default 1e-5).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, ...) -> same shape
        dims = tuple(range(1, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (False for types autocast does not know,
    such as "meta")."""
    return device.type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device.type)
