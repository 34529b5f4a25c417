"""Spatial broadcast decoder, as released."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lib.model.layers import Conv2dSame, autocast_enabled, linear_coordinates


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
        factorized_first_layer: compute the first conv without materialising the broadcast
            input (exact, see ``_first_layer``); False runs the plain convolution.
    """

    def __init__(
        self,
        latent_dim: int,
        conv_channels: tuple[int, ...] = (64, 64, 64, 64),
        kernel_size: int = 3,
        output_kernel_size: int = 3,
        legacy_constant: bool = True,
        factorized_first_layer: bool = True,
    ) -> None:
        super().__init__()
        self.legacy_constant = legacy_constant
        # The trick needs symmetric padding, which stride-1 odd kernels have.
        self.factorized = factorized_first_layer and bool(conv_channels) and kernel_size % 2 == 1
        in_ch = latent_dim + int(legacy_constant) + 2
        layers = []
        for ch in conv_channels:
            layers.append(Conv2dSame(in_ch, ch, kernel_size))
            in_ch = ch
        self.hidden = nn.ModuleList(layers)
        self.output = Conv2dSame(in_ch, 4, output_kernel_size)

    @torch.no_grad()
    def blob_init_(self, gain: float, directions: int = 4) -> None:
        """Start the mask logit as a cone centred at the position held by z[0], z[1].

        A deviation from the released initialisation (which leaves the mask logit nearly
        independent of position, so that every slot starts out spatially uniform). Here the first
        hidden conv gets ``2 * directions`` units ``+-(w_j . (c - p))`` for unit vectors w_j
        spread over half a turn, c the pixel's (y, x) coordinates and p = (z_0, z_1); after the
        ELU each pair sums to ``|u| - 1 + exp(-|u|) >= 0``. The second conv adds them into its
        channel 0 (a distance from p), later hidden convs pass channel 0 on, and the output's
        mask logit starts as ``-gain`` times that distance plus the released random part. The
        argmax of the K slots' masks then starts as the Voronoi cells of their positions, so the
        slots compete for regions from the first step; every weight stays trainable. Only the
        centre taps of those units are set (other taps and inputs zero); the means and all other
        units keep the released initialisation.

        Args:
            gain: slope of the initial mask logit per unit of coordinate distance (coordinates
                span [-1, 1]).
            directions: number of directions w_j (2 * directions first-layer units).

        Raises:
            ValueError: a decoder without hidden convs, with too few channels, an even kernel or
                a latent smaller than 2.
        """
        n_units = 2 * directions
        if not self.hidden:
            raise ValueError("blob initialisation needs at least one hidden decoder conv")
        first = self.hidden[0]
        if first.out_channels < n_units or any(
            c.kernel_size[0] % 2 == 0 for c in [*self.hidden, self.output]
        ):
            raise ValueError(
                f"blob initialisation needs >= {n_units} channels in the first decoder conv "
                f"(got {first.out_channels}) and odd kernels"
            )
        coord_in = first.in_channels - 2  # coordinates are the last two inputs: y, then x
        if coord_in - int(self.legacy_constant) < 2:
            raise ValueError("blob initialisation needs a latent of at least 2 dimensions")
        centre = first.kernel_size[0] // 2
        for j in range(directions):
            angle = math.pi * j / directions
            w = (math.cos(angle), math.sin(angle))  # (y, x) direction
            for sign, unit in ((1.0, 2 * j), (-1.0, 2 * j + 1)):
                first.weight[unit].zero_()
                first.bias[unit] = 0.0
                for axis in range(2):
                    first.weight[unit, coord_in + axis, centre, centre] = sign * w[axis]
                    first.weight[unit, axis, centre, centre] = -sign * w[axis]
        # The next layer sums the units into its channel 0; later ones pass channel 0 on.
        layers = [*self.hidden[1:], self.output]
        sources = list(range(n_units))
        for i, conv in enumerate(layers):
            c = conv.kernel_size[0] // 2
            if i == len(layers) - 1:
                # The mask logit keeps its random part from the other channels.
                conv.weight[0, sources] = 0.0
                conv.weight[0, sources, c, c] = -gain
            else:
                conv.weight[0].zero_()
                conv.bias[0] = 0.0
                conv.weight[0, sources, c, c] = 1.0
            sources = [0]

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
        channels_last = bool(self.hidden) and self.hidden[0].weight.is_contiguous(
            memory_format=torch.channels_last
        )
        if self.factorized:
            x = F.elu(self._first_layer(z, coords, channels_last))
            for conv in self.hidden[1:]:
                x = F.elu(conv(x))
            # One layout for the caller in every mode: contiguous NCHW (4 channels, cheap).
            return self._output(x).contiguous()
        x = torch.cat(
            [
                z[:, :, None, None].expand(-1, -1, height, width),
                coords[None].expand(n, -1, -1, -1),
            ],
            dim=1,
        )  # (N, D+1+2, H, W)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for conv in self.hidden:
            x = F.elu(conv(x))
        return self._output(x).contiguous()

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        """The 4-channel output conv, in fp32 under autocast: at bf16 resolution (8 bits of
        mantissa) the component means would be quantised in steps of up to 2**-8."""
        if not autocast_enabled(x.device):
            return self.output(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.output(x.float())

    def _first_layer(
        self, z: torch.Tensor, coords: torch.Tensor, channels_last: bool = False
    ) -> torch.Tensor:
        """The first conv of the broadcast input, computed in two cheap parts.

        The input is z_n broadcast to every pixel plus coordinate channels shared by all n, so
        the conv is linear in z_n with a position-dependent matrix: at pixel p it applies the
        sum of the kernel taps that land inside the image (zero padding drops the rest at the
        borders). That matrix, A (C_z, C_out * H * W), is the conv of an all-ones image, so the
        z part is one matmul (N, C_z) @ A instead of a k x k conv over C_z channels; the
        coordinate part is one conv shared by the batch.

        Args:
            z: (N, C_z) latents (with the legacy constant if used).
            coords: (2, H, W).
            channels_last: lay the matmul's columns out as (H, W, C_out), so that the result
                is natively NHWC like the later convs (no layout copy; a copy here made the
                eager and the compiled backward disagree on strides: a view error).

        Returns:
            (N, C_out, H, W) pre-activation output of the first conv.
        """
        conv = self.hidden[0]
        cz = z.shape[1]
        weight_z, weight_c = (
            conv.weight[:, :cz],
            conv.weight[:, cz:],
        )  # (O, C_z, k, k), (O, 2, k, k)
        out_ch, _, k, _ = weight_z.shape
        h, w = coords.shape[-2:]
        ones = coords.new_ones(1, 1, h, w)
        taps = F.conv2d(ones, weight_z.reshape(out_ch * cz, 1, k, k), padding=k // 2)
        coord_part = F.conv2d(coords[None], weight_c, conv.bias, padding=k // 2)  # (1, O, H, W)
        if channels_last:
            taps = taps.view(out_ch, cz, h, w).permute(1, 2, 3, 0).reshape(cz, h * w * out_ch)
            z_part = (z @ taps).view(-1, h, w, out_ch).permute(0, 3, 1, 2)  # NHWC strides
            return z_part + coord_part.contiguous(memory_format=torch.channels_last)
        taps = taps.view(out_ch, cz, h * w).transpose(0, 1).reshape(cz, out_ch * h * w)
        return (z @ taps).view(-1, out_ch, h, w) + coord_part
