"""tools/gpu_check.py's plumbing on the CPU: entries, recorded failures, training curve."""

import json

import pytest

from lib.engine import gpu_check as gpu_check_lib
from tests.conftest import NO_BF16_FLAGS
from tests.tools.tools_helpers import load_tool

gpu_check = load_tool("gpu_check")

TINY = [
    "INPUT.IMAGE_SIZE", "8", "MODEL.IODINE.NUM_ITERS", "1", "SOLVER.IMS_PER_BATCH", "4",
    "MODEL.DECODER.CONV_CHANNELS", "(8,8)", "MODEL.REFINEMENT.CONV_CHANNELS", "(8,8)",
    "DATASETS.TEST_SIZE", "8", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


@pytest.mark.slow
def test_gpu_check_on_cpu(
    tmp_path, monkeypatch, capsys, restore_precision_switches, fake_cpu_flags
):
    # A CPU without native bf16, on every machine: bf16 entries are refused, not crashed on.
    fake_cpu_flags(NO_BF16_FLAGS)
    real = gpu_check_lib.run_benchmark

    def fake_compile_failure(cfg, **kwargs):
        if cfg.MODEL.COMPILE:
            raise RuntimeError("compile unavailable here")
        return real(cfg, **kwargs)

    monkeypatch.setattr(gpu_check_lib, "run_benchmark", fake_compile_failure)
    out = tmp_path / "check.json"
    argv = ["--out", str(out), "--device", "cpu", "--configs", "tetrominoes", "--precisions"]
    argv += ["fp32", "bf16", "--minutes", "0.03", "--eval-seconds", "0.5", "--steps", "1"]
    argv += ["--warmup", "0", "--generate-size", "12", "--data-root", str(tmp_path / "d")]
    assert gpu_check.main([*argv, *TINY]) == 0
    result = json.loads(out.read_text())
    entries = [(e["config"], e["precision"], e["compile"]) for e in result["benchmarks"]]
    assert entries == [
        ("tetrominoes", "fp32", "off"),
        ("tetrominoes", "bf16", "off"),
        ("tetrominoes", "fp32", "on"),
        ("tetrominoes", "bf16", "on"),
    ]
    fp32, bf16, fp32_compiled, bf16_compiled = result["benchmarks"]
    assert fp32["train"]["images_per_s"] > 0 and fp32["batch_size"] == 4
    assert fp32["precision_settings"]["precision"] == "fp32"
    assert "needs a CPU with native bf16" in bf16["refused"]
    assert "train" not in bf16 and "error" not in bf16
    for entry in (fp32_compiled, bf16_compiled):  # the fake compile failure comes first
        assert entry["error"] == "RuntimeError: compile unavailable here"
        assert "train" not in entry
    run = result["training"]
    assert run["sizes"] == {"multi_dsprites_synth_train": 12, "multi_dsprites_synth_test": 8}
    evals = run["evals"]
    assert len(evals) >= 2 and evals[0]["iteration"] == 0
    assert evals[-1]["iteration"] == run["iterations"]
    assert evals[-1]["train_images"] == 4 * run["iterations"]
    assert all(e["num_images"] == 8 and -1 <= e["fg_ari"] <= 1 for e in evals)
    table = capsys.readouterr().out
    assert "compile unavailable here" in table and "fg_ari" in table
    assert "needs a CPU with native bf16" in table
