"""Conversion of the official Objects Room and CATER (with masks) TFRecords."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch

from lib.data import make_dataset
from lib.prepare import convert_official, tfrecords
from lib.prepare.official import CATER_FRAMES
from tests.data.conftest import data_cfg
from tests.prepare.conftest import (
    _field,
    _masked_crc,
    bytes_feature,
    example_bytes,
    float_feature,
    load_tool,
    official_example,
    write_tfrecords,
)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _labels_by_loop(masks: np.ndarray) -> np.ndarray:
    """(E, H, W) 0/255 masks -> entity index per pixel (non-overlapping masks)."""
    out = np.zeros(masks.shape[1:], np.int64)
    for e in range(masks.shape[0]):
        out[masks[e] == 255] = e
    return out


# --- Objects Room -------------------------------------------------------------------------


def _objects_room_record(rng: np.random.Generator, num_objects: int, entities: int = 7):
    owner = np.zeros((64, 64), np.int64)  # 0 = sky
    owner[20:, :32] = 2  # wall, left half
    owner[20:, 32:] = 3  # wall, right half
    owner[40:, :] = 1  # floor
    for k in range(num_objects):
        r, c = rng.integers(5, 50, size=2)
        owner[r : r + 10, c : c + 10] = 4 + k
    masks = np.stack([(owner == e) * 255 for e in range(entities)]).astype(np.uint8)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    payload = official_example({"image": ("bytes", image), "mask": ("bytes", masks[..., None])})
    return payload, image, masks


def test_objects_room_conversion_merges_the_room_into_background(tmp_path):
    rng = np.random.default_rng(0)
    records = [_objects_room_record(rng, n) for n in (0, 1, 2, 3, 3, 2, 1)]
    src = write_tfrecords(str(tmp_path / "objects_room_train.tfrecords"), [r[0] for r in records])
    root = str(tmp_path / "root")
    argv = ["--dataset", "objects_room", "--tfrecords", src, "--root", root, "--test-size", "3"]
    assert load_tool("prepare_data").main([*argv, "--no-progress"]) == 0
    meta = json.load(open(os.path.join(root, "objects_room", "meta.json")))
    assert meta["official_format"] == "objects_room" and meta["num_test"] == 3
    assert "merged into 0" in meta["label_map"]
    cfg = data_cfg(root, INPUT__IMAGE_SIZE=64)
    full = make_dataset("objects_room", cfg, False)
    train, test = (
        make_dataset("objects_room_train", cfg, True),
        make_dataset("objects_room_test", cfg, False),
    )
    assert (len(full), len(train), len(test)) == (7, 4, 3)
    for i, (_, image, masks) in enumerate(records):
        got_image, got_mask = full[i]
        np.testing.assert_array_equal(_to_uint8(got_image), image)
        # Independent: entity per pixel, then sky/floor/walls (0..3) -> 0, object k -> k - 3.
        entity = _labels_by_loop(masks)
        expected = np.where(entity < 4, 0, entity - 3)
        np.testing.assert_array_equal(got_mask.numpy(), expected)
    assert torch.equal(test[0][1], full[4][1]) and torch.equal(train[3][0], full[3][0])
    assert int(full[0][1].max()) == 0 and int(full[3][1].max()) == 3


def test_objects_room_wrong_variant_names_file_and_feature(tmp_path):
    rng = np.random.default_rng(1)
    payload = _objects_room_record(rng, 2, entities=10)[0]  # a six_objects test-variant record
    src = write_tfrecords(str(tmp_path / "six.tfrecords"), [payload])
    with pytest.raises(tfrecords.TFRecordError, match=r"six\.tfrecords record 0: feature 'mask'"):
        convert_official("objects_room", src, str(tmp_path / "root"), progress=False)
    assert not os.path.exists(tmp_path / "root" / "objects_room")


# --- CATER ------------------------------------------------------------------------------------

T, E = 33, 11


def _raw_feature(array: np.ndarray) -> bytes:
    """Feature{bytes_list} holding ONE string of the array's bytes (CATER's layout)."""
    return _field(1, _field(1, np.ascontiguousarray(array, np.uint8).tobytes()))


def _cater_record(rng: np.random.Generator):
    image = rng.integers(0, 256, size=(T, 64, 64, 3), dtype=np.uint8)
    owner = np.zeros((T, 64, 64), np.int64)
    for t in range(T):
        for k in range(1, 1 + rng.integers(1, E)):
            r, c = rng.integers(0, 56, size=2)
            owner[t, r : r + 8, c : c + 8] = k
    masks = np.stack([(owner == e) * 255 for e in range(E)], axis=1).astype(np.uint8)  # (T,E,H,W)
    camera = rng.random((T, 4, 4)).astype(np.float32)
    positions = rng.random((E, T, 3)).astype(np.float32)  # stored (E, T, 3)
    payload = example_bytes(
        {
            "image": _raw_feature(image),
            "mask": _raw_feature(masks[..., None]),
            "camera_matrix": float_feature(camera),
            "object_positions": float_feature(positions),
        }
    )
    return payload, {"image": image, "masks": masks, "camera": camera, "positions": positions}


def _write_zlib(path: str, payloads: list[bytes]) -> str:
    """A ZLIB-compressed TFRecord file (TFRecordOptions compression 'ZLIB', as CATER's)."""
    stream = bytearray()
    for payload in payloads:
        length = struct.pack("<Q", len(payload))
        stream += length + struct.pack("<I", _masked_crc(length))
        stream += payload + struct.pack("<I", _masked_crc(payload))
    with open(path, "wb") as f:
        f.write(zlib.compress(bytes(stream)))
    return path


def test_cater_frames_from_zlib_shards_and_whole_video_test_split(tmp_path):
    rng = np.random.default_rng(2)
    videos = [_cater_record(rng) for _ in range(3)]
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_zlib(
        str(shards / "cater_with_masks_train.tfrecords-00000-of-00002"), [v[0] for v in videos[:2]]
    )
    _write_zlib(str(shards / "cater_with_masks_train.tfrecords-00001-of-00002"), [videos[2][0]])
    assert (
        tfrecords.compression_of(str(shards / "cater_with_masks_train.tfrecords-00001-of-00002"))
        == "zlib"
    )
    pattern = str(shards / "cater_with_masks_train.tfrecords-*-of-*")
    root = str(tmp_path / "root")
    # test_size 7 frames -> ceil(7 / 5) = 2 whole videos (10 frames) in the test part.
    convert_official("cater", pattern, root, test_size=7, progress=False)
    meta = json.load(open(os.path.join(root, "cater", "meta.json")))
    assert CATER_FRAMES == (0, 8, 16, 24, 32) and meta["frames_per_video"] == list(CATER_FRAMES)
    assert (meta["num_examples"], meta["num_train"], meta["num_test"]) == (15, 5, 10)
    assert meta["records_read"] == 3 and len(meta["source_files"]) == 2
    cfg = data_cfg(root, INPUT__IMAGE_SIZE=64)
    full = make_dataset("cater", cfg, False)
    assert len(make_dataset("cater_train", cfg, True)) == 5
    assert len(make_dataset("cater_test", cfg, False)) == 10
    for j in range(len(full)):
        video, t = videos[j // 5][1], CATER_FRAMES[j % 5]
        image, mask = full[j]
        np.testing.assert_array_equal(_to_uint8(image), video["image"][t])
        np.testing.assert_array_equal(mask.numpy(), _labels_by_loop(video["masks"][t]))
        factors = full.factors(j)
        np.testing.assert_array_equal(factors["camera_matrix"], video["camera"][t])
        np.testing.assert_array_equal(factors["object_positions"], video["positions"][:, t, :])


def test_cater_frames_option_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    payload, video = _cater_record(rng)
    src = _write_zlib(str(tmp_path / "one.tfrecords"), [payload])
    root = str(tmp_path / "root")
    convert_official("cater", src, root, test_size=1, progress=False, cater_frames=(3,))
    ds = make_dataset("cater", data_cfg(root, INPUT__IMAGE_SIZE=64), False)
    assert len(ds) == 1
    np.testing.assert_array_equal(_to_uint8(ds[0][0]), video["image"][3])
    with pytest.raises(ValueError, match="cater_frames"):
        convert_official("cater", src, str(tmp_path / "r2"), cater_frames=(33,), progress=False)
    # One byte per element instead of one string: a message naming file and feature.
    wrong = example_bytes(
        {
            "image": bytes_feature(video["image"]),
            "mask": _raw_feature(video["masks"][..., None]),
            "camera_matrix": float_feature(video["camera"]),
            "object_positions": float_feature(video["positions"]),
        }
    )
    bad = write_tfrecords(str(tmp_path / "bad.tfrecords"), [wrong])
    with pytest.raises(tfrecords.TFRecordError, match=r"bad\.tfrecords record 0: feature 'image'"):
        convert_official("cater", bad, str(tmp_path / "r3"), progress=False)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        convert_official("cater", str(tmp_path / "none-*"), str(tmp_path / "r4"), progress=False)
