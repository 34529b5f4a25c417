"""MODEL.PRECISION and MODEL.DETERMINISTIC: switches, bf16 support detection, bf16 numerics."""

import math

import pytest
import torch

from lib.engine import precision as prec
from lib.engine.setup import RunError, resolve_device, setup_precision
from lib.model import build_model
from tests.conftest import NO_BF16_FLAGS
from tests.engine.engine_helpers import tiny_cfg

CPU = torch.device("cpu")


@pytest.fixture
def fake_deterministic(monkeypatch):
    """Record torch.use_deterministic_algorithms instead of calling it: its first call imports
    torch._inductor (seconds)."""
    state = {"on": torch.are_deterministic_algorithms_enabled()}
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: state["on"])
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: state.update(on=on))
    return state


@pytest.fixture
def restore_switches(fake_deterministic):
    """Put torch's process-wide switches back after a test that sets them."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])
    if torch.are_deterministic_algorithms_enabled() != saved[3]:
        torch.use_deterministic_algorithms(saved[3])  # slow (seconds) the first time
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[4:]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_apply_precision_sets_the_switches(
    precision, deterministic, restore_switches, fake_deterministic
):
    settings = prec.apply_precision(precision, deterministic, torch.device("cuda"))
    tf32 = precision == "tf32"
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    assert fake_deterministic["on"] is deterministic
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert settings["tf32_matmul"] is tf32 and settings["cudnn_benchmark"] is (not deterministic)
    prec.apply_precision("fp32", False, CPU)
    assert torch.backends.cudnn.benchmark is False  # benchmark only on CUDA


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu avx512f avx512_bf16 avx512vl", True),
        ("fpu amx_bf16 amx_tile", True),
        ("fpu avx2", False),
    ],
)
def test_cpu_bf16_support_reads_the_flags(tmp_path, flags, native):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    found, source = prec.cpu_bf16_support(str(path))
    assert found is native and str(path) in source


def test_bf16_refused_on_a_cpu_without_native_bf16(fake_cpu_flags):
    fake_cpu_flags(NO_BF16_FLAGS)
    with pytest.raises(prec.PrecisionError, match="AVX512-BF16 or AMX.*flags: no avx512_bf16"):
        prec.check_precision("bf16", CPU)
    cfg = tiny_cfg(**{"MODEL.PRECISION": "bf16"})
    with pytest.raises(RunError, match="MODEL.PRECISION bf16 needs a CPU"):
        setup_precision(cfg, CPU)
    assert prec.check_precision("fp32", CPU) == "fp32 on cpu"


def test_solver_amp_is_gone_with_a_pointer_to_its_replacement():
    from lib.config import load_cfg

    with pytest.raises(ValueError, match="SOLVER.AMP.*MODEL.PRECISION.*bf16"):
        load_cfg(None, ["SOLVER.AMP", "True"])


def test_unknown_precision_is_a_config_error():
    from lib.config import load_cfg

    with pytest.raises(ValueError, match="MODEL.PRECISION = 'fp16'"):
        load_cfg(None, ["MODEL.PRECISION", "fp16"])


def test_local_rank_wraps_around_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU per process
    assert resolve_device("cuda") == torch.device("cuda", 0)


def _run(model, images, autocast):
    """Loss, parameter gradients, and the dtypes the refinement network and the decoder's
    output layer received."""
    seen = {"refinement": [], "output": []}
    hooks = [
        model.refinement.register_forward_pre_hook(
            lambda _m, args: seen["refinement"].extend(a.dtype for a in args[:3])
        ),
        model.decoder.output.register_forward_pre_hook(
            lambda _m, args: seen["output"].append(args[0].dtype)
        ),
    ]
    torch.manual_seed(1)
    model.zero_grad(set_to_none=True)
    with autocast():
        out = model(images)
    out["loss"].backward()
    for hook in hooks:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, seen


def test_bf16_autocast_keeps_the_sensitive_parts_fp32():
    # Numerics only: CPU autocast runs bf16 on any CPU (native bf16 only changes the speed).
    cfg = tiny_cfg(**{"INPUT.IMAGE_SIZE": 8})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ref, ref_grads, ref_seen = _run(model, images, prec.autocast_factory("fp32", CPU))
    out, grads, seen = _run(model, images, prec.autocast_factory("bf16", CPU))
    assert set(ref_seen["refinement"]) == {torch.float32}
    assert seen["refinement"] and set(seen["refinement"]) == {torch.float32}
    assert seen["output"] and set(seen["output"]) == {torch.float32}  # output layer in fp32
    assert out["loss"].dtype == torch.float32
    for key in ("components", "masks", "nll", "kl"):
        assert out[key].dtype == torch.float32, key
    assert math.isclose(out["loss"].item(), ref["loss"].item(), rel_tol=1e-2)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
    # bf16 did run somewhere: the loss is not bit-identical to fp32.
    assert out["loss"].item() != ref["loss"].item()


def test_tool_session_logs_the_precision(tmp_path, restore_switches, fake_deterministic):
    from lib.cli import tool_session

    cfg = tiny_cfg(str(tmp_path), **{"MODEL.PRECISION": "tf32", "MODEL.DETERMINISTIC": True})
    cfg.freeze()
    with tool_session(cfg, ["train_net.py"]):
        assert fake_deterministic["on"] and torch.backends.cudnn.deterministic
    log = (tmp_path / "log.txt").read_text()
    assert "precision: precision tf32, deterministic True, tf32_matmul True" in log
