"""Procedural Tetrominoes: 35x35 images of 3 non-overlapping tetromino pieces on black.

The official recipe (its released examples are reproduced byte for byte from their factors):
each piece one of the 19 fixed tetrominoes, 4 bevelled blocks of 5x5 pixels, one of 6 colours
(repeats allowed), at any pixel position where it fits without overlapping earlier pieces.
Factors as released, entry 0 the background: ``x`` (row of the top-left pixel), ``y`` (its
column), ``shape`` (1..19, ``SHAPES``), ``visibility`` (1) and ``color`` (RGB in {0, 1}).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

IMAGE_SIZE = 35
BLOCK = 5
NUM_PIECES = 3

# The 19 fixed tetrominoes, indexed 1..19 as in the official factor ``shape`` (indices 2, 3,
# 5-7 and 9-19 were checked against released examples; 1, 4 and 8 complete the obvious order).
SHAPES: tuple[tuple[str, ...], ...] = tuple(
    tuple(rows.split("/"))
    for rows in (
        "1111 1/1/1/1 111/100 100/111 001/111 111/001 11/01/01 01/01/11 11/10/10 10/10/11 "
        "110/011 011/110 01/11/10 10/11/01 010/111 111/010 01/11/01 10/11/10 11/11"
    ).split()
)

# Colours in {0, 1} per RGB channel; a pixel is colour * bevel brightness.
COLORS = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.uint8
)

# Brightness of the pixels of one 5x5 block (light top edge, dark bottom edge), as released.
BEVEL = np.array(
    [
        [191, 255, 255, 255, 223],
        [127, 159, 159, 159, 191],
        [127, 159, 159, 159, 191],
        [127, 159, 159, 159, 191],
        [95, 63, 63, 63, 127],
    ],
    dtype=np.uint8,
)


def piece_bitmaps() -> list[tuple[np.ndarray, np.ndarray]]:
    """Per piece (index ``shape - 1``): occupancy bool (h, w) and brightness uint8 (h, w)."""
    out = []
    for rows in SHAPES:
        blocks = np.array([[c == "1" for c in row] for row in rows])
        occ = np.kron(blocks, np.ones((BLOCK, BLOCK), dtype=bool))
        bright = np.tile(BEVEL, blocks.shape) * occ
        out.append((occ, bright.astype(np.uint8)))
    return out


def render(
    x: np.ndarray, y: np.ndarray, shape: np.ndarray, color: np.ndarray, pieces=None
) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene from its factors (entry 0, the background, is ignored).

    Args:
        x, y: (E,) row and column of each piece's top-left pixel.
        shape: (E,) piece index 1..19.
        color: (E, 3) RGB in {0, 1}.
        pieces: ``piece_bitmaps()`` (computed when None).

    Returns:
        image uint8 (35, 35, 3) and label map uint8 (35, 35), label k for entry k.
    """
    pieces = piece_bitmaps() if pieces is None else pieces
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    label = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for k in range(1, len(shape)):
        occ, bright = pieces[int(shape[k]) - 1]
        r, c = int(x[k]), int(y[k])
        h, w = occ.shape
        region = (slice(r, r + h), slice(c, c + w))
        rgb = bright[:, :, None] * np.asarray(color[k], np.uint8)[None, None, :]
        image[region][occ] = rgb[occ]
        label[region][occ] = k
    return image, label


def generate(num_examples: int, seed: int, num_pieces: int = NUM_PIECES) -> Iterator[dict]:
    """Yield ``num_examples`` scenes of ``num_pieces`` pieces from one stream of ``seed``:
    ``image`` uint8 (35, 35, 3), ``mask`` uint8 (35, 35) (k = piece k), ``factors`` (E,)
    float32 (``color`` (E, 3)), E = num_pieces + 1."""
    rng = np.random.default_rng(seed)
    pieces = piece_bitmaps()
    e = num_pieces + 1
    for _ in range(num_examples):
        occupied = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
        x = np.zeros(e, np.float32)
        y = np.zeros(e, np.float32)
        shape = np.zeros(e, np.float32)
        color = np.zeros((e, 3), np.float32)
        k = 1
        while k < e:
            s = int(rng.integers(len(SHAPES)))
            occ = pieces[s][0]
            h, w = occ.shape
            r = int(rng.integers(IMAGE_SIZE - h + 1))
            c = int(rng.integers(IMAGE_SIZE - w + 1))
            if np.any(occupied[r : r + h, c : c + w] & occ):
                continue  # rejection sampling: redraw shape and position
            occupied[r : r + h, c : c + w] |= occ
            x[k], y[k], shape[k] = r, c, s + 1
            color[k] = COLORS[rng.integers(len(COLORS))]
            k += 1
        image, label = render(x, y, shape, color, pieces)
        yield {
            "image": image,
            "mask": label,
            "factors": {
                "x": x,
                "y": y,
                "shape": shape,
                "visibility": np.ones(e, np.float32),
                "color": color,
            },
        }
