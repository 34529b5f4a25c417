"""The wire-format reader against the encoding examples of the protobuf documentation."""

import pytest

from lib.utils.protobuf import ProtobufError, iter_fields, read_varint


def test_documented_examples():
    assert read_varint(bytes([0x96, 0x01]), 0) == (150, 2)
    assert read_varint(bytes([0x01]), 0) == (1, 1)
    assert read_varint(bytes([0xFF] * 9 + [0x01]), 0) == (2**64 - 1, 10)
    # field 1 = varint 150, field 2 = string "testing", field 3 = fixed32 1, field 4 = fixed64 2
    message = bytes.fromhex("089601120774657374696e671d01000000210200000000000000")
    fields = [(n, w, v if isinstance(v, int) else bytes(v)) for n, w, v in iter_fields(message)]
    assert fields == [
        (1, 0, 150),
        (2, 2, b"testing"),
        (3, 5, (1).to_bytes(4, "little")),
        (4, 1, (2).to_bytes(8, "little")),
    ]


@pytest.mark.parametrize(
    "message",
    [bytes.fromhex("0896"), bytes.fromhex("1207746573"), bytes.fromhex("1d0100"), b"\x0b"],
)
def test_truncated_or_unsupported_messages_are_refused(message):
    with pytest.raises(ProtobufError):
        list(iter_fields(message))


def test_masked_crc32c_is_tensorflows_rotated_crc_plus_a_constant():
    from crc32c import crc32c

    from lib.utils.protobuf import masked_crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    for data in (b"", b"123456789", bytes(range(256))):
        crc = crc32c(data)
        rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF  # right by 15 bits
        assert masked_crc32c(data) == (rotated + 0xA282EAD8) % 2**32
