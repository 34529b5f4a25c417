"""Reader for the official ``multi_object_datasets`` TFRecord files, without TensorFlow.

A TFRecord file is a stream (GZIP-compressed for the released files) of records::

    uint64 length | uint32 masked_crc32c(length) | payload | uint32 masked_crc32c(payload)

and each payload is a serialised ``tf.train.Example`` protobuf. The released files store
``image`` and ``mask`` as byte lists with ONE BYTE PER ELEMENT (``tf.FixedLenFeature(shape,
tf.string)`` followed by ``decode_raw``), so a 240x320x11 CLEVR mask is a list of 844,800
one-byte strings. Decoding those through the protobuf library creates one Python object per
pixel, and converting them with ``np.array(values, dtype=bytes)`` silently turns every zero
byte into ``b""`` (NumPy strips trailing NULs of fixed-width byte strings). This module
therefore parses the protobuf wire format itself: a list of one-byte strings is the byte
pattern ``0x0A 0x01 <byte>`` repeated, which NumPy reads with a strided view, exactly and fast.

The ``OFFICIAL_FORMATS`` table lists the features and element counts of the three released
datasets used here; ``read_official`` checks every record against it, so a file of the wrong
dataset fails with a message naming the file, the feature and the expected shape.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lib.errors import DatasetError
from lib.utils.protobuf import ProtobufError, iter_fields, read_varint

try:  # crc32c ships as a dependency of the ``tfrecord`` package; verification needs it.
    import crc32c as _crc32c
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c = None

_CRC_MASK_DELTA = 0xA282EAD8
_MAX_RECORD_BYTES = 1 << 31  # far above any official record (CLEVR: ~3.2 MB)


@dataclass(frozen=True)
class FeatureSpec:
    """Expected feature of an official record.

    Attributes:
        kind: ``"bytes"`` (one byte per element, decoded to uint8), ``"raw"`` (ONE byte
            string holding the whole array, ``FixedLenFeature([], tf.string)`` + ``decode_raw``:
            CATER) or ``"float"`` (float32).
        shape: shape of the decoded array, as the official reader reshapes it.
    """

    kind: str
    shape: tuple[int, ...]


def _clevr_format() -> dict[str, FeatureSpec]:
    e = 11
    spec = {
        "image": FeatureSpec("bytes", (240, 320, 3)),
        "mask": FeatureSpec("bytes", (e, 240, 320, 1)),
        "pixel_coords": FeatureSpec("float", (e, 3)),
    }
    for name in ("x", "y", "z", "rotation", "visibility"):
        spec[name] = FeatureSpec("float", (e,))
    for name in ("size", "material", "shape", "color"):
        spec[name] = FeatureSpec("bytes", (e,))
    return spec


def _multi_dsprites_format(num_entities: int) -> dict[str, FeatureSpec]:
    # The mask is stored (H, W, E, 1); the official reader transposes it to (E, H, W, 1).
    spec = {
        "image": FeatureSpec("bytes", (64, 64, 3)),
        "mask": FeatureSpec("bytes", (64, 64, num_entities, 1)),
        "color": FeatureSpec("float", (num_entities, 3)),
    }
    for name in ("x", "y", "shape", "visibility", "orientation", "scale"):
        spec[name] = FeatureSpec("float", (num_entities,))
    return spec


def _tetrominoes_format() -> dict[str, FeatureSpec]:
    spec = {
        "image": FeatureSpec("bytes", (35, 35, 3)),
        "mask": FeatureSpec("bytes", (4, 35, 35, 1)),
        "color": FeatureSpec("float", (4, 3)),
    }
    for name in ("x", "y", "shape", "visibility"):
        spec[name] = FeatureSpec("float", (4,))
    return spec


def _objects_room_format(num_entities: int = 7) -> dict[str, FeatureSpec]:
    # objects_room.py: only image and mask; MAX_NUM_ENTITIES['train'] = 7 (the four
    # background entities sky, floor and two wall halves first, then up to three objects).
    return {
        "image": FeatureSpec("bytes", (64, 64, 3)),
        "mask": FeatureSpec("bytes", (num_entities, 64, 64, 1)),
    }


# cater_with_masks.py: videos of SEQUENCE_LENGTH = 33 frames of 64x64, MAX_NUM_ENTITIES = 11.
CATER_FRAMES_PER_VIDEO = 33
CATER_ENTITIES = 11


def _cater_format() -> dict[str, FeatureSpec]:
    # image and mask are one byte string each (decode_raw, then reshape); object_positions is
    # stored (E, T, 3) and transposed to (T, E, 3) by the official reader.
    t, e = CATER_FRAMES_PER_VIDEO, CATER_ENTITIES
    return {
        "image": FeatureSpec("raw", (t, 64, 64, 3)),
        "mask": FeatureSpec("raw", (t, e, 64, 64, 1)),
        "camera_matrix": FeatureSpec("float", (t, 4, 4)),
        "object_positions": FeatureSpec("float", (e, t, 3)),
    }


# Official file kind -> feature specification (shapes as the official readers decode them).
OFFICIAL_FORMATS: dict[str, dict[str, FeatureSpec]] = {
    "tetrominoes": _tetrominoes_format(),
    "multi_dsprites_colored_on_grayscale": _multi_dsprites_format(6),
    "clevr_with_masks": _clevr_format(),
    "objects_room": _objects_room_format(),
    "cater_with_masks": _cater_format(),
}


class TFRecordError(DatasetError):
    """A TFRecord file that is corrupt, truncated or of another dataset than expected."""


def _masked_crc(data) -> int:
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


class _ZlibReader:
    """Read-only file object over a zlib stream (TFRecordOptions ZLIB: CATER's files)."""

    def __init__(self, path: str):
        self._file = open(path, "rb")
        self._inflate = zlib.decompressobj()
        self._buffer = bytearray()
        self._eof = False

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size and not self._eof:
            chunk = self._file.read(1 << 20)
            try:
                if chunk:
                    self._buffer += self._inflate.decompress(chunk)
                else:
                    self._buffer += self._inflate.flush()
                    self._eof = True
            except zlib.error as exc:
                raise OSError(f"corrupt ZLIB stream ({exc})") from exc
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def __enter__(self) -> _ZlibReader:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def _is_zlib(head: bytes) -> bool:
    # A zlib header: CMF 0x78 (deflate, 32K window) and (CMF * 256 + FLG) % 31 == 0; and the
    # first block must inflate, which a raw TFRecord (a little-endian length) will not.
    if len(head) < 2 or head[0] != 0x78 or (head[0] * 256 + head[1]) % 31:
        return False
    try:
        zlib.decompressobj().decompress(head)
    except zlib.error:
        return False
    return True


def compression_of(path: str) -> str:
    """The compression of a TFRecord file, from its first bytes.

    Args:
        path: the file.

    Returns:
        ``"gzip"`` (the multi_object_datasets files), ``"zlib"`` (CATER) or ``"none"``.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    return "zlib" if _is_zlib(head) else "none"


def _open(path: str):
    compression = compression_of(path)
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zlib":
        return _ZlibReader(path)
    return open(path, "rb")


def iter_records(path: str, verify_crc: bool | None = None) -> Iterator[bytes]:
    """Yield the payloads of a TFRecord file, GZIP-, ZLIB- or not compressed (detected from
    its first bytes).

    Args:
        path: the ``.tfrecords`` file.
        verify_crc: check both CRCs of every record. None = check when the ``crc32c`` package
            is importable (it is a dependency of ``tfrecord``); True without it is an error.

    Returns:
        An iterator of ``bytes`` payloads (serialised ``tf.train.Example``), in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TFRecordError: a truncated record, a CRC mismatch or a corrupt GZIP stream; the message
            names the file and the record index.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFRecord file {path} does not exist")
    if verify_crc is None:
        verify_crc = _crc32c is not None
    elif verify_crc and _crc32c is None:
        raise ImportError("verify_crc=True needs the 'crc32c' package (pip install crc32c)")
    index = 0
    with _open(path) as f:
        while True:
            try:
                header = f.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise TFRecordError(
                        f"{path}: record {index} is truncated (header of {len(header)} of 12 bytes)"
                    )
                (length,) = struct.unpack("<Q", header[:8])
                (length_crc,) = struct.unpack("<I", header[8:])
                if length > _MAX_RECORD_BYTES:  # garbage: do not try to allocate it
                    raise TFRecordError(
                        f"{path}: record {index} claims {length} bytes; not a TFRecord file?"
                    )
                if verify_crc and _masked_crc(header[:8]) != length_crc:
                    raise TFRecordError(
                        f"{path}: record {index} has a bad length CRC (corrupt file or not a "
                        "TFRecord file)"
                    )
                payload = f.read(length)
                footer = f.read(4)
            except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
                raise TFRecordError(f"{path}: cannot read record {index}: {exc}") from exc
            if len(payload) < length or len(footer) < 4:
                raise TFRecordError(
                    f"{path}: record {index} is truncated ({len(payload)} of {length} bytes)"
                )
            if verify_crc and _masked_crc(payload) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(f"{path}: record {index} has a bad data CRC (corrupt file)")
            yield payload
            index += 1


def _decode_bytes_list(buf) -> np.ndarray | list[bytes]:
    raw = np.frombuffer(buf, dtype=np.uint8)
    # Fast path: every element one byte long, i.e. the pattern 0x0A 0x01 b repeated. Parsing
    # from the start reads exactly this pattern, so the check is the parse, not a heuristic.
    if raw.size % 3 == 0 and np.all(raw[0::3] == 0x0A) and np.all(raw[1::3] == 0x01):
        return raw[2::3].copy()
    values = []
    for number, wire, value in iter_fields(buf):
        if number == 1 and wire == 2:
            values.append(bytes(value))
    return values


def _decode_float_list(buf) -> np.ndarray:
    chunks = []
    for number, wire, value in iter_fields(buf):
        if number != 1:
            continue
        if wire == 2:  # packed (what TensorFlow writes)
            chunks.append(np.frombuffer(value, dtype="<f4"))
        elif wire == 5:  # unpacked element
            chunks.append(np.frombuffer(value, dtype="<f4"))
    if not chunks:
        return np.zeros(0, np.float32)
    return np.concatenate(chunks).astype(np.float32)


def _decode_int64_list(buf) -> np.ndarray:
    values = []
    for number, wire, value in iter_fields(buf):
        if number != 1:
            continue
        if wire == 2:
            packed = bytes(value)
            pos = 0
            while pos < len(packed):
                v, pos = read_varint(packed, pos)
                values.append(v)
        elif wire == 0:
            values.append(value)
    # Varints are two's complement 64-bit.
    return np.array([v - (1 << 64) if v >= 1 << 63 else v for v in values], dtype=np.int64)


def parse_example(payload: bytes) -> dict[str, tuple[str, object]]:
    """Decode a serialised ``tf.train.Example``.

    Args:
        payload: one record's bytes.

    Returns:
        ``{feature name: (kind, value)}`` with kind ``"bytes"`` (value: a uint8 array when every
        element is one byte long, else a list of ``bytes``), ``"float"`` (float32 array) or
        ``"int64"`` (int64 array). Zero bytes are kept.

    Raises:
        TFRecordError: the payload is not a valid Example.
    """
    try:
        return _parse_example(payload)
    except ProtobufError as exc:
        raise TFRecordError(str(exc)) from exc


def _parse_example(payload: bytes) -> dict[str, tuple[str, object]]:
    out: dict[str, tuple[str, object]] = {}
    for number, wire, features in iter_fields(payload):
        if number != 1 or wire != 2:
            continue  # Example has only field 1 (features)
        for fnum, fwire, entry in iter_fields(features):
            if fnum != 1 or fwire != 2:
                continue  # Features: field 1 is the map<string, Feature>
            key = None
            feature = None
            for enum, ewire, evalue in iter_fields(entry):
                if enum == 1 and ewire == 2:
                    key = bytes(evalue).decode("utf-8")
                elif enum == 2 and ewire == 2:
                    feature = evalue
            if key is None:
                raise TFRecordError("tf.train.Features map entry without a key")
            kind, value = "bytes", np.zeros(0, np.uint8)
            for knum, kwire, kvalue in iter_fields(feature if feature is not None else b""):
                if kwire != 2:
                    continue
                if knum == 1:
                    kind, value = "bytes", _decode_bytes_list(kvalue)
                elif knum == 2:
                    kind, value = "float", _decode_float_list(kvalue)
                elif knum == 3:
                    kind, value = "int64", _decode_int64_list(kvalue)
            out[key] = (kind, value)
    return out


def check_and_shape(
    example: dict[str, tuple[str, object]],
    fmt: dict[str, FeatureSpec],
    format_name: str,
    where: str,
) -> dict[str, np.ndarray]:
    """Check a parsed example against an official format and reshape its features.

    Args:
        example: output of ``parse_example``.
        fmt: the format, e.g. ``OFFICIAL_FORMATS["tetrominoes"]``.
        format_name: its name, for messages.
        where: ``"<file> record <i>"``, for messages.

    Returns:
        ``{name: array}``: bytes features as uint8, float features as float32, each with the
        spec's shape. Features not in the spec are dropped.

    Raises:
        TFRecordError: a missing feature, a feature of the wrong kind or the wrong number of
            elements (the file is probably of another dataset).
    """
    out = {}
    for name, spec in fmt.items():
        if name not in example:
            raise TFRecordError(
                f"{where}: feature {name!r} is missing; a {format_name} record has "
                f"{sorted(fmt)} but this one has {sorted(example)}. Is this the right file?"
            )
        kind, value = example[name]
        if spec.kind == "raw":
            value = _raw_bytes(kind, value, name, spec, format_name, where)
        elif kind != spec.kind or (kind == "bytes" and not isinstance(value, np.ndarray)):
            raise TFRecordError(
                f"{where}: feature {name!r} is a {kind} list, expected a {spec.kind} list "
                f"(one byte per element) for {format_name}. Is this the right file?"
            )
        expected = int(np.prod(spec.shape))
        if value.size != expected:
            raise TFRecordError(
                f"{where}: feature {name!r} has {value.size} elements, expected {expected} "
                f"(shape {'x'.join(map(str, spec.shape))}) for {format_name}. "
                "Is this the right file (or variant)?"
            )
        out[name] = value.reshape(spec.shape)
    return out


def _raw_bytes(kind: str, value, name: str, spec: FeatureSpec, format_name: str, where: str):
    """The uint8 array of a feature stored as ONE byte string (``decode_raw``)."""
    if kind == "bytes" and isinstance(value, list) and len(value) == 1:
        return np.frombuffer(value[0], dtype=np.uint8)
    if kind == "bytes" and isinstance(value, np.ndarray) and value.size == 1:
        return value  # a one-element array: one string of one byte
    count = len(value) if isinstance(value, list) else getattr(value, "size", "?")
    raise TFRecordError(
        f"{where}: feature {name!r} is a {kind} list of {count} elements, expected ONE byte "
        f"string of {int(np.prod(spec.shape))} bytes (shape {'x'.join(map(str, spec.shape))}) "
        f"for {format_name}. Is this the right file?"
    )


def parse_official(payload: bytes, format_name: str, where: str) -> dict[str, np.ndarray]:
    """Parse one record and check it against an official format.

    Args:
        payload: the record's bytes.
        format_name: a key of ``OFFICIAL_FORMATS``.
        where: ``"<file> record <i>"``, for messages.

    Returns:
        ``{feature: array}`` as ``check_and_shape`` returns them.

    Raises:
        KeyError: an unknown format name.
        TFRecordError: not an Example, or not of this format.
    """
    if format_name not in OFFICIAL_FORMATS:
        raise KeyError(f"unknown official format {format_name!r}; known: {list(OFFICIAL_FORMATS)}")
    try:
        example = parse_example(payload)
    except TFRecordError as exc:
        raise TFRecordError(f"{where}: not a tf.train.Example ({exc})") from exc
    return check_and_shape(example, OFFICIAL_FORMATS[format_name], format_name, where)


def read_official(
    path: str, format_name: str, verify_crc: bool | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the checked, shaped examples of an official file, in file order.

    Args:
        path: the GZIP TFRecord file.
        format_name: a key of ``OFFICIAL_FORMATS``.
        verify_crc: see ``iter_records``.

    Returns:
        An iterator of ``{feature: array}`` as ``check_and_shape`` returns them (masks in the
        stored layout; the caller transposes Multi-dSprites' (H, W, E, 1)).

    Raises:
        KeyError: an unknown format name.
        TFRecordError: see ``iter_records`` and ``check_and_shape``.
    """
    for index, payload in enumerate(iter_records(path, verify_crc)):
        yield parse_official(payload, format_name, f"{path} record {index}")
