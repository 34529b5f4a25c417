"""Procedural Multi-dSprites (colored_on_grayscale): 64x64 images of 2 to 5 dSprites shapes.

The official recipe: a uniform number of sprites (2..5), each a dSprites shape (square,
ellipse, heart) at one of the dSprites factor values (6 scales in [0.5, 1], 40 orientations in
[0, 2 pi), 32 x 32 positions) and a colour uniform in HSV space, drawn in order over a uniform
random grey background, later sprites occluding earlier ones.

Geometry (our choice; the official renderer is not released): at scale 1 the square's side is
16 px, the ellipse's semi-axes 10 and 5 px, the heart about 18 px high. Position p puts the
centre at 8 + 1.5 p pixels from the top-left corner (sprites near the border are cut). A pixel
belongs to a sprite when its centre lies inside (no anti-aliasing: exact masks). Every pose's
32x32 bitmap is rasterised once per ``generate`` call; a scene is then a few array slices.

Factors (6 entries: background + up to 5 sprites, unused ones zero): ``x``, ``y`` (column and
row position in [0, 1]), ``shape`` (1 square, 2 ellipse, 3 heart), ``scale``, ``orientation``
(radians), ``visibility`` (1 when a pixel is visible), ``color`` (6, 3) RGB in [0, 1] (the
background's entry its grey level).
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator

import numpy as np

IMAGE_SIZE = 64
MAX_ENTITIES = 6  # background + at most 5 sprites, as in the official variant
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
NUM_POSITIONS = 32
PATCH = 32  # side of a precomputed sprite bitmap (px); its centre is pixel corner (16, 16)
SHAPE_NAMES = ("square", "ellipse", "heart")
_BASE = 8.0  # half-size of a scale-1 sprite in pixels


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # u: along the sprite's rotated x axis, v: along its rotated y axis (down), in units of
    # the sprite's half-size.
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    if shape == "ellipse":
        return (u / 1.25) ** 2 + (v / 0.625) ** 2 <= 1.0
    # Heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 with y up; shifted so it is centred.
    hx, hy = u, -v + 0.12
    return (hx * hx + hy * hy - 1.0) ** 3 - hx * hx * hy**3 <= 0.0


def sprite_bitmaps() -> np.ndarray:
    """Every sprite pose: bool (3 shapes, 6 scales, 40 orientations, 2 row phases, 2 column
    phases, 32, 32), the sprite centred at pixel-corner (16 + row_phase / 2, 16 + col_phase / 2)."""
    a = np.arange(PATCH) + 0.5 - PATCH / 2
    phase = np.array([0.0, 0.5])
    dy = (a[None, :] - phase[:, None])[None, :, None, :, None]  # (1, 2, 1, 32, 1)
    dx = (a[None, :] - phase[:, None])[None, None, :, None, :]  # (1, 1, 2, 1, 32)
    cos = np.cos(ORIENTATIONS)[:, None, None, None, None]
    sin = np.sin(ORIENTATIONS)[:, None, None, None, None]
    # Rotate the pixel offsets by -theta: the sprite is rotated by theta.
    u0 = cos * dx + sin * dy
    v0 = -sin * dx + cos * dy
    table = np.zeros((3, len(SCALES), len(ORIENTATIONS), 2, 2, PATCH, PATCH), bool)
    for i, shape in enumerate(SHAPE_NAMES):
        for j, scale in enumerate(SCALES):
            r = _BASE * scale
            table[i, j] = _inside(shape, u0 / r, v0 / r)
    return table


def _place(position: int) -> tuple[int, int]:
    # Centre at 8 + 1.5 p (pixel-corner coordinates): top-left of the patch and half-pixel phase.
    twice = 16 + 3 * position
    return twice // 2 - PATCH // 2, twice % 2


def generate(
    num_examples: int, seed: int, min_objects: int = 2, max_objects: int = 5
) -> Iterator[dict]:
    """Yield ``num_examples`` scenes of ``min_objects..max_objects`` (at most 5) sprites from one
    stream of ``seed``: ``image`` uint8 (64, 64, 3), ``mask`` uint8 (64, 64) (k = k-th sprite
    drawn), ``factors`` (module docstring)."""
    if not 1 <= min_objects <= max_objects <= MAX_ENTITIES - 1:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {MAX_ENTITIES - 1}, "
            f"got {min_objects}, {max_objects}"
        )
    rng = np.random.default_rng(seed)
    table = sprite_bitmaps()
    e = MAX_ENTITIES
    for _ in range(num_examples):
        n = int(rng.integers(min_objects, max_objects + 1))
        grey = np.round(rng.random() * 255.0)
        shape = rng.integers(3, size=n)
        scale = rng.integers(len(SCALES), size=n)
        orient = rng.integers(len(ORIENTATIONS), size=n)
        pos = rng.integers(NUM_POSITIONS, size=(n, 2))  # (row, col) position indices
        rgb = np.round(np.array([colorsys.hsv_to_rgb(*c) for c in rng.random((n, 3))]) * 255.0)

        image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), grey, np.uint8)
        label = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        for k in range(n):
            top, prow = _place(int(pos[k, 0]))
            left, pcol = _place(int(pos[k, 1]))
            bitmap = table[shape[k], scale[k], orient[k], prow, pcol]
            r0, r1 = max(top, 0), min(top + PATCH, IMAGE_SIZE)
            c0, c1 = max(left, 0), min(left + PATCH, IMAGE_SIZE)
            m = bitmap[r0 - top : r1 - top, c0 - left : c1 - left]
            image[r0:r1, c0:c1][m] = rgb[k]
            label[r0:r1, c0:c1][m] = k + 1

        factors = {
            name: np.zeros((e, 3) if name == "color" else e, np.float32)
            for name in ("x", "y", "shape", "scale", "orientation", "visibility", "color")
        }
        factors["visibility"][0] = 1.0
        factors["visibility"][1 : n + 1] = np.bincount(label.ravel(), minlength=e)[1 : n + 1] > 0
        factors["x"][1 : n + 1] = pos[:, 1] / (NUM_POSITIONS - 1)
        factors["y"][1 : n + 1] = pos[:, 0] / (NUM_POSITIONS - 1)
        factors["shape"][1 : n + 1] = shape + 1
        factors["scale"][1 : n + 1] = SCALES[scale]
        factors["orientation"][1 : n + 1] = ORIENTATIONS[orient]
        factors["color"][0] = grey / 255.0
        factors["color"][1 : n + 1] = rgb / 255.0
        yield {"image": image, "mask": label, "factors": factors}
