"""lib.prepare.writer, imported directly: the .npy files byte for byte, meta.json, the atomic
guarantee (a failure leaves no half-written folder, an overwrite keeps the old one until the new
one is complete), stale temporaries, and errors naming the example, key and shape at fault."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from lib.errors import DatasetExistsError
from lib.prepare.writer import DatasetWriter, _NpyAppender, remove_stale_temps, storage_dtype


def _listing(root) -> list[str]:
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def _example(seed: int, h: int = 4, w: int = 5):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (h, w), dtype=np.uint8)
    return image, mask


def test_npy_appender_bytes_are_a_v1_npy_file(tmp_path):
    path = str(tmp_path / "a.npy")
    rows = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    appender = _NpyAppender(path, np.uint8, (2, 3))
    appender.append(rows[:2])
    appender.append(rows[2:])
    appender.close()
    appender.close()  # a second close is a no-op
    # Written by hand: magic, version 1.0, header length 246 (256 bytes in all), the dict
    # padded with spaces and ended by a newline, then the rows in C order.
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': (5, 2, 3)}"
    header = b"\x93NUMPY\x01\x00" + struct.pack("<H", 246) + (text.ljust(245) + "\n").encode()
    assert len(header) == 256
    data = open(path, "rb").read()
    assert data == header + bytes(range(30))
    np.testing.assert_array_equal(np.load(path), rows)


def test_npy_appender_converts_rows_to_its_dtype(tmp_path):
    path = str(tmp_path / "f.npy")
    appender = _NpyAppender(path, np.float32, (2,))
    appender.append(np.array([[1, 2], [3, 4]], np.int64))
    appender.close()
    out = np.load(path)
    assert out.dtype == np.float32 and out.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert open(path, "rb").read()[256:] == np.array([1, 2, 3, 4], "<f4").tobytes()


@pytest.mark.parametrize(
    "dtype, stored",
    [(np.uint8, np.uint8), (np.float32, np.float32), (np.int64, np.float32), (bool, np.float32)],
)
def test_storage_dtype(dtype, stored):
    assert storage_dtype(np.zeros(2, dtype)) == np.dtype(stored)


def test_committed_folder_holds_the_examples_and_meta(tmp_path):
    root = str(tmp_path / "root")
    examples = [_example(seed) for seed in range(3)]
    colors = np.array([[1, 2], [3, 4], [5, 6]], np.int64)
    shapes = np.array([[0, 1], [2, 0], [1, 1]], np.uint8)
    with DatasetWriter(root, "ds") as writer:
        image, mask = examples[0]
        writer.add(image, mask, {"color": colors[0], "shape": shapes[0]})
        writer.add_many(
            np.stack([e[0] for e in examples[1:]]),
            np.stack([e[1] for e in examples[1:]]),
            {"color": colors[1:], "shape": shapes[1:]},
        )
        path = writer.commit({"source": "test", "crop": [0, 4, 1, 5]})
    assert path == os.path.join(root, "ds") and _listing(root) == ["ds"]
    np.testing.assert_array_equal(
        np.load(os.path.join(path, "images.npy")), [e[0] for e in examples]
    )
    np.testing.assert_array_equal(
        np.load(os.path.join(path, "masks.npy")), [e[1] for e in examples]
    )
    color = np.load(os.path.join(path, "factors", "color.npy"))
    assert color.dtype == np.float32 and color.tolist() == colors.astype(float).tolist()
    shape = np.load(os.path.join(path, "factors", "shape.npy"))
    assert shape.dtype == np.uint8 and shape.tolist() == shapes.tolist()
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert meta == {
        "source": "test",
        "crop": [0, 4, 1, 5],
        "format_version": 1,
        "num_examples": 3,
        "image_shape": [4, 5, 3],
        "factors": {
            "color": {"shape": [2], "dtype": "float32"},
            "shape": {"shape": [2], "dtype": "uint8"},
        },
    }
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_exception_in_the_block_leaves_nothing(tmp_path):
    image, mask = _example(0)
    with pytest.raises(KeyboardInterrupt):
        with DatasetWriter(str(tmp_path), "x") as writer:
            writer.add(image, mask, {"f": np.zeros(2, np.float32)})
            assert _listing(tmp_path)[0].startswith(".x.tmp-")  # written under a temp name
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_failed_overwrite_keeps_the_old_folder_byte_exact(tmp_path):
    old = tmp_path / "x"
    os.makedirs(old)
    (old / "meta.json").write_bytes(b'{"old": true}')
    (old / "images.npy").write_bytes(b"old bytes")
    image, mask = _example(0)
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(str(tmp_path), "x", overwrite=True) as writer:
            writer.add(image, mask, {})
            raise RuntimeError("boom")
    assert _listing(tmp_path) == ["x"] and _listing(old) == ["images.npy", "meta.json"]
    assert (old / "meta.json").read_bytes() == b'{"old": true}'
    assert (old / "images.npy").read_bytes() == b"old bytes"
    # A committed overwrite replaces it and leaves no .old- folder behind.
    with DatasetWriter(str(tmp_path), "x", overwrite=True) as writer:
        writer.add(image, mask, {})
        writer.commit({"source": "test"})
    assert _listing(tmp_path) == ["x"] and not (old / "images.npy").read_bytes().startswith(b"old")
    np.testing.assert_array_equal(np.load(old / "images.npy"), image[None])


def test_existing_folder_without_overwrite_is_refused_untouched(tmp_path):
    os.makedirs(tmp_path / "x")
    with pytest.raises(DatasetExistsError, match=rf"{tmp_path / 'x'} already exists.*--overwrite"):
        with DatasetWriter(str(tmp_path), "x"):
            pass
    assert _listing(tmp_path) == ["x"] and _listing(tmp_path / "x") == []


def test_commit_errors_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match=rf"no examples to write for {tmp_path / 'x'}"):
        with DatasetWriter(str(tmp_path), "x") as writer:
            writer.commit({"source": "test"})
    assert _listing(tmp_path) == []
    image, mask = _example(0)  # 4x5 frames
    with pytest.raises(ValueError, match=r"crop \[0, 5, 0, 5\] does not fit the 4x5 frames of"):
        with DatasetWriter(str(tmp_path), "x") as writer:
            writer.add(image, mask, {})
            writer.commit({"source": "test", "crop": [0, 5, 0, 5]})
    assert _listing(tmp_path) == []


def test_bad_examples_name_the_example_key_and_shape(tmp_path):
    image, mask = _example(0)
    with DatasetWriter(str(tmp_path), "x") as writer:
        writer.add(image, mask, {"f": np.zeros(2, np.float32)})
        with pytest.raises(
            ValueError, match=r"example 1: images must be uint8 \(n, H, W, 3\), got float32"
        ):
            writer.add(image.astype(np.float32), mask, {"f": np.zeros(2)})
        with pytest.raises(
            ValueError, match=r"example 1: masks must be uint8 \(1, 4, 5\), got uint8 \(1, 3, 5\)"
        ):
            writer.add(image, mask[:3], {"f": np.zeros(2)})
        with pytest.raises(ValueError, match=r"example 1: images has shape \(5, 4, 3\), but"):
            writer.add(
                np.zeros((5, 4, 3), np.uint8), np.zeros((5, 4), np.uint8), {"f": np.zeros(2)}
            )
        with pytest.raises(ValueError, match=r"example 1: factors \['g'\], but earlier .*\['f'\]"):
            writer.add(image, mask, {"g": np.zeros(2)})
        with pytest.raises(ValueError, match=r"example 1: factors/f has shape \(3,\), but"):
            writer.add(image, mask, {"f": np.zeros(3)})
        with pytest.raises(ValueError, match=r"examples 1..2: factor 'f' has 1 rows for 2"):
            writer.add_many(np.stack([image] * 2), np.stack([mask] * 2), {"f": np.zeros((1, 2))})
        assert writer.count == 1
    assert _listing(tmp_path) == []  # never committed


def test_remove_stale_temps_removes_only_this_datasets_temporaries(tmp_path):
    for name in (".x.tmp-abc", ".x.old-def", ".x2.tmp-ghi", ".y.tmp-jkl", "x"):
        os.makedirs(tmp_path / name / "factors")
    removed = remove_stale_temps(str(tmp_path), "x")
    assert removed == [str(tmp_path / ".x.tmp-abc"), str(tmp_path / ".x.old-def")]
    assert _listing(tmp_path) == [".x2.tmp-ghi", ".y.tmp-jkl", "x"]


def test_a_rejected_example_writes_no_row(tmp_path):
    # The factor's shape is wrong, and images and masks are fine: none of the three may
    # get the example's rows, or the files would disagree with meta.json.
    image, mask = _example(0)
    with DatasetWriter(str(tmp_path), "x") as writer:
        writer.add(image, mask, {"f": np.zeros(2, np.float32)})
        with pytest.raises(ValueError, match=r"example 1: factors/f has shape \(3,\)"):
            writer.add(image, mask, {"f": np.zeros(3)})
        writer.add(image, mask, {"f": np.ones(2)})
        path = writer.commit({"source": "test"})
    assert json.load(open(os.path.join(path, "meta.json")))["num_examples"] == 2
    np.testing.assert_array_equal(np.load(os.path.join(path, "images.npy")), [image, image])
    np.testing.assert_array_equal(np.load(os.path.join(path, "masks.npy")), [mask, mask])
    assert np.load(os.path.join(path, "factors", "f.npy")).tolist() == [[0, 0], [1, 1]]
