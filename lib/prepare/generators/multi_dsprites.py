"""Procedural Multi-dSprites (colored_on_grayscale): 64x64 images of 2 to 5 dSprites shapes.

Recipe of the official variant: each scene has a uniformly drawn number of sprites (2..5),
each a dSprites shape (square, ellipse, heart) with one of the dSprites factor values
(6 scales linearly spaced in [0.5, 1], 40 orientations in [0, 2 pi), 32 x 32 positions),
a random colour drawn uniformly in HSV space (hue, saturation and value each in [0, 1]),
drawn in order over a background of one uniformly random grey level, later sprites occluding
earlier ones.

Geometry (our choice; the official renderer is not released): at scale 1 the square has a
side of 16 px, the ellipse semi-axes of 10 and 5 px and the heart a height of about 18 px.
Position index p in 0..31 puts the sprite centre at 8 + 1.5 p pixels (8 .. 54.5) from the
top-left image corner, so sprites near the border can be cut by it. A pixel belongs to a
sprite when its centre lies inside the shape (no anti-aliasing, so masks are exact).

Speed: all 3 x 6 x 40 x 2 x 2 (half-pixel phases) sprite bitmaps of 32x32 pixels are
rasterised once per ``generate`` call with one vectorised evaluation; a scene is then a few
array slices.

Factors, one entry per entity (6: background + up to 5 sprites; unused entries zero):
``x`` (column position in [0, 1]), ``y`` (row position in [0, 1]), ``shape`` (1 square,
2 ellipse, 3 heart), ``scale``, ``orientation`` (radians), ``visibility`` (1 when at least one
pixel is visible) float32 (6,), and ``color`` float32 (6, 3), RGB in [0, 1] equal to the
pixel values / 255 (the background's entry is its grey level).
"""

from __future__ import annotations

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
    """Rasterise every sprite pose.

    Returns:
        bool array (3 shapes, 6 scales, 40 orientations, 2 row phases, 2 column phases,
        32, 32): pixel (a, b) is inside the sprite whose centre lies at pixel-corner
        coordinates (16 + row_phase / 2, 16 + col_phase / 2) of the patch.
    """
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


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Convert HSV to RGB (vectorised, same formula as ``colorsys.hsv_to_rgb``).

    Args:
        hsv: float array (..., 3), each channel in [0, 1].

    Returns:
        float array (..., 3), RGB in [0, 1].
    """
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def _place(position: int) -> tuple[int, int]:
    # Centre at 8 + 1.5 p (pixel-corner coordinates): top-left of the patch and half-pixel phase.
    twice = 16 + 3 * position
    return twice // 2 - PATCH // 2, twice % 2


def generate(
    num_examples: int, seed: int, min_objects: int = 2, max_objects: int = 5
) -> Iterator[dict]:
    """Generate Multi-dSprites (colored_on_grayscale) scenes, deterministically from ``seed``.

    Args:
        num_examples: number of scenes.
        seed: seed of the ``numpy.random.Generator``.
        min_objects, max_objects: range of the number of sprites (inclusive; official 2..5,
            at most 5 so that the factors keep the official 6 entries).

    Returns:
        An iterator of dicts: ``image`` uint8 (64, 64, 3), ``mask`` uint8 (64, 64) label map
        (0 background, k = k-th sprite drawn; fully occluded sprites have no pixels),
        ``factors`` as described in the module docstring.
    """
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
        rgb = np.round(hsv_to_rgb(rng.random((n, 3))) * 255.0)

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

        visible = np.zeros(e, np.float32)
        visible[0] = 1.0
        present = np.bincount(label.ravel(), minlength=e)[:e] > 0
        visible[1 : n + 1] = present[1 : n + 1]
        factors = {
            "x": np.zeros(e, np.float32),
            "y": np.zeros(e, np.float32),
            "shape": np.zeros(e, np.float32),
            "scale": np.zeros(e, np.float32),
            "orientation": np.zeros(e, np.float32),
            "visibility": visible,
            "color": np.zeros((e, 3), np.float32),
        }
        factors["x"][1 : n + 1] = pos[:, 1] / (NUM_POSITIONS - 1)
        factors["y"][1 : n + 1] = pos[:, 0] / (NUM_POSITIONS - 1)
        factors["shape"][1 : n + 1] = shape + 1
        factors["scale"][1 : n + 1] = SCALES[scale]
        factors["orientation"][1 : n + 1] = ORIENTATIONS[orient]
        factors["color"][0] = grey / 255.0
        factors["color"][1 : n + 1] = rgb / 255.0
        yield {"image": image, "mask": label, "factors": factors}
