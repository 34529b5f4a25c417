"""CPU checks that catch device bugs without a GPU.

Every config's model runs on the ``meta`` device (shapes only, no data): a tensor made without
``device=`` lands on the CPU and the op mixing it with meta tensors raises, as it would on CUDA.
An AST scan of lib/ finds tensor factories without ``device=`` and generators that would not
match a CUDA device.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lib.config.config import load_cfg
from lib.model import build_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["clevr6_prop.yaml", "multi_dsprites.yaml", "tetrominoes.yaml", "quickstart.yaml"]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_runs_train_and_eval_on_meta(config):
    cfg = load_cfg(str(ROOT / "configs" / config), freeze=False)
    if config == "quickstart.yaml":
        model = build_model(cfg).to("meta")  # a CPU-built model moved over
    else:
        with torch.device("meta"):  # the paper models, built there (skips the CPU init)
            model = build_model(cfg)
    side = cfg.INPUT.IMAGE_SIZE
    images = torch.empty(2, 3, side, side, device="meta")

    out = model(images)
    assert out["loss"].device.type == "meta" and out["loss"].shape == ()
    t, k = cfg.MODEL.IODINE.NUM_ITERS, cfg.MODEL.IODINE.NUM_SLOTS
    assert out["masks"].shape == (2, t + 1, k, side, side)
    out["loss"].backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(n for n, p in trainable.items() if p.grad is None)
    assert not missing, f"{config}: trainable parameters without a gradient: {missing}"

    model.eval()
    with torch.no_grad():
        out = model(images, num_slots=k + 2)
    assert out["masks"].shape == (2, t + 1, k + 2, side, side)
    assert out["masks"].device.type == "meta"


# Tensor factories that allocate on the default device unless told otherwise (*_like copy the
# device of their argument and are fine).
FACTORIES = {
    "zeros", "ones", "empty", "full", "arange", "linspace", "logspace", "rand", "randn",
    "randint", "randperm", "tensor", "as_tensor", "eye", "empty_strided", "normal", "tril_indices",
    "triu_indices", "scalar_tensor",
}  # fmt: skip
# file:function -> why a factory there needs no device=.
ALLOWED = {
    "lib/model/iodine.py:step_weights": "converted to a Python list at once (.tolist())",
    "lib/model/iodine.py:_noise": "eval noise drawn on the CPU generator, then moved with .to()",
    # Parameters are made on the CPU (build_model returns a CPU model) and moved by .to().
    "lib/model/iodine.py:released_initial_posterior": "init_posterior, moved with the module",
    "lib/model/layers.py:__init__": "SlotLayerNorm's nn.Parameters, moved with the module",
}


def _calls(path: Path):
    """Yield (function name, call node, attribute name) for torch.<factory>(...) calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node, func):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if isinstance(node, ast.Call):
            f = node.func
            if (
                isinstance(f, ast.Attribute)
                and isinstance(f.value, ast.Name)
                and f.value.id == "torch"
            ):
                yield func, node, f.attr
        for child in ast.iter_child_nodes(node):
            yield from visit(child, func)

    yield from visit(tree, "<module>")


def _lib_files():
    return sorted((ROOT / "lib").rglob("*.py"))


def test_tensor_factories_in_lib_name_their_device():
    offenders = []
    used_allowances = set()
    for path in _lib_files():
        rel = path.relative_to(ROOT).as_posix()
        for func, call, name in _calls(path):
            if name not in FACTORIES:
                continue
            if any(kw.arg == "device" for kw in call.keywords):
                continue
            where = f"{rel}:{func}"
            if where in ALLOWED:
                used_allowances.add(where)
                continue
            offenders.append(f"{where} line {call.lineno}: torch.{name} without device=")
    assert not offenders, "\n".join(offenders)
    stale = sorted(set(ALLOWED) - used_allowances)
    assert not stale, f"allow-list entries that match nothing any more: {stale}"


def _device_is_cpu(call: ast.Call) -> bool | None:
    """True/False when the call's device= is a literal, None when it is an expression."""
    for kw in call.keywords:
        if kw.arg == "device":
            if isinstance(kw.value, ast.Constant):
                return str(kw.value.value) == "cpu"
            return None
    return True  # no device=: the default device, the CPU


def test_generators_are_used_only_with_cpu_factories():
    # torch.randn(..., generator=g, device=cuda) needs g on CUDA; lib keeps every generator on
    # the CPU (reproducible across devices), so a generator= call must allocate on the CPU.
    offenders = []
    for path in _lib_files():
        rel = path.relative_to(ROOT).as_posix()
        for func, call, name in _calls(path):
            if name == "Generator":
                if _device_is_cpu(call) is not True:
                    offenders.append(f"{rel}:{func} line {call.lineno}: non-CPU torch.Generator")
                continue
            if any(kw.arg == "generator" for kw in call.keywords) and not _device_is_cpu(call):
                offenders.append(
                    f"{rel}:{func} line {call.lineno}: torch.{name} with generator= and a "
                    "device that may not be the CPU"
                )
    assert not offenders, "\n".join(offenders)


def test_factory_scan_finds_a_missing_device(tmp_path):
    # The scan itself can fail: a planted factory without device= is reported.
    path = tmp_path / "planted.py"
    path.write_text(
        "import torch\ndef f(n):\n    return torch.zeros(n) + torch.ones(n, device='cpu')\n"
    )
    found = [
        (func, name, any(k.arg == "device" for k in c.keywords)) for func, c, name in _calls(path)
    ]
    assert found == [("f", "zeros", False), ("f", "ones", True)]
