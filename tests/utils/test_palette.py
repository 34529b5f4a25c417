"""lib/utils/palette.py against explicit per-pixel loops and numpy."""

import numpy as np
import pytest
import torch

from lib.utils.palette import (
    PALETTE,
    colorize_labels,
    gray_to_rgb,
    masked_components,
    slot_tile,
    upscale_factor,
    upscale_nearest,
)


def test_colorize_labels_matches_a_per_pixel_loop():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2 * len(PALETTE) + 3, (2, 5, 4), generator=gen)
    rgb = colorize_labels(labels)
    assert rgb.shape == (2, 3, 5, 4) and rgb.dtype == torch.float32
    for b in range(2):
        for y in range(5):
            for x in range(4):
                colour = PALETTE[int(labels[b, y, x]) % len(PALETTE)]
                assert rgb[b, :, y, x].tolist() == pytest.approx([c / 255 for c in colour])
    with pytest.raises(TypeError, match="integer"):
        colorize_labels(labels.float())


def test_masked_components_is_the_blend_with_the_background():
    gen = np.random.default_rng(1)
    masks = gen.random((2, 3, 4, 5)).astype(np.float32)  # (B, K, H, W)
    comps = gen.uniform(-0.2, 1.2, (2, 3, 3, 4, 5)).astype(np.float32)  # outside [0, 1] too
    for background, fill in (("white", 1.0), ("black", 0.0)):
        got = masked_components(torch.from_numpy(masks), torch.from_numpy(comps), background)
        m = masks[:, :, None]
        expected = np.clip(m * comps + (1 - m) * fill, 0.0, 1.0)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="background"):
        masked_components(torch.from_numpy(masks), torch.from_numpy(comps), "grey")


def test_slot_tile_stacks_mask_over_component_with_a_white_border():
    gen = torch.Generator().manual_seed(2)
    mask, comp = torch.rand(4, 5, generator=gen), torch.rand(3, 4, 5, generator=gen)
    tile = slot_tile(mask, comp).numpy()
    h, w = 4, 5
    expected = np.ones((3, 2 * h + 3, w + 2), dtype=np.float32)
    expected[:, 1 : 1 + h, 1 : 1 + w] = np.repeat(mask.numpy()[None], 3, axis=0)
    expected[:, 2 + h : 2 + 2 * h, 1 : 1 + w] = comp.numpy()
    np.testing.assert_array_equal(tile, expected)
    assert gray_to_rgb(mask).shape == (3, h, w)


@pytest.mark.parametrize(
    ("tile_size", "min_tile", "factor"), [(16, 64, 4), (35, 64, 2), (64, 64, 1), (128, 64, 1)]
)
def test_upscale_factor(tile_size, min_tile, factor):
    assert upscale_factor(tile_size, min_tile) == factor
    assert tile_size * factor >= min_tile and (factor == 1 or tile_size * (factor - 1) < min_tile)


def test_upscale_nearest_matches_numpy_repeat():
    gen = np.random.default_rng(3)
    tiles = gen.random((2, 3, 16, 12)).astype(np.float32)
    got = upscale_nearest(torch.from_numpy(tiles), min_tile=64).numpy()
    f = 6  # min(16, 12) = 12 -> ceil(64 / 12)
    expected = np.repeat(np.repeat(tiles, f, axis=2), f, axis=3)
    np.testing.assert_array_equal(got, expected)
    # Each output pixel is the input pixel whose f x f block it lies in.
    for y, x in ((0, 0), (5, 5), (6, 6), (95, 71), (40, 13)):
        np.testing.assert_array_equal(got[:, :, y, x], tiles[:, :, y // f, x // f])


def test_upscale_nearest_of_a_grid_uses_the_tile_size():
    gen = np.random.default_rng(4)
    grid = (gen.random((3, 35, 69)) * 255).astype(np.uint8)  # two 33-pixel tiles with padding
    got = upscale_nearest(torch.from_numpy(grid), min_tile=64, tile_size=33)
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), np.kron(grid, np.ones((1, 2, 2), np.uint8)))
    big = torch.zeros(3, 70, 70)
    assert upscale_nearest(big, min_tile=64) is big
    with pytest.raises(ValueError, match="tile_size"):
        upscale_nearest(big, tile_size=0)
