"""Read TensorFlow (V2 format) checkpoints without TensorFlow.

A checkpoint ``<prefix>`` is ``<prefix>.index`` plus data shards
``<prefix>.data-<i>-of-<n>`` (five-digit numbers). The index is a LevelDB-style sorted table:

- the last 48 bytes are the footer: two block handles (metaindex, index; each a varint64
  offset and size) padded to 40 bytes, then the 8-byte magic number 0xdb4775248b80fb57;
- each block is followed by a 5-byte trailer: the compression type (TensorFlow writes 0, no
  compression) and the masked CRC-32C of the block contents plus that type byte;
- a block holds key/value entries with prefix-compressed keys (varint32 shared length,
  unshared length, value length, then the unshared key bytes and the value), followed by
  restart offsets (uint32 each) and their count (uint32);
- the index block maps separator keys to the handles of the data blocks; the data blocks map
  each tensor name to a serialised ``BundleEntryProto`` (dtype, shape, shard_id, offset, size,
  masked CRC-32C of the bytes), and the empty key to the ``BundleHeaderProto`` (num_shards,
  endianness, version).

Tensor bytes are raw, in C order, at ``offset`` in their shard. Every block and every tensor
read is checked against its CRC. Any problem raises ``TFCheckpointError`` with one line that
names the file at fault.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from lib.utils.protobuf import iter_fields, masked_crc32c, read_varint

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
HEADER_KEY = b""


# TensorFlow DataType enum -> name; the readable ones are NumPy's names (bfloat16 is read as
# uint16, its 16 high float32 bits, and widened), string and variant are not readable.
_DTYPE_NAMES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    19: "float16",
    21: "variant",
    22: "uint32",
    23: "uint64",
}


class TFCheckpointError(ValueError):
    """A TensorFlow checkpoint is missing, truncated, corrupt or not a checkpoint."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies (a parsed ``BundleEntryProto``): its ``dtype`` (TensorFlow's enum),
    ``shape``, data shard, byte ``offset`` and ``size`` there, the masked CRC-32C stored for the
    bytes, and whether the variable is ``sliced`` (partitioned; not supported)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    sliced: bool = False

    @property
    def dtype_name(self) -> str:
        """Readable dtype, e.g. ``float32``."""
        return _DTYPE_NAMES.get(self.dtype, f"dtype{self.dtype}")


# --- protobuf wire format --------------------------------------------------------------------


def _fields(buf) -> dict[int, int | memoryview]:
    """Field number -> last value of a message (fixed32 as int, length-delimited as a view)."""
    return {n: struct.unpack("<I", v)[0] if w == 5 else v for n, w, v in iter_fields(buf)}


def _parse_shape(buf) -> tuple[int, ...]:
    # TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1); bool unknown_rank = 3.
    dims = []
    for number, _, value in iter_fields(buf):
        if number == 2:
            dims.append(_fields(value).get(1, 0))
        elif number == 3 and value:
            raise ValueError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    # BundleEntryProto: dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6 (fixed32),
    # slices 7 (present only for partitioned variables).
    f = _fields(buf)
    shape = _parse_shape(f.get(2, b""))
    return TensorEntry(name, f.get(1, 0), shape, *(f.get(i, 0) for i in (3, 4, 5, 6)), 7 in f)


# --- the sorted-table index ------------------------------------------------------------------


def _read_block(data: bytes, offset: int, size: int) -> bytes:
    """Contents of the block at (offset, size), CRC-checked."""
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data) - FOOTER_SIZE:
        raise ValueError(f"truncated: block at {offset}+{size} runs past the end")
    contents = data[offset : offset + size]
    block_type = data[offset + size]
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if stored != masked_crc32c(data[offset : offset + size + 1]):
        raise ValueError(f"CRC mismatch in the block at byte {offset} (corrupt file)")
    if block_type != 0:
        raise ValueError(
            f"block at byte {offset} is compressed (type {block_type}); only uncompressed "
            "tables (what TensorFlow >= 1.2 writes) are supported"
        )
    return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) of a table block, undoing the key prefix compression."""
    if len(block) < 4:
        raise ValueError("block shorter than its restart count")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError("block restart array larger than the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos, limit)
        unshared, pos = read_varint(block, pos, limit)
        value_length, pos = read_varint(block, pos, limit)
        if shared > len(key) or pos + unshared + value_length > limit:
            raise ValueError("malformed block entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_length]
        pos += value_length


def _block_handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos, len(buf))
    size, pos = read_varint(buf, pos, len(buf))
    return offset, size, pos


def _table_items(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """All (key, value) pairs of a sorted table file's data blocks, in key order."""
    if len(data) < FOOTER_SIZE:
        raise ValueError(f"truncated or not a checkpoint index: {len(data)} bytes")
    footer = data[-FOOTER_SIZE:]
    magic = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)[0]
    if magic != TABLE_MAGIC:
        raise ValueError("not a TensorFlow checkpoint index (bad magic number; truncated?)")
    _, _, pos = _block_handle(footer)  # metaindex: unused (no filters)
    index_offset, index_size, _ = _block_handle(footer, pos)
    for _, handle in _block_entries(_read_block(data, index_offset, index_size)):
        offset, size, _ = _block_handle(handle)
        yield from _block_entries(_read_block(data, offset, size))


# --- the checkpoint --------------------------------------------------------------------------


def resolve_prefix(path: str) -> str:
    """The checkpoint prefix for a prefix, an ``.index`` file or a checkpoint folder.

    A folder is resolved through its ``checkpoint`` file (``model_checkpoint_path``) or, failing
    that, its single ``*.index`` file.

    Raises:
        TFCheckpointError: nothing at ``path`` looks like a checkpoint.
    """
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.isfile(state):
            with open(state, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("model_checkpoint_path:"):
                        name = line.split(":", 1)[1].strip().strip('"')
                        return name if os.path.isabs(name) else os.path.join(path, name)
        indexes = sorted(n for n in os.listdir(path) if n.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(path, indexes[0][: -len(".index")])
        raise TFCheckpointError(
            f"{path}: a folder with {len(indexes)} .index files and no 'checkpoint' file; "
            "give the checkpoint prefix"
        )
    if not os.path.isfile(path + ".index"):
        raise TFCheckpointError(f"{path}.index does not exist (give the checkpoint prefix)")
    return path


class TFCheckpoint:
    """A TensorFlow V2 checkpoint opened for reading.

    Args:
        path: the prefix (``.../model.ckpt``), its ``.index`` file or the checkpoint folder.

    Attributes:
        prefix: the resolved prefix.
        entries: name -> ``TensorEntry``, in the index's (sorted) order.
        num_shards: number of data shards.

    Raises:
        TFCheckpointError: the index is missing, truncated, corrupt or of another format.
    """

    def __init__(self, path: str) -> None:
        self.prefix = resolve_prefix(path)
        index = self.prefix + ".index"
        with open(index, "rb") as f:
            data = f.read()
        self.entries: dict[str, TensorEntry] = {}
        header = None
        try:
            for key, value in _table_items(data):
                if key == HEADER_KEY:
                    header = _fields(value)  # BundleHeaderProto
                    continue
                name = key.decode("utf-8")
                self.entries[name] = _parse_entry(name, value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TFCheckpointError(f"{index}: {exc}") from exc
        if header is None:
            raise TFCheckpointError(f"{index}: no bundle header (not a TensorFlow V2 checkpoint)")
        # num_shards 1; endianness 2 (0 little, 1 big); version 3.
        self.num_shards, self.big_endian = header.get(1, 1), header.get(2, 0) == 1

    def shard_path(self, shard_id: int) -> str:
        """File name of data shard ``shard_id``."""
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def variables(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every stored tensor."""
        return {name: entry.shape for name, entry in self.entries.items()}

    def read(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array (CRC-checked).

        Args:
            name: a variable name from ``entries``.

        Returns:
            The array in its stored shape; bfloat16 is returned as float32.

        Raises:
            KeyError: no such variable.
            TFCheckpointError: unsupported dtype or partitioned variable, missing or truncated
                shard, size or CRC mismatch.
        """
        entry = self.entries[name]
        index = self.prefix + ".index"
        if entry.sliced:
            raise TFCheckpointError(f"{index}: {name} is a partitioned variable (not supported)")
        if entry.dtype not in _DTYPE_NAMES or entry.dtype_name in ("string", "variant"):
            raise TFCheckpointError(f"{index}: {name} has unsupported dtype {entry.dtype_name}")
        bfloat16 = entry.dtype_name == "bfloat16"
        dtype = np.dtype("uint16" if bfloat16 else entry.dtype_name)
        dtype = dtype.newbyteorder(">" if self.big_endian else "<")
        count = math.prod(entry.shape)
        if count * dtype.itemsize != entry.size:
            raise TFCheckpointError(
                f"{index}: {name} has {entry.size} bytes for shape {entry.shape} of "
                f"{entry.dtype_name}"
            )
        shard = self.shard_path(entry.shard_id)
        if not os.path.isfile(shard):
            raise TFCheckpointError(f"{shard} does not exist (data shard of {index})")
        with open(shard, "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.size)
        if len(raw) != entry.size:
            raise TFCheckpointError(
                f"{shard}: truncated ({name} needs bytes {entry.offset}..."
                f"{entry.offset + entry.size}, the file ends first)"
            )
        if entry.crc32c != masked_crc32c(raw):
            raise TFCheckpointError(f"{shard}: CRC mismatch for {name} (corrupt file)")
        array = np.frombuffer(raw, dtype=dtype).reshape(entry.shape)
        if bfloat16:
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(dtype.newbyteorder("="), copy=True)

    def read_many(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Several tensors: name -> array (see ``read``)."""
        return {name: self.read(name) for name in names}
