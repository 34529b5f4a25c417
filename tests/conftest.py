"""Fixtures shared by every test folder."""

from __future__ import annotations

import functools

import pytest

from lib.engine import precision


@pytest.fixture
def fake_cpu_flags(tmp_path, monkeypatch):
    """``fake(flags)``: make this process's CPU report ``flags`` (a /proc/cpuinfo ``flags``
    line written to a file), so bf16 support is decided by the real parser on them."""

    def fake(flags: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(
            precision, "cpu_bf16_support", functools.partial(_real_support, str(path))
        )

    return fake


_real_support = precision.cpu_bf16_support
# Flags of a CPU with AVX-512 but no native bf16 (the Xeon of the report that broke CI).
NO_BF16_FLAGS = "fpu sse2 avx avx2 avx512f avx512bw avx512vl"
