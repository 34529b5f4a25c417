"""Building blocks shared by the decoder and the refinement network."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
        if padding not in ("tf_same", "symmetric"):
            raise ValueError(f"padding must be 'tf_same' or 'symmetric', got {padding!r}")
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


def released_init_(module: nn.Module) -> None:
    """Initialise like Sonnet 1: truncated normal weights, std 1/sqrt(fan_in), cut at 2 std.

    Conv and linear biases are zero. LSTM cells get std 1/sqrt(input + hidden) on both weight
    matrices, zero biases and forget-gate bias +1 (Sonnet adds forget_bias=1 to the gate).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            std = 1.0 / math.sqrt(fan_in)
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LSTMCell):
            std = 1.0 / math.sqrt(m.input_size + m.hidden_size)
            for w in (m.weight_ih, m.weight_hh):
                nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(m.bias_ih)
            nn.init.zeros_(m.bias_hh)
            with torch.no_grad():
                m.bias_ih[m.hidden_size : 2 * m.hidden_size].fill_(1.0)


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
