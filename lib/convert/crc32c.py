"""CRC-32C (Castagnoli), as TensorFlow checksums its checkpoint blocks and tensors.

No compiled dependency: short inputs go byte by byte through a lookup table; long ones are cut
into many equal lanes whose CRCs NumPy advances in parallel (one vector step per byte position)
and which are then chained with a precomputed "skip L bytes" operator. CRC registers are linear
over GF(2), which is what makes the chaining exact.
"""

from __future__ import annotations

import numpy as np

_POLY = 0x82F63B78  # Castagnoli polynomial, bit-reflected
_MASK_DELTA = 0xA282EAD8
# Below this many bytes the plain loop is faster than setting up the lanes.
_LANE_THRESHOLD = 4096


def _make_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1)
    return table.astype(np.uint32)


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _register_loop(register: int, data: bytes | memoryview) -> int:
    # The raw register update, no pre/post inversion.
    table = _TABLE_LIST
    for byte in bytes(data):
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _skip_tables(length: int) -> np.ndarray:
    """Lookup tables of the linear map "advance a register over ``length`` zero bytes".

    Returns:
        (4, 256) uint32: row j maps byte j of a register to its contribution after the skip.
    """
    # Advance the 32 unit registers in parallel; column b is the image of bit b.
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
    for _ in range(length):
        basis = _TABLE[basis & 0xFF] ^ (basis >> 8)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for j in range(4):
        for bit in range(8):
            step = 1 << bit
            # Values with this bit set = values below it, XOR the bit's image.
            tables[j, step : 2 * step] = tables[j, :step] ^ basis[8 * j + bit]
    return tables


def _register_lanes(data: np.ndarray, lanes: int) -> int:
    """Raw register (start 0) of ``data`` (uint8, length a multiple of ``lanes``)."""
    length = data.size // lanes
    block = data.reshape(lanes, length)
    registers = np.zeros(lanes, dtype=np.uint32)
    for i in range(length):
        registers = _TABLE[(registers ^ block[:, i]) & 0xFF] ^ (registers >> 8)
    skip = _skip_tables(length)
    register = 0
    for lane_register in registers.tolist():
        shifted = (
            skip[0, register & 0xFF]
            ^ skip[1, (register >> 8) & 0xFF]
            ^ skip[2, (register >> 16) & 0xFF]
            ^ skip[3, register >> 24]
        )
        register = int(shifted) ^ lane_register
    return register


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C of ``data`` (initial value and final XOR 0xFFFFFFFF, like TensorFlow's).

    Args:
        data: the bytes.

    Returns:
        The checksum as an unsigned 32-bit int.
    """
    view = memoryview(data).cast("B")
    n = view.nbytes
    if n < _LANE_THRESHOLD:
        return _register_loop(0xFFFFFFFF, view) ^ 0xFFFFFFFF
    lanes = int(np.sqrt(n)) + 1
    padded = np.zeros(-(-n // lanes) * lanes, dtype=np.uint8)
    # Leading zero bytes leave a zero register unchanged, so the message goes at the end; the
    # initial register 0xFFFFFFFF is the same as XOR-ing its four bytes into the first four.
    start = padded.size - n
    padded[start:] = np.frombuffer(view, dtype=np.uint8)
    padded[start : start + 4] ^= 0xFF
    return _register_lanes(padded, lanes) ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """TensorFlow's stored form of a CRC (rotate right by 15 bits, add a constant)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Inverse of ``mask``."""
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
