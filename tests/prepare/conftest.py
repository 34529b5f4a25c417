"""Preparation-test fixtures: the official sample file, and a tiny official-format TFRecord
writer.

The writer builds ``tf.train.Example`` bytes by hand (protobuf wire format) with one byte per
element for byte features, exactly like the released files, so conversion tests need neither
TensorFlow nor the library's own reader.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 10 official Tetrominoes examples (Apache-2.0, DeepMind; see tests/fixtures/README.md).
TETROMINOES_MINI = os.path.join(REPO, "tests", "fixtures", "tetrominoes_mini.tfrecords")


@pytest.fixture
def tetrominoes_mini() -> str:
    return TETROMINOES_MINI


# --- protobuf / TFRecord encoding -----------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def bytes_feature(values: np.ndarray) -> bytes:
    """Feature{bytes_list} with one single-byte string per element (the released layout)."""
    flat = np.asarray(values, np.uint8).ravel()
    triples = np.empty((flat.size, 3), np.uint8)
    triples[:, 0] = 0x0A  # field 1, LEN
    triples[:, 1] = 0x01  # length 1
    triples[:, 2] = flat
    return _field(1, triples.tobytes())


def float_feature(values: np.ndarray) -> bytes:
    """Feature{float_list} with packed floats (as TensorFlow writes them)."""
    return _field(2, _field(1, np.asarray(values, "<f4").ravel().tobytes()))


def example_bytes(features: dict[str, bytes]) -> bytes:
    """Serialised Example from ``{name: feature bytes}``."""
    entries = b"".join(
        _field(1, _field(1, name.encode()) + _field(2, feature))
        for name, feature in features.items()
    )
    return _field(1, entries)


def _masked_crc(data: bytes) -> int:
    import crc32c

    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecords(path: str, payloads: list[bytes], compress: bool = True) -> str:
    """Write records (GZIP like the released files unless ``compress`` is False)."""
    opener = (
        (lambda p: gzip.open(p, "wb", compresslevel=1)) if compress else (lambda p: open(p, "wb"))
    )
    with opener(path) as f:
        for payload in payloads:
            length = struct.pack("<Q", len(payload))
            f.write(length + struct.pack("<I", _masked_crc(length)))
            f.write(payload + struct.pack("<I", _masked_crc(payload)))
    return path


def official_example(fmt: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """Example bytes from ``{name: ("bytes" | "float", array)}``."""
    return example_bytes(
        {
            k: bytes_feature(v) if kind == "bytes" else float_feature(v)
            for k, (kind, v) in fmt.items()
        }
    )


def multi_dsprites_record(rng: np.random.Generator, num_objects: int) -> tuple[bytes, dict]:
    """A colored_on_grayscale record (E = 6) with rectangles; returns (payload, truth).

    truth: ``image`` (64, 64, 3) and ``label`` (64, 64): entity k covers its rectangle
    minus later ones; the mask is stored (H, W, E, 1) as in the released file.
    """
    e = 6
    label = np.zeros((64, 64), np.uint8)
    for k in range(1, num_objects + 1):
        r, c = rng.integers(0, 48, size=2)
        h, w = rng.integers(4, 16, size=2)
        label[r : r + h, c : c + w] = k
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    masks = np.stack([(label == k) * 255 for k in range(e)], axis=-1).astype(np.uint8)  # (H, W, E)
    fmt = {"image": ("bytes", image), "mask": ("bytes", masks[..., None])}
    for name in ("x", "y", "shape", "scale", "orientation"):
        fmt[name] = ("float", rng.random(e))
    fmt["visibility"] = ("float", (np.arange(e) <= num_objects).astype(np.float32))
    fmt["color"] = ("float", rng.random((e, 3)))
    return official_example(fmt), {"image": image, "label": label, "factors": fmt}


def clevr_record(rng: np.random.Generator, num_objects: int) -> tuple[bytes, dict]:
    """A clevr_with_masks record (240x320, E = 11) with ``num_objects`` visible objects."""
    e = 11
    label = np.zeros((240, 320), np.uint8)
    for k in range(1, num_objects + 1):
        r, c = 20 + 18 * k, 40 + 22 * k
        label[r : r + 30, c : c + 30] = k
    image = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    masks = np.stack([(label == k) * 255 for k in range(e)]).astype(np.uint8)  # (E, H, W)
    vis = (np.arange(e) <= num_objects).astype(np.float32)
    fmt = {"image": ("bytes", image), "mask": ("bytes", masks[..., None])}
    for name in ("x", "y", "z", "rotation"):
        fmt[name] = ("float", rng.random(e))
    fmt["visibility"] = ("float", vis)
    fmt["pixel_coords"] = ("float", rng.random((e, 3)))
    for name in ("size", "material", "shape", "color"):
        fmt[name] = ("bytes", rng.integers(0, 4, size=e, dtype=np.uint8) * (vis > 0))
    return official_example(fmt), {"image": image, "label": label, "visibility": vis}


def load_tool(name: str):
    """Import tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
