"""Procedural sprites: small 32x32 scenes of simple shapes, the quickstart's dataset.

2 to ``max_objects`` sprites (square, circle, triangle, diamond) of random size and position on
black, later ones occluding earlier ones, in eight saturated colours; with probability
``same_color_prob`` a sprite repeats the previous colour, so colour alone cannot always separate
objects. A placement leaving a sprite under ``min_visible`` pixels is redrawn. Factors (entry 0
the background, padded to ``max_objects + 1``): ``shape`` (``SHAPES`` index), ``size``
(half-extent, pixels), ``x``, ``y`` (centre column, row), ``color`` (RGB in [0, 1]) and
``visibility``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

COLORS = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, 0.5, 0]],
    dtype=np.float32,
)
SHAPES = ("square", "circle", "triangle", "diamond")


def _shape_mask(shape: int, cy: float, cx: float, r: float, size: int) -> np.ndarray:
    """Boolean (size, size) silhouette of a sprite centred at (cy, cx) with half-extent r."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == 0:
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == 1:
        return dy * dy + dx * dx <= r * r
    if shape == 2:
        # apex up: the half-width grows linearly from the top to the base
        return (dy >= -r) & (dy <= r * 0.8) & (np.abs(dx) <= (dy + r) * 0.6)
    return np.abs(dy) + np.abs(dx) <= r


def generate(
    num_examples: int,
    seed: int,
    size: int = 32,
    max_objects: int = 3,
    min_objects: int = 2,
    min_radius: float = 4.0,
    max_radius: float = 8.0,
    same_color_prob: float = 0.3,
    min_visible: int = 12,
) -> Iterator[dict]:
    """Yield ``num_examples`` scenes (module docstring) from one stream of ``seed``:
    ``image`` uint8 (size, size, 3), ``mask`` uint8 (size, size), ``factors``."""
    rng = np.random.default_rng(seed)
    n_ent = max_objects + 1
    for _ in range(num_examples):
        count = int(rng.integers(min_objects, max_objects + 1))
        image = np.zeros((size, size, 3), np.float32)
        mask = np.zeros((size, size), np.uint8)
        factors = {
            name: np.zeros((n_ent, 3) if name == "color" else n_ent, np.float32)
            for name in ("shape", "size", "x", "y", "color", "visibility")
        }
        factors["visibility"][0] = 1.0
        color = None
        for obj in range(1, count + 1):
            for _attempt in range(100):
                shape = int(rng.integers(len(SHAPES)))
                r = float(rng.uniform(min_radius, max_radius))
                cy, cx = rng.uniform(r * 0.6, size - r * 0.6, size=2)
                sil = _shape_mask(shape, cy, cx, r, size)
                trial = mask.copy()
                trial[sil] = obj
                # every sprite drawn so far must stay visible enough
                areas = np.bincount(trial.ravel(), minlength=obj + 1)[1 : obj + 1]
                if areas.min() >= min_visible:
                    break
            else:
                raise RuntimeError("could not place a visible sprite in 100 attempts")
            if color is None or rng.random() >= same_color_prob:
                color = COLORS[int(rng.integers(len(COLORS)))]
            mask = trial
            image[sil] = color
            factors["shape"][obj] = shape
            factors["size"][obj] = r
            factors["x"][obj], factors["y"][obj] = cx, cy
            factors["color"][obj] = color
            factors["visibility"][obj] = 1.0
        yield {
            "image": np.round(image * 255).astype(np.uint8),
            "mask": mask,
            "factors": factors,
        }
