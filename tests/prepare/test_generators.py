"""Procedural Tetrominoes and Multi-dSprites: shapes, determinism, counts, mask consistency."""

import importlib

import numpy as np
import pytest

from lib.prepare import generators
from lib.prepare.generators import multi_dsprites as md
from lib.prepare.generators import tetrominoes as tet


def _stack(items, key):
    return np.stack([it[key] for it in items])


def test_tetrominoes_scenes():
    items = list(tet.generate(60, seed=3))
    assert len(items) == 60
    blocks = {
        s + 1: np.array([[c == "1" for c in row] for row in rows])
        for s, rows in enumerate(tet.SHAPES)
    }
    assert len(blocks) == 19 and all(b.sum() == 4 for b in blocks.values())
    assert len({b.tobytes() + bytes(b.shape) for b in blocks.values()}) == 19  # all distinct
    colours = {tuple(c) for c in tet.COLORS.tolist()}
    for it in items:
        image, label, f = it["image"], it["mask"], it["factors"]
        assert image.shape == (35, 35, 3) and image.dtype == np.uint8
        assert label.shape == (35, 35) and label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 1, 2, 3}
        assert not image[label == 0].any()  # black background
        for k in (1, 2, 3):
            # 4 blocks of 5x5 at the piece's position, as its shape says; all 100 pixels are
            # visible, so no other piece overlaps it.
            occupied = np.kron(blocks[int(f["shape"][k])], np.ones((5, 5), bool))
            expected = np.zeros((35, 35), bool)
            r, c = int(f["x"][k]), int(f["y"][k])
            expected[r : r + occupied.shape[0], c : c + occupied.shape[1]] = occupied
            np.testing.assert_array_equal(label == k, expected)
            assert tuple(f["color"][k].astype(int)) in colours
            pixels = image[label == k].astype(int)
            # Each pixel is the colour times a bevel brightness: zero exactly where the colour is.
            assert ((pixels > 0) == (f["color"][k] > 0)).all()
        assert f["visibility"].tolist() == [1, 1, 1, 1]


def test_tetrominoes_deterministic():
    a = list(tet.generate(5, seed=7))
    b = list(tet.generate(5, seed=7))
    c = list(tet.generate(5, seed=8))
    np.testing.assert_array_equal(_stack(a, "image"), _stack(b, "image"))
    np.testing.assert_array_equal(_stack(a, "mask"), _stack(b, "mask"))
    assert not np.array_equal(_stack(a, "image"), _stack(c, "image"))


def test_multi_dsprites_scenes():
    items = list(md.generate(80, seed=5))
    counts = []
    for it in items:
        image, label, f = it["image"], it["mask"], it["factors"]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert label.shape == (64, 64) and label.dtype == np.uint8
        assert all(v.shape[0] == 6 for v in f.values()) and f["color"].shape == (6, 3)
        n = int((f["shape"] > 0).sum())
        counts.append(n)
        assert 2 <= n <= 5 and f["shape"][n + 1 :].sum() == 0
        assert set(np.unique(label).tolist()) <= set(range(n + 1))
        # Background: one grey level, equal to the background factor colour.
        background = image[label == 0]
        grey = np.round(f["color"][0] * 255).astype(np.uint8)
        assert grey[0] == grey[1] == grey[2]
        assert (background == grey).all()
        for k in range(1, n + 1):
            visible = label == k
            assert f["visibility"][k] == float(visible.any())
            if visible.any():
                colour = np.round(f["color"][k] * 255).astype(np.uint8)
                assert (image[visible] == colour).all()
        assert set(f["shape"][1 : n + 1].tolist()) <= {1.0, 2.0, 3.0}
        assert np.all((f["scale"][1 : n + 1] >= 0.5) & (f["scale"][1 : n + 1] <= 1.0))
        assert np.all((f["x"] >= 0) & (f["x"] <= 1) & (f["y"] >= 0) & (f["y"] <= 1))
    assert set(counts) == {2, 3, 4, 5}


def test_multi_dsprites_deterministic_and_varied():
    a = list(md.generate(6, seed=11))
    b = list(md.generate(6, seed=11))
    np.testing.assert_array_equal(_stack(a, "image"), _stack(b, "image"))
    np.testing.assert_array_equal(_stack(a, "mask"), _stack(b, "mask"))
    c = list(md.generate(6, seed=12))
    assert not np.array_equal(_stack(a, "image"), _stack(c, "image"))


def test_sprite_bitmaps():
    table = md.sprite_bitmaps()
    assert table.shape == (3, 6, 40, 2, 2, 32, 32)
    area = table.sum(axis=(-1, -2)).astype(float)
    # Area grows with scale (about 4x from scale 0.5 to 1) and hardly depends on orientation.
    ratio = area[:, -1].mean(axis=(1, 2, 3)) / area[:, 0].mean(axis=(1, 2, 3))
    assert np.all((ratio > 3.3) & (ratio < 4.7))
    spread = area.std(axis=2) / area.mean(axis=2)
    assert spread.max() < 0.15
    # Square at scale 1, orientation 0: 16x16 pixels.
    assert area[0, -1, 0, 0, 0] == 256
    # Nothing touches the patch border (no clipping inside the bitmap).
    assert not table[..., 0, :].any() and not table[..., -1, :].any()


def test_registry():
    stand_ins = {"tetrominoes_synth", "multi_dsprites_synth", "clevr6_synth", "clevr10_synth"}
    assert stand_ins <= set(generators.GENERATORS)
    # A paper name is the official data: it never has a generator.
    assert not {"tetrominoes", "multi_dsprites", "clevr6", "clevr10"} & set(generators.GENERATORS)
    assert generators.GENERATORS["clevr6_synth"].kwargs == {"min_objects": 3, "max_objects": 6}
    assert generators.GENERATORS["clevr10_synth"].kwargs == {"min_objects": 3, "max_objects": 10}
    with pytest.raises(KeyError, match="generators exist for"):
        generators.get_spec("nope")
    ghost = generators.GeneratorSpec("lib.prepare.generators.no_such")
    with pytest.raises(ImportError, match="ghost"):
        generators.generate_range(ghost, "ghost", 0, 0, 1)
    tetrominoes = generators.get_spec("tetrominoes_synth")
    assert len(list(generators.generate_range(tetrominoes, "tetrominoes_synth", 0, 0, 2))) == 2


@pytest.mark.parametrize(
    "spec",
    [
        generators.GeneratorSpec("lib.prepare.generators.tetrominoes"),
        generators.GeneratorSpec(
            "lib.prepare.generators.clevr", {"height": 24, "width": 32}, indexable=True
        ),
    ],
)
def test_generate_range_is_a_slice_of_one_stream(spec):
    module = importlib.import_module(spec.module)
    full = list(module.generate(7, 3, **spec.kwargs))
    part = list(generators.generate_range(spec, "x", 3, 4, 7))
    assert len(part) == 3
    for a, b in zip(part, full[4:]):
        assert a["image"].tobytes() == b["image"].tobytes()
        assert a["mask"].tobytes() == b["mask"].tobytes()
        for key in a["factors"]:
            assert a["factors"][key].tobytes() == b["factors"][key].tobytes()
