"""The refinement network: image-sized inputs -> conv stack -> MLP -> LSTM -> residual update."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lib.model.layers import Conv2dSame, autocast_enabled
from lib.spec import POOLS


class RefinementNetwork(nn.Module):
    """One refinement step for every slot at once (slots folded into the batch).

    Stride-2 SAME convs with ELU after each, global average pool, an MLP (ELU between
    layers, last layer linear), concatenation with the vector inputs, an optional LSTM cell
    (state per slot), then the residual head ``lambda + Linear(h)``.

    Args:
        in_channels: channels of the concatenated image-sized inputs.
        vector_dim: size of the concatenated vector inputs (after the MLP output).
        posterior_dim: size of lambda (2 * latent_dim).
        conv_channels, kernel_size, stride, padding: the conv stack.
        mlp_sizes: MLP layer sizes.
        lstm_size: LSTM hidden size; 0 = no LSTM (the MLP output goes to the head).
        pool: "avg" (global average pool, released) or "flatten" (needs ``image_size``).
        image_size: side of the square input, used to size the MLP input when flattening.
    """

    def __init__(
        self,
        in_channels: int,
        vector_dim: int,
        posterior_dim: int,
        conv_channels: tuple[int, ...] = (64, 64, 64, 64),
        kernel_size: int = 3,
        stride: int = 2,
        padding: str = "tf_same",
        mlp_sizes: tuple[int, ...] = (256, 256),
        lstm_size: int = 256,
        pool: str = "avg",
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if pool == "flatten" and not image_size:
            raise ValueError("pool='flatten' needs image_size")
        convs, ch, side = [], in_channels, image_size
        for out_ch in conv_channels:
            convs.append(Conv2dSame(ch, out_ch, kernel_size, stride=stride, padding=padding))
            ch = out_ch
            side = -(-side // stride) if side else side  # SAME: ceil(side / stride)
        self.convs = nn.ModuleList(convs)
        self.pool = pool
        self.feature_side = side
        if pool == "flatten":
            ch = ch * side * side
        mlp = []
        for size in mlp_sizes:
            mlp.append(nn.Linear(ch, size))
            ch = size
        self.mlp = nn.ModuleList(mlp)
        ch += vector_dim
        self.lstm = nn.LSTMCell(ch, lstm_size) if lstm_size > 0 else None
        self.head = nn.Linear(lstm_size if lstm_size > 0 else ch, posterior_dim)

    def initial_state(self, n: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Zero LSTM state for n = B*K slots, or None without an LSTM."""
        if self.lstm is None:
            return None
        zeros = torch.zeros(n, self.lstm.hidden_size, device=device, dtype=dtype)
        return zeros, zeros

    def forward(
        self,
        image_inputs: torch.Tensor,
        vector_inputs: torch.Tensor,
        posterior: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Args:
            image_inputs: (B*K, C, H, W) concatenated image-sized inputs.
            vector_inputs: (B*K, V) concatenated vector inputs [dzp, flat_capacity, zp].
            posterior: (B*K, 2D) current lambda.
            state: LSTM (h, c), each (B*K, lstm_size), or None.

        Returns:
            new lambda (B*K, 2D) and the new state.
        """
        x = image_inputs
        if self.convs and self.convs[0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            x = F.elu(conv(x))
        if self.pool == "avg":
            h = x.mean(dim=(2, 3))  # (B*K, C_last)
        else:
            if x.shape[-1] != self.feature_side or x.shape[-2] != self.feature_side:
                raise ValueError(
                    f"refinement built for {self.feature_side}x{self.feature_side} features "
                    f"(pool='flatten'), got {tuple(x.shape[-2:])}: the input size differs from "
                    "INPUT.IMAGE_SIZE"
                )
            h = x.flatten(1)  # (B*K, C_last * H' * W')
        for i, layer in enumerate(self.mlp):
            h = layer(h)
            if i < len(self.mlp) - 1:
                h = F.elu(h)
        h = torch.cat([h, vector_inputs], dim=1)  # (B*K, H1 + V)
        if self.lstm is not None:
            if autocast_enabled(h.device):
                # The released LSTM state is fp32; under bf16 autocast it would be rounded at
                # every gate (CUDA autocasts LSTM cells, the CPU does not).
                with torch.autocast(h.device.type, enabled=False):
                    state = self.lstm(h.float(), state)
            else:
                state = self.lstm(h, state)
            h = state[0]
        return posterior + self.head(h), state
