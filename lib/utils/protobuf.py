"""Just enough of the protobuf wire format to read TFRecord examples and TF1 checkpoints, and
TensorFlow's masked CRC that both store.

No protobuf dependency: both readers walk the fields of a serialised message themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

from crc32c import crc32c


def masked_crc32c(data) -> int:
    """TensorFlow's stored checksum of ``data``: its CRC-32C rotated right by 15 bits, plus a
    constant (TFRecord lengths and payloads, checkpoint blocks and tensors)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class ProtobufError(ValueError):
    """A serialised message that is truncated or uses an unsupported encoding."""


def read_varint(buf, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode a base-128 varint.

    Args:
        buf: bytes, bytearray or memoryview.
        pos: offset of the varint's first byte.
        end: offset the varint must not reach (default: the end of ``buf``).

    Returns:
        ``(value, offset after the varint)``.

    Raises:
        ProtobufError: the varint runs past ``end`` or is longer than 10 bytes.
    """
    end = len(buf) if end is None else end
    value, shift = 0, 0
    while True:
        if pos >= end:
            raise ProtobufError("protobuf varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("protobuf varint longer than 10 bytes")


_FIXED_SIZE = {1: 8, 5: 4}


def iter_fields(buf) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield ``(field number, wire type, value)`` of a serialised message.

    Args:
        buf: the message (bytes or memoryview).

    Yields:
        Varints as ints; length-delimited and fixed-width values as memoryview slices of
        ``buf`` (no copy: a CLEVR example is about 3 MB).

    Raises:
        ProtobufError: a field runs past the end, or a group (wire types 3, 4).
    """
    view = memoryview(buf)
    pos, end = 0, len(view)
    while pos < end:
        key, pos = read_varint(view, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(view, pos, end)
        elif wire == 2 or wire in _FIXED_SIZE:
            if wire == 2:
                size, pos = read_varint(view, pos, end)
            else:
                size = _FIXED_SIZE[wire]
            if pos + size > end:
                raise ProtobufError("protobuf field runs past the end of its message")
            value = view[pos : pos + size]
            pos += size
        else:
            raise ProtobufError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value
