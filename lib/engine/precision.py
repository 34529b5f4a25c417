"""Arithmetic precision and determinism of a run: MODEL.PRECISION and MODEL.DETERMINISTIC.

``check_precision`` refuses what the device cannot run, ``apply_precision`` sets torch's
process-wide switches once at start, and ``autocast_factory`` gives the forward's context. The model keeps its numerically sensitive
parts (likelihood, KL, LayerNorm inputs, gradient inputs, decoder output layer) in fp32 under
autocast itself (``lib.model.iodine``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

from lib.errors import IodineError

# cuBLAS needs a fixed workspace for deterministic results (CUDA docs, "Reproducibility").
CUBLAS_WORKSPACE = ":4096:8"


class PrecisionError(IodineError, RuntimeError):
    """The precision asked for cannot run on this device (e.g. bf16 on a CPU without it)."""


def cpu_bf16_support(cpuinfo_path: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """``(native, source)``: whether this CPU has native bf16 arithmetic (the
    ``avx512_bf16`` or ``amx_bf16`` flag of ``cpuinfo_path``; without that file, oneDNN's own
    check), and how that was decided."""
    try:
        with open(cpuinfo_path) as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        flags = None
    if flags is not None:
        found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
        return bool(found), f"{cpuinfo_path} flags: {', '.join(found) or 'no avx512_bf16/amx_bf16'}"
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return native, f"torch.ops.mkldnn._is_mkldnn_bf16_supported() = {native}"


def check_precision(precision: str, device: torch.device) -> str:
    """A one-line description of the support found for ``precision`` on ``device``.

    Raises:
        PrecisionError: bf16 on a CPU without AVX512-BF16/AMX or a GPU without bf16.
    """
    if precision != "bf16":
        return f"{precision} on {device.type}"
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise PrecisionError(f"MODEL.PRECISION bf16: GPU {device} has no bf16 support")
        return "bf16 autocast on CUDA"
    native, source = cpu_bf16_support()
    if not native:
        raise PrecisionError(
            f"MODEL.PRECISION bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); {source}"
        )
    return f"bf16 autocast on CPU ({source})"


def apply_precision(precision: str, deterministic: bool, device: torch.device) -> dict[str, Any]:
    """Set torch's process-wide TF32, cuDNN and determinism switches for this run.

    Args:
        precision: one of ``lib.spec.PRECISIONS``; "tf32" turns TF32 on for CUDA matmul and cuDNN,
            the others turn it off (fp32 parity; bf16 autocast runs its matmuls in bf16).
        deterministic: deterministic algorithms everywhere and no cuDNN benchmark; else
            cuDNN benchmark on CUDA.
        device: where the model runs.

    Returns:
        The settings made, JSON-serialisable (for log.txt and the benchmark JSON).
    """
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    if deterministic:
        # Read when cuBLAS creates its handle: set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        # The call costs seconds (it loads torch's deterministic-op tables): only on a change.
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    return {
        "precision": precision,
        "deterministic": deterministic,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def autocast_factory(precision: str, device: torch.device) -> Callable[[], Any]:
    """The zero-argument context factory of the forward: bf16 autocast for "bf16", else no
    context at all (so an fp32 step runs exactly the operations of a plain forward)."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
