"""Reader for the official ``multi_object_datasets`` TFRecord files, without TensorFlow.

Records are ``uint64 length | uint32 masked_crc32c(length) | payload | uint32 masked_crc``,
each payload a ``tf.train.Example`` whose ``image`` and ``mask`` hold ONE BYTE PER ELEMENT: the
protobuf library would make a Python object per pixel (NumPy's ``bytes`` turns zeros into
``b""``), so the wire format is parsed here, such a list being ``0x0A 0x01 <byte>`` repeated.
Every record is checked against ``OFFICIAL_FORMATS``: a file of another dataset fails naming
the file, the feature and the expected shape.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from lib.errors import DatasetError
from lib.utils.protobuf import ProtobufError, iter_fields, masked_crc32c, read_varint

_MAX_RECORD_BYTES = 1 << 31  # far above any official record (CLEVR: ~3.2 MB)
# cater_with_masks.py: videos of 33 frames of 64x64, 11 entities.
CATER_FRAMES_PER_VIDEO = 33
CATER_ENTITIES = 11


class FeatureSpec(NamedTuple):
    """An expected feature: ``kind`` "bytes" (one byte per element, decoded to uint8), "raw"
    (ONE byte string holding the array, ``decode_raw``: CATER) or "float" (float32), and the
    shape the official reader gives the decoded array."""

    kind: str
    shape: tuple[int, ...]


def _format(image, mask, floats=(), byte_lists=(), kind="bytes") -> dict[str, FeatureSpec]:
    spec = {"image": FeatureSpec(kind, image), "mask": FeatureSpec(kind, mask)}
    spec.update((name, FeatureSpec("float", shape)) for name, shape in floats)
    spec.update((name, FeatureSpec("bytes", shape)) for name, shape in byte_lists)
    return spec


def _per_entity(names: str, e: int) -> list[tuple[str, tuple[int]]]:
    return [(name, (e,)) for name in names.split()]


_T, _E = CATER_FRAMES_PER_VIDEO, CATER_ENTITIES
# Official file kind -> its features, shapes as the official readers decode them. The
# Multi-dSprites mask is stored (H, W, E, 1) (the official reader transposes it); CATER's
# object_positions (E, T, 3). Objects Room: entities sky, floor, two wall halves, 3 objects.
OFFICIAL_FORMATS: dict[str, dict[str, FeatureSpec]] = {
    "tetrominoes": _format(
        (35, 35, 3), (4, 35, 35, 1), [("color", (4, 3)), *_per_entity("x y shape visibility", 4)]
    ),
    "multi_dsprites_colored_on_grayscale": _format(
        (64, 64, 3),
        (64, 64, 6, 1),
        [("color", (6, 3)), *_per_entity("x y shape visibility orientation scale", 6)],
    ),
    "clevr_with_masks": _format(
        (240, 320, 3),
        (11, 240, 320, 1),
        [("pixel_coords", (11, 3)), *_per_entity("x y z rotation visibility", 11)],
        _per_entity("size material shape color", 11),
    ),
    "objects_room": _format((64, 64, 3), (7, 64, 64, 1)),
    "cater_with_masks": _format(
        (_T, 64, 64, 3),
        (_T, _E, 64, 64, 1),
        [("camera_matrix", (_T, 4, 4)), ("object_positions", (_E, _T, 3))],
        kind="raw",
    ),
}


class TFRecordError(DatasetError):
    """A TFRecord file that is corrupt, truncated or of another dataset than expected."""


class _ZlibReader:
    """Read-only file object over a zlib stream (TFRecordOptions ZLIB: CATER's files)."""

    def __init__(self, path: str, mode: str):
        self._file = open(path, "rb")
        self._inflate = zlib.decompressobj()
        self._buffer = bytearray()

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size and not self._inflate.eof:
            chunk = self._file.read(1 << 20)
            try:
                self._buffer += self._inflate.decompress(chunk) if chunk else self._inflate.flush()
            except zlib.error as exc:
                raise OSError(f"corrupt ZLIB stream ({exc})") from exc
            if not chunk:
                break
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def close(self) -> None:
        self._file.close()


def compression_of(path: str) -> str:
    """``"gzip"`` (the multi_object_datasets files), ``"zlib"`` (CATER) or ``"none"``, from
    the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    # A zlib stream (deflate, 32K window: 0x78) whose header and first block inflate, which a
    # raw TFRecord (a little-endian length) will not.
    with contextlib.suppress(zlib.error):
        if head[:1] == b"\x78" and zlib.decompressobj().decompress(head) is not None:
            return "zlib"
    return "none"


def iter_records(path: str) -> Iterator[bytes]:
    """Yield the payloads of a TFRecord file (GZIP, ZLIB or not compressed), in file order,
    checking both CRCs of every record.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TFRecordError: a truncated record, a CRC mismatch or a corrupt stream; the message
            names the file and the record index.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFRecord file {path} does not exist")
    opener = {"gzip": gzip.open, "zlib": _ZlibReader, "none": open}[compression_of(path)]
    with contextlib.closing(opener(path, "rb")) as f:
        for index in itertools.count():
            try:
                header = f.read(12)
                if not header:
                    return
                length, length_crc = struct.unpack("<QI", header.ljust(12, b"\0"))
                # Checked before reading: a garbage length must not be allocated.
                if (
                    len(header) < 12
                    or length > _MAX_RECORD_BYTES
                    or masked_crc32c(header[:8]) != length_crc
                ):
                    raise TFRecordError(
                        f"{path}: record {index} has a bad header (truncated or corrupt file, or "
                        "not a TFRecord file)"
                    )
                payload, footer = f.read(length), f.read(4)
            except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
                raise TFRecordError(f"{path}: cannot read record {index}: {exc}") from exc
            if len(payload) < length or len(footer) < 4:
                raise TFRecordError(
                    f"{path}: record {index} is truncated ({len(payload)} of {length} bytes)"
                )
            if masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(f"{path}: record {index} has a bad data CRC (corrupt file)")
            yield payload


def _decode_list(kind: str, buf):
    if kind == "bytes":
        raw = np.frombuffer(buf, dtype=np.uint8)
        # Every element one byte long: the pattern 0x0A 0x01 b repeated. Parsing from the start
        # reads exactly this pattern, so the check is the parse, not a heuristic.
        if raw.size % 3 == 0 and np.all(raw[0::3] == 0x0A) and np.all(raw[1::3] == 0x01):
            return raw[2::3].copy()
        return [bytes(v) for number, wire, v in iter_fields(buf) if number == 1 and wire == 2]
    if kind == "float":  # packed (what TensorFlow writes) or one element per field
        chunks = [np.frombuffer(v, "<f4") for n, w, v in iter_fields(buf) if n == 1 and w in (2, 5)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    values = []
    for number, wire, value in iter_fields(buf):
        if number == 1 and wire == 2:  # packed
            packed, pos = bytes(value), 0
            while pos < len(packed):
                v, pos = read_varint(packed, pos)
                values.append(v)
        elif number == 1 and wire == 0:
            values.append(value)
    # Varints are two's complement 64-bit.
    return np.array([v - (1 << 64) if v >= 1 << 63 else v for v in values], dtype=np.int64)


def parse_example(payload: bytes) -> dict[str, tuple[str, object]]:
    """Decode a serialised ``tf.train.Example``.

    Returns:
        ``{feature name: (kind, value)}``: ``"bytes"`` (a uint8 array when every element is one
        byte long, else a list of ``bytes``; zero bytes kept), ``"float"`` (float32 array) or
        ``"int64"`` (int64 array).

    Raises:
        TFRecordError: the payload is not a valid Example.
    """
    out: dict[str, tuple[str, object]] = {}
    try:
        # Example field 1: Features, whose field 1 is the map<string, Feature>.
        for number, wire, features in iter_fields(payload):
            if (number, wire) != (1, 2):
                continue
            for fnum, fwire, entry in iter_fields(features):
                if (fnum, fwire) != (1, 2):
                    continue
                fields = {n: v for n, w, v in iter_fields(entry) if w == 2}
                if 1 not in fields:
                    raise TFRecordError("tf.train.Features map entry without a key")
                kind, value = "bytes", np.zeros(0, np.uint8)
                for knum, kwire, kvalue in iter_fields(fields.get(2, b"")):
                    if kwire == 2 and knum in (1, 2, 3):
                        kind = ("bytes", "float", "int64")[knum - 1]
                        value = _decode_list(kind, kvalue)
                out[bytes(fields[1]).decode("utf-8")] = (kind, value)
    except ProtobufError as exc:
        raise TFRecordError(str(exc)) from exc
    return out


def parse_official(payload: bytes, format_name: str, where: str) -> dict[str, np.ndarray]:
    """Parse one record and check it against ``OFFICIAL_FORMATS[format_name]``.

    Args:
        payload: the record.
        format_name: a key of ``OFFICIAL_FORMATS``.
        where: ``"<file> record <i>"``, for messages.

    Returns:
        ``{name: array}`` of the format's features (uint8 or float32, in the format's shapes).

    Raises:
        TFRecordError: not an Example, a missing feature, or one of the wrong kind or size.
    """
    if format_name not in OFFICIAL_FORMATS:
        raise KeyError(f"unknown official format {format_name!r}; known: {list(OFFICIAL_FORMATS)}")
    try:
        example = parse_example(payload)
    except TFRecordError as exc:
        raise TFRecordError(f"{where}: not a tf.train.Example ({exc})") from exc
    fmt = OFFICIAL_FORMATS[format_name]
    hint = f"for {format_name}. Is this the right file?"
    out = {}
    for name, spec in fmt.items():
        if name not in example:
            raise TFRecordError(
                f"{where}: feature {name!r} is missing; a {format_name} record has "
                f"{sorted(fmt)} but this one has {sorted(example)}. Is this the right file?"
            )
        kind, value = example[name]
        expected = int(np.prod(spec.shape))
        shape = "x".join(map(str, spec.shape))
        if spec.kind == "raw":  # ONE byte string (a one-byte string parses as an array)
            if kind == "bytes" and isinstance(value, list) and len(value) == 1:
                value = np.frombuffer(value[0], dtype=np.uint8)
            elif not (kind == "bytes" and isinstance(value, np.ndarray) and value.size == 1):
                count = len(value) if isinstance(value, list) else value.size
                raise TFRecordError(
                    f"{where}: feature {name!r} is a {kind} list of {count} elements, expected "
                    f"ONE byte string of {expected} bytes (shape {shape}) {hint}"
                )
        elif kind != spec.kind or (kind == "bytes" and not isinstance(value, np.ndarray)):
            raise TFRecordError(
                f"{where}: feature {name!r} is a {kind} list, expected a {spec.kind} list "
                f"(one byte per element) {hint}"
            )
        if value.size != expected:
            raise TFRecordError(
                f"{where}: feature {name!r} has {value.size} elements, expected {expected} "
                f"(shape {shape}) for {format_name}. Is this the right file (or variant)?"
            )
        out[name] = value.reshape(spec.shape)
    return out


def read_official(path: str, format_name: str) -> Iterator[dict[str, np.ndarray]]:
    """Yield the checked, shaped examples (``parse_official``) of an official file in order."""
    for index, payload in enumerate(iter_records(path)):
        yield parse_official(payload, format_name, f"{path} record {index}")
