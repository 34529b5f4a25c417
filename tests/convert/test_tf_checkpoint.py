"""The pure-Python reader against a checkpoint written by TensorFlow's own Saver."""

import os
import shutil
import struct

import numpy as np
import pytest

from lib.convert.tf_checkpoint import TFCheckpoint, TFCheckpointError, _table_items
from lib.utils.protobuf import masked_crc32c
from tests.convert.conftest import FIXTURES, PREFIX, TETROMINOES

DATA = PREFIX + ".data-00000-of-00001"


def test_reader_returns_exactly_the_values_tensorflow_wrote(tf_values):
    checkpoint = TFCheckpoint(PREFIX)
    assert sorted(checkpoint.entries) == sorted(tf_values)
    assert checkpoint.num_shards == 1
    got = checkpoint.read_many(checkpoint.entries)
    for name, expected in tf_values.items():
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    assert got["global_step"].dtype == np.int64 and int(got["global_step"]) == 123456


def test_every_common_dtype_and_shape():
    prefix = os.path.join(FIXTURES, "reader", "model.ckpt")
    checkpoint = TFCheckpoint(prefix)
    dtypes = {entry.dtype_name for entry in checkpoint.entries.values()}
    assert dtypes == {
        "float32", "float64", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool"
    }  # fmt: skip
    with np.load(os.path.join(FIXTURES, "reader", "values.npz")) as data:
        assert sorted(data.files) == sorted(checkpoint.entries)
        for name in data.files:
            got, expected = checkpoint.read(name), data[name]
            assert got.dtype == expected.dtype and got.shape == expected.shape, name
            np.testing.assert_array_equal(got, expected, err_msg=name)


def _varint(value):
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _block(items, restart_interval=3):
    """A table block written from the format description (LevelDB's)."""
    body, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(body))
        body += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        body += key[shared:] + value
        previous = key
    body += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(body)


def _table(blocks_of_items):
    data, index_items = bytearray(), []
    for items in blocks_of_items:
        block = _block(items) + b"\x00"
        handle = _varint(len(data)) + _varint(len(block) - 1)
        data += block + struct.pack("<I", masked_crc32c(block))
        index_items.append((items[-1][0], handle))
    index = _block(index_items, restart_interval=1) + b"\x00"
    index_handle = _varint(len(data)) + _varint(len(index) - 1)
    data += index + struct.pack("<I", masked_crc32c(index))
    meta = _varint(0) + _varint(0)
    footer = (meta + index_handle).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    return bytes(data + footer)


def test_table_with_several_data_blocks_and_restarts():
    # TensorFlow's blocks hold 256 KiB, so real IODINE indexes have one data block; this covers
    # the general layout (several blocks, shared key prefixes across restart points).
    keys = [f"scope/layer_{i:02d}/w".encode() for i in range(11)]
    blocks = [[(k, b"v" + k) for k in keys[:4]], [(k, b"v" + k) for k in keys[4:]]]
    assert list(_table_items(_table(blocks))) == [(k, b"v" + k) for k in keys]


@pytest.mark.parametrize("path", [PREFIX, PREFIX + ".index", TETROMINOES])
def test_prefix_index_file_and_folder_resolve_to_the_same_checkpoint(path):
    assert TFCheckpoint(path).prefix == PREFIX


def _copy(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(TETROMINOES, folder)
    return str(folder / "model.ckpt")


def _one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert "\n" not in message
    assert path in message
    return message


@pytest.mark.parametrize("keep", [0, 10, 47, 0.5, -1])
def test_truncated_index_is_one_line_naming_it(tmp_path, keep):
    prefix = _copy(tmp_path)
    index = prefix + ".index"
    with open(index, "rb") as f:
        data = f.read()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    with open(index, "wb") as f:
        f.write(data[:cut])
    with pytest.raises(TFCheckpointError) as exc_info:
        TFCheckpoint(prefix)
    _one_line_naming(exc_info, index)


def test_truncated_data_shard_is_one_line_naming_it(tmp_path):
    prefix = _copy(tmp_path)
    with open(prefix + ".data-00000-of-00001", "r+b") as f:
        f.truncate(os.path.getsize(DATA) // 2)
    checkpoint = TFCheckpoint(prefix)
    last = max(checkpoint.entries.values(), key=lambda e: e.offset)
    with pytest.raises(TFCheckpointError) as exc_info:
        checkpoint.read(last.name)
    message = _one_line_naming(exc_info, prefix + ".data-00000-of-00001")
    assert "truncated" in message and last.name in message


def test_corrupt_data_fails_the_crc(tmp_path):
    prefix = _copy(tmp_path)
    checkpoint = TFCheckpoint(prefix)
    entry = checkpoint.entries["encoder_net/cnn/conv_net_2d/conv_2d_1/w"]
    with open(prefix + ".data-00000-of-00001", "r+b") as f:
        f.seek(entry.offset + 100)
        byte = f.read(1)
        f.seek(entry.offset + 100)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(TFCheckpointError, match="CRC mismatch") as exc_info:
        checkpoint.read(entry.name)
    _one_line_naming(exc_info, prefix + ".data-00000-of-00001")
    # Neighbouring tensors are untouched and still read.
    checkpoint.read("encoder_net/cnn/conv_net_2d/conv_2d_1/b")


def test_corrupt_index_block_fails_the_crc(tmp_path):
    prefix = _copy(tmp_path)
    with open(prefix + ".index", "r+b") as f:
        f.seek(30)
        byte = f.read(1)
        f.seek(30)
        f.write(bytes([byte[0] ^ 0x80]))
    with pytest.raises(TFCheckpointError, match="CRC mismatch") as exc_info:
        TFCheckpoint(prefix)
    _one_line_naming(exc_info, prefix + ".index")


@pytest.mark.parametrize(
    "content",
    [
        b"model_checkpoint_path: 'x'\n" * 10,  # a text file
        b"\x89PNG\r\n\x1a\n" + bytes(200),  # another binary format
        np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    ],
)
def test_foreign_file_is_one_line_naming_it(tmp_path, content):
    index = tmp_path / "foreign.index"
    index.write_bytes(content)
    with pytest.raises(TFCheckpointError) as exc_info:
        TFCheckpoint(str(index))
    _one_line_naming(exc_info, str(index))


def test_missing_checkpoint_and_missing_shard(tmp_path):
    with pytest.raises(TFCheckpointError) as exc_info:
        TFCheckpoint(str(tmp_path / "nothing" / "model.ckpt"))
    _one_line_naming(exc_info, "nothing/model.ckpt.index")
    prefix = _copy(tmp_path)
    os.remove(prefix + ".data-00000-of-00001")
    checkpoint = TFCheckpoint(prefix)
    with pytest.raises(TFCheckpointError) as exc_info:
        checkpoint.read("global_step")
    _one_line_naming(exc_info, prefix + ".data-00000-of-00001")
