"""CRC-32C against published check values and a bit-by-bit polynomial division."""

import numpy as np
import pytest

from lib.convert.crc32c import crc32c, mask, unmask


def bitwise_crc32c(data: bytes) -> int:
    """Reference: one bit at a time, reflected Castagnoli polynomial, no table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"123456789", 0xE3069283),  # the standard check value
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4 test vectors
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"", 0x0),
    ],
)
def test_known_values(data, expected):
    assert crc32c(data) == expected


@pytest.mark.parametrize("n", [1, 3, 4, 4095, 4096, 4097, 6000, 20011])
def test_matches_bitwise_reference_across_lane_threshold(n):
    # Lengths around the switch from the byte loop to the NumPy lanes, and odd remainders.
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == bitwise_crc32c(data)


def test_mask_is_tensorflows_rotation_plus_constant():
    crc = 0x12345678
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    assert mask(crc) == (rotated + 0xA282EAD8) & 0xFFFFFFFF
    for value in (0, 1, 0xFFFFFFFF, 0xE3069283, 0x8A9136AA):
        assert unmask(mask(value)) == value
