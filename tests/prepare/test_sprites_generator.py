"""The quickstart's sprites generator: determinism, counts, visibility, colours from the masks."""

import numpy as np

from lib.prepare.generators.sprites import COLORS, generate


def test_same_seed_same_bytes_and_counts_in_range():
    a = list(generate(30, seed=5))
    b = list(generate(30, seed=5))
    c = list(generate(30, seed=6))
    assert all(
        np.array_equal(x["image"], y["image"]) and np.array_equal(x["mask"], y["mask"])
        for x, y in zip(a, b)
    )
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
    counts = [int(x["factors"]["visibility"].sum()) - 1 for x in a]
    assert min(counts) >= 2 and max(counts) <= 3


def test_masks_match_pixels_and_every_sprite_is_visible():
    same_colour_scenes = 0
    for ex in generate(200, seed=1):
        image, mask, f = ex["image"], ex["mask"], ex["factors"]
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        assert (image[mask == 0] == 0).all()  # black background
        n = int(f["visibility"].sum()) - 1
        assert set(np.unique(mask)) <= set(range(n + 1))
        colours = []
        for obj in range(1, n + 1):
            pixels = image[mask == obj]
            assert len(pixels) >= 12
            want = np.round(f["color"][obj] * 255)
            assert (pixels == want).all()
            assert any(np.allclose(f["color"][obj], c) for c in COLORS)
            colours.append(tuple(want))
        same_colour_scenes += len(set(colours)) < len(colours)
    # Scenes where two objects share a colour exist, so colour alone cannot segment them.
    assert 20 <= same_colour_scenes <= 120
