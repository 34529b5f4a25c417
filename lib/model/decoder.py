"""Spatial broadcast decoder, as released."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lib.model.layers import Conv2dSame, linear_coordinates


class SpatialBroadcastDecoder(nn.Module):
    """Decode each slot's latent into a mask logit and RGB means.

    z (optionally with the legacy constant 5.0 appended) is broadcast to H x W, two linear
    coordinate channels (y along H, then x along W) are appended, and stride-1 SAME convs
    with ELU between them (none after the last) map to 4 channels: mask logit, then 3 means.
    There is no output activation.

    Args:
        latent_dim: D, size of z_k.
        conv_channels: output channels of the hidden convs.
        kernel_size: kernel of the hidden convs.
        output_kernel_size: kernel of the last conv.
        legacy_constant: append the released constant 5.0 to z (one extra input channel).
    """

    def __init__(
        self,
        latent_dim: int,
        conv_channels: tuple[int, ...] = (64, 64, 64, 64),
        kernel_size: int = 3,
        output_kernel_size: int = 3,
        legacy_constant: bool = True,
    ) -> None:
        super().__init__()
        self.legacy_constant = legacy_constant
        in_ch = latent_dim + int(legacy_constant) + 2
        layers = []
        for ch in conv_channels:
            layers.append(Conv2dSame(in_ch, ch, kernel_size))
            in_ch = ch
        self.hidden = nn.ModuleList(layers)
        self.output = Conv2dSame(in_ch, 4, output_kernel_size)

    def forward(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Args:
            z: (N, D) latents, N = B*K slots folded into the batch.
            height, width: output size.

        Returns:
            (N, 4, H, W): channel 0 the mask logit, channels 1..3 the RGB means.
        """
        n = z.shape[0]
        if self.legacy_constant:
            z = F.pad(z, (0, 1), value=5.0)  # (N, D+1)
        coords = linear_coordinates(height, width, "yx", device=z.device).to(z.dtype)
        x = torch.cat(
            [
                z[:, :, None, None].expand(-1, -1, height, width),
                coords[None].expand(n, -1, -1, -1),
            ],
            dim=1,
        )  # (N, D+1+2, H, W)
        if self.hidden and self.hidden[0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        for conv in self.hidden:
            x = F.elu(conv(x))
        return self.output(x)
