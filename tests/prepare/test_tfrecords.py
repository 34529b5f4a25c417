"""The TFRecord reader against independently parsed bytes and known facts of the real file."""

import gzip
import os
import struct

import numpy as np
import pytest

from lib.prepare import tfrecords
from lib.prepare.generators import tetrominoes as tet
from tests.prepare.conftest import (
    _field,
    _varint,
    bytes_feature,
    example_bytes,
    float_feature,
    write_tfrecords,
)


def _protobuf_examples(path):
    """Decode with the ``tfrecord`` package + protobuf, joining byte lists (zero bytes kept)."""
    reader = pytest.importorskip("tfrecord.reader")
    example_pb2 = pytest.importorskip("tfrecord.example_pb2")
    out = []
    for view in reader.tfrecord_iterator(path, compression_type="gzip"):
        example = example_pb2.Example()
        example.ParseFromString(bytes(view))  # copy now: the iterator reuses its buffer
        feats = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = getattr(feature, kind).value
            if kind == "bytes_list":
                feats[name] = np.frombuffer(b"".join(values), np.uint8)
            else:
                feats[name] = np.array(values, np.float32)
        out.append(feats)
    return out


def test_reader_matches_protobuf_on_real_file(tetrominoes_mini):
    ours = list(tfrecords.read_official(tetrominoes_mini, "tetrominoes"))
    ref = _protobuf_examples(tetrominoes_mini)
    assert len(ours) == len(ref) == 10
    for a, b in zip(ours, ref):
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_array_equal(a[name].ravel(), b[name])


def test_real_file_known_facts(tetrominoes_mini):
    records = list(tfrecords.read_official(tetrominoes_mini, "tetrominoes"))
    first = records[0]
    assert first["image"].shape == (35, 35, 3) and first["mask"].shape == (4, 35, 35, 1)
    np.testing.assert_array_equal(first["x"], [0, 22, 11, 24])
    np.testing.assert_array_equal(first["shape"], [0, 6, 5, 15])
    for rec in records:
        # Zero bytes survive (a NumPy 'S1' conversion would drop them): black background.
        assert (rec["image"] == 0).sum() > 3 * 900
        assert set(np.unique(rec["mask"])) == {0, 255}
        per_entity = (rec["mask"][..., 0] > 0).sum(axis=(1, 2))
        assert per_entity[1:].tolist() == [100, 100, 100]  # 4 blocks of 5x5 pixels
        assert per_entity.sum() == 35 * 35  # masks partition the image


def test_renderer_reproduces_real_examples(tetrominoes_mini):
    # An independent model of the data (lib/prepare/generators/tetrominoes.py) rebuilds every
    # official image byte for byte from its factors.
    for rec in tfrecords.read_official(tetrominoes_mini, "tetrominoes"):
        image, label = tet.render(rec["x"], rec["y"], rec["shape"], rec["color"])
        np.testing.assert_array_equal(image, rec["image"])
        np.testing.assert_array_equal(label, rec["mask"][..., 0].argmax(0))


def test_handbuilt_example_decodes_like_protobuf():
    example_pb2 = pytest.importorskip("tfrecord.example_pb2")
    img = np.array([0, 5, 0, 255, 0], np.uint8)
    payload = example_bytes({"image": bytes_feature(img), "v": float_feature([1.5, -2.0])})
    ex = example_pb2.Example()
    ex.ParseFromString(payload)
    assert b"".join(ex.features.feature["image"].bytes_list.value) == img.tobytes()
    parsed = tfrecords.parse_example(payload)
    np.testing.assert_array_equal(parsed["image"][1], img)
    np.testing.assert_array_equal(parsed["v"][1], [1.5, -2.0])


def test_parse_general_lists():
    # Hand-encoded (conftest's wire-format writer): multi-byte strings, packed int64 varints
    # in two's complement, and unpacked floats (one fixed32 field per element).
    strings = _field(1, b"".join(_field(1, v) for v in (b"ab", b"", b"\x00c")))
    ints = _field(3, _field(1, b"".join(_varint(v % 2**64) for v in (1, -3, 2**40))))
    floats = _field(2, b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.5, -2.0)))
    parsed = tfrecords.parse_example(example_bytes({"s": strings, "i": ints, "f": floats}))
    assert parsed["s"] == ("bytes", [b"ab", b"", b"\x00c"])
    assert parsed["i"][0] == "int64"
    np.testing.assert_array_equal(parsed["i"][1], [1, -3, 2**40])
    assert parsed["f"][0] == "float"
    np.testing.assert_array_equal(parsed["f"][1], [1.5, -2.0])


def test_crc_mismatch_is_detected(tmp_path):
    path = str(tmp_path / "x.tfrecords")
    write_tfrecords(path, [b"hello", b"world"], compress=False)
    data = bytearray(open(path, "rb").read())
    data[12 + 5 + 4 + 12 + 2] ^= 0xFF  # a byte of the second payload
    open(path, "wb").write(bytes(data))
    with pytest.raises(tfrecords.TFRecordError, match=r"record 1 has a bad data CRC"):
        list(tfrecords.iter_records(path))


def test_truncated_gzip_file_names_file(tmp_path, tetrominoes_mini):
    path = str(tmp_path / "cut.tfrecords")
    raw = gzip.decompress(open(tetrominoes_mini, "rb").read())
    open(path, "wb").write(gzip.compress(raw[: len(raw) - 100]))
    with pytest.raises(tfrecords.TFRecordError, match=r"cut.tfrecords: record 9 is truncated"):
        list(tfrecords.iter_records(path))


def test_wrong_format_is_clear_error(tetrominoes_mini):
    with pytest.raises(tfrecords.TFRecordError, match=r"clevr_with_masks.*right file"):
        next(tfrecords.read_official(tetrominoes_mini, "clevr_with_masks"))
    with pytest.raises(FileNotFoundError):
        list(tfrecords.iter_records(os.path.join("no", "such.tfrecords")))
