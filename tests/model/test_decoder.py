"""The spatial broadcast decoder against the plain convolution it stands for."""

import torch
import torch.nn.functional as F

from lib.model.decoder import SpatialBroadcastDecoder


def _plain_first_layer_output(dec, z, h, w):
    """The released computation: broadcast z, append (y, x) coordinates, run every conv."""
    z = F.pad(z, (0, 1), value=5.0)
    # float32 coordinates, as the model builds them, so only the arithmetic differs
    ys = torch.linspace(-1, 1, h).to(z.dtype)[:, None].expand(h, w)
    xs = torch.linspace(-1, 1, w).to(z.dtype)[None, :].expand(h, w)
    x = torch.cat(
        [
            z[:, :, None, None].expand(-1, -1, h, w),
            torch.stack([ys, xs])[None].expand(len(z), -1, -1, -1),
        ],
        dim=1,
    )
    for conv in dec.hidden:
        x = F.elu(F.conv2d(x, conv.weight, conv.bias, padding=conv.weight.shape[-1] // 2))
    return F.conv2d(x, dec.output.weight, dec.output.bias, padding=dec.output.weight.shape[-1] // 2)


def test_factorized_first_layer_equals_broadcast_convolution_with_gradients():
    torch.manual_seed(0)
    dec = SpatialBroadcastDecoder(6, (8, 8), kernel_size=5, output_kernel_size=3).double()
    z = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    got = dec(z, 11, 9)
    want = _plain_first_layer_output(dec, z, 11, 9)
    torch.testing.assert_close(got, want)
    params = [z, *dec.parameters()]
    g_got = torch.autograd.grad((got**2).sum(), params)
    g_want = torch.autograd.grad((want**2).sum(), params)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


def test_decoder_output_layout():
    dec = SpatialBroadcastDecoder(
        4, (8,), 3, 3, legacy_constant=False, factorized_first_layer=False
    )
    assert dec.hidden[0].in_channels == 4 + 2
    assert dec(torch.zeros(2, 4), 7, 5).shape == (2, 4, 7, 5)
