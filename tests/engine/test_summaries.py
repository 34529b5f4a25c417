"""TensorBoard image summaries: grid layout and readable (nearest-upscaled) tiles."""

import numpy as np
import torch

from lib.engine.summaries import MIN_TILE_PX, add_image_summaries, image_grids


class RecordingWriter:
    def __init__(self):
        self.images = {}

    def add_image(self, tag, image, step):
        self.images[tag] = (image, step)


def _outputs(b: int, t: int, k: int, size: int):
    gen = torch.Generator().manual_seed(0)
    masks = torch.softmax(torch.randn(b, t + 1, k, size, size, generator=gen), dim=2)
    components = torch.rand(b, t + 1, k, 3, size, size, generator=gen)
    recon = (masks[:, :, :, None] * components).sum(dim=2)
    images = torch.rand(b, 3, size, size, generator=gen)
    return images, {"masks": masks, "components": components, "recon": recon}


def test_slot_grid_holds_the_masked_components_tile_by_tile():
    images, out = _outputs(b=3, t=2, k=4, size=5)
    grid = image_grids(images, out, num_images=2)["slots"]
    # make_grid with padding 1: tile (row i, column k) starts at 1 + i * 6, 1 + k * 6.
    assert grid.shape == (3, 1 + 2 * 6, 1 + 4 * 6)
    for i in range(2):
        for k in range(4):
            want = (out["masks"][i, -1, k][None] * out["components"][i, -1, k]).clamp(0, 1)
            tile = grid[:, 1 + i * 6 : 6 + i * 6, 1 + k * 6 : 6 + k * 6]
            torch.testing.assert_close(tile, want)


def test_small_tiles_are_upscaled_by_an_integer_nearest_factor():
    # The quickstart's shape: 16-pixel images, K = 4, 4 images: a 69 x 69 slot grid.
    images, out = _outputs(b=4, t=1, k=4, size=16)
    writer = RecordingWriter()
    add_image_summaries(writer, "train_images", images, out, step=7, num=4)
    grids = image_grids(images, out, 4)
    assert grids["slots"].shape == (3, 69, 69)
    factor = 4  # ceil(64 / 16)
    assert 16 * factor >= MIN_TILE_PX > 16 * (factor - 1)
    for name, grid in grids.items():
        image, step = writer.images[f"train_images/{name}"]
        assert step == 7
        want = np.repeat(np.repeat(grid.numpy(), factor, axis=1), factor, axis=2)
        np.testing.assert_array_equal(image.numpy(), want)


def test_large_tiles_are_left_as_they_are():
    images, out = _outputs(b=1, t=1, k=2, size=MIN_TILE_PX)
    writer = RecordingWriter()
    add_image_summaries(writer, "eval_images", images, out, step=1, num=1)
    grid = image_grids(images, out, 1)["masks"]
    torch.testing.assert_close(writer.images["eval_images/masks"][0], grid)
