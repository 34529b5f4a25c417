"""The spatial broadcast decoder against the plain convolution it stands for."""

import pytest
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


def _cone(z01: torch.Tensor, h: int, w: int, directions: int) -> torch.Tensor:
    """Sum over directions of elu(u) + elu(-u), u = w_j . (c - p), by an explicit loop."""
    out = torch.zeros(len(z01), h, w, dtype=z01.dtype)
    ys = torch.linspace(-1, 1, h, dtype=z01.dtype)
    xs = torch.linspace(-1, 1, w, dtype=z01.dtype)
    for n in range(len(z01)):
        for i in range(h):
            for j in range(w):
                for d in range(directions):
                    a = torch.tensor(torch.pi * d / directions, dtype=z01.dtype)
                    u = torch.cos(a) * (ys[i] - z01[n, 0]) + torch.sin(a) * (xs[j] - z01[n, 1])
                    out[n, i, j] += F.elu(u) + F.elu(-u)
    return out


def test_blob_init_adds_minus_gain_times_distance_cone_to_the_mask_logit():
    torch.manual_seed(0)
    dec = SpatialBroadcastDecoder(5, (8, 8, 8), kernel_size=3).double()
    dec.blob_init_(gain=3.0, directions=3)
    z = torch.randn(4, 5, dtype=torch.float64)
    got = dec(z, 7, 6)[:, 0]
    without = SpatialBroadcastDecoder(5, (8, 8, 8), kernel_size=3).double()
    without.load_state_dict(dec.state_dict())
    with torch.no_grad():
        without.output.weight[0, 0] = 0.0  # drop the cone, keep the random part
    rest = without(z, 7, 6)[:, 0]
    torch.testing.assert_close(got - rest, -3.0 * _cone(z[:, :2], 7, 6, 3))


def test_blob_init_starts_slots_as_voronoi_cells_of_their_positions():
    torch.manual_seed(1)
    dec = SpatialBroadcastDecoder(4, (16, 16, 16)).double()
    dec.blob_init_(gain=40.0)  # large gain: the random part of the logit no longer matters
    z = torch.zeros(3, 4, dtype=torch.float64)
    z[:, :2] = torch.tensor([[-0.6, -0.6], [0.6, -0.2], [0.0, 0.7]])  # (y, x) per slot
    labels = dec(z, 16, 16)[:, 0].argmax(0)  # (H, W) winning slot per pixel
    ys = torch.linspace(-1, 1, 16, dtype=torch.float64)[:, None, None]
    xs = torch.linspace(-1, 1, 16, dtype=torch.float64)[None, :, None]
    dist = (ys - z[:, 0]) ** 2 + (xs - z[:, 1]) ** 2  # (H, W, K) squared distances
    nearest = dist.argmin(-1)
    # The cone is an octagonal (not Euclidean) distance: allow a few pixels on cell borders.
    assert (labels == nearest).double().mean() > 0.9


def test_blob_init_rejects_a_decoder_too_narrow_for_its_units():
    dec = SpatialBroadcastDecoder(4, (4, 4))
    with pytest.raises(ValueError, match="8 channels"):
        dec.blob_init_(gain=1.0, directions=4)


@pytest.mark.parametrize("factorized", [True, False])
def test_channels_last_decoder_equals_plain_and_returns_contiguous_nchw(factorized):
    torch.manual_seed(0)
    dec = SpatialBroadcastDecoder(
        4, (8, 8), kernel_size=3, output_kernel_size=3, factorized_first_layer=factorized
    ).double()
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    want = _plain_first_layer_output(dec, z, 6, 5)
    g_want = torch.autograd.grad((want**2).sum(), [z, *dec.parameters()])
    dec = dec.to(memory_format=torch.channels_last)
    got = dec(z, 6, 5)
    # One layout for the caller whatever the weights' layout: the model views it as (B, K, ...).
    assert got.is_contiguous()
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad((got**2).sum(), [z, *dec.parameters()])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


@pytest.mark.slow  # a compile (~1 s)
def test_compiled_channels_last_decoder_backward_equals_eager():
    # The crash of MODEL.COMPILE with MODEL.CHANNELS_LAST: a view error in the compiled backward.
    torch.manual_seed(0)
    dec = SpatialBroadcastDecoder(4, (8, 8), 3, 3).double().to(memory_format=torch.channels_last)
    compiled = torch.compile(dec, backend="aot_eager")
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    want = dec(z, 6, 5)
    got = compiled(z, 6, 5)
    torch.testing.assert_close(got, want)
    probe = torch.randn_like(want)
    (g_want,) = torch.autograd.grad(want, z, probe)
    (g_got,) = torch.autograd.grad(got, z, probe)
    torch.testing.assert_close(g_got, g_want)
