"""tools/benchmark.py on a tiny model: sane numbers, FLOPs against a hand count, several
configs and precisions in one JSON, the profile, refusals."""

import json

import pytest
import torch

from lib.config import load_cfg
from lib.engine.precision import cpu_bf16_support
from tests.conftest import NO_BF16_FLAGS
from tests.tools.tools_helpers import TINY_YAML, load_tool

bench = load_tool("benchmark")

B, K, T, D, S = 2, 3, 2, 4, 16
TINY = [
    "MODEL.DEVICE", "cpu", "INPUT.IMAGE_SIZE", str(S), "MODEL.IODINE.NUM_SLOTS", str(K),
    "MODEL.IODINE.NUM_ITERS", str(T), "MODEL.IODINE.LATENT_DIM", str(D),
    "MODEL.REFINEMENT.CONV_CHANNELS", "(8, 8)", "MODEL.REFINEMENT.MLP_SIZES", "(16,)",
    "MODEL.REFINEMENT.LSTM_SIZE", "16", "MODEL.DECODER.CONV_CHANNELS", "(8, 8)",
    "MODEL.DECODER.FACTORIZED_FIRST_LAYER", "False",
]  # fmt: skip
QUICK = ["--batch-size", "1", "--steps", "1", "--warmup", "0", "--mode", "infer"]


def _conv(cin: int, cout: int, k: int, side: int) -> int:
    return 2 * cin * cout * k * k * side * side


# FLOPs of one decode of one slot, by hand: (z, 5.0, 2 coords) -> 8 -> 8 -> 4, 3x3, stride 1.
DECODE = _conv(D + 1 + 2, 8, 3, S) + _conv(8, 8, 3, S) + _conv(8, 4, 3, S)
# One refinement call for one slot: 18 image channels (capacity 1, components 3, coordinates
# 2, counterfactual 1, dcomponents 3, dmask 1, image 3, log_prob 1, mask 1, posterior 1,
# pred_mask 1) -> stride-2 convs 8 (8x8) -> 8 (4x4); MLP 8 -> 16; LSTM on 16 + 2D + 1 + 2D
# inputs, 16 units; head 16 -> 2D.
VECTOR = 16 + 2 * D + 1 + 2 * D
REFINE = (
    _conv(18, 8, 3, S // 2)
    + _conv(8, 8, 3, S // 4)
    + 2 * 8 * 16
    + 2 * VECTOR * 4 * 16
    + 2 * 16 * 4 * 16
    + 2 * 16 * 2 * D
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """One CLI run on the tiny model (2 timed steps per mode), read back from its JSON."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["--batch-size", str(B), "--steps", "2", "--warmup", "1", "--json", str(out), *TINY]
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def test_speed_and_memory(result):
    assert len(result["runs"]) == 1 and "tools/benchmark.py" in result["command"]
    run = result["runs"][0]
    assert run["config_file"] == "" and run["precision"] == "fp32" and run["overrides"] == TINY
    assert run["setup"]["batch_size"] == B and run["env"]["device"] == "cpu"
    assert run["env"]["torch"] == torch.__version__ and run["env"]["device_name"]
    assert load_cfg(None, TINY).dump() == run["config"]
    for mode in ("train", "infer"):
        r = run[mode]
        assert r["images_per_s"] > 0
        assert r["images_per_s"] == pytest.approx(B / r["step_time_s"]["median"])
        assert len(r["step_time_s"]["all"]) == 2
        assert r["peak_memory_bytes"] > 0 and r["peak_memory_increase_bytes"] >= 0
        assert "top_operators" not in r  # no --profile


def test_flops_match_a_hand_count(result):
    infer, train = result["runs"][0]["infer"], result["runs"][0]["train"]
    # The forward calls of the submodules: T+1 decodes, T refinement calls. Each
    # gradient-input call backpropagates to z through every decoder conv: one input gradient
    # per conv, as many FLOPs as its forward; no weight gradients.
    forward = (T + 1) * K * DECODE + T * K * REFINE
    grad_inputs = T * K * DECODE
    assert infer["flops_per_image"] == forward + grad_inputs
    # The final backward: weight and input gradients of every decode and refinement call
    # (some input gradients are not needed), nothing of second order.
    backward = train["flops_per_image"] - infer["flops_per_image"]
    assert (T + 1) * K * DECODE < backward <= 2 * (T + 1) * K * DECODE + 2 * T * K * REFINE
    for r in (infer, train):
        rate = r["flops_per_image"] * B / r["step_time_s"]["median"] / 1e9
        assert r["gflops_per_s"] == pytest.approx(rate)


def test_configs_and_precisions_give_one_json(tmp_path, restore_precision_switches):
    # Two config files x two precisions: four runs, in that order, in one JSON.
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    text = TINY_YAML.format(root=tmp_path)  # no dataset is read
    first.write_text(text)
    second.write_text(text.replace("IMAGE_SIZE: 16", "IMAGE_SIZE: 8"))
    out = tmp_path / "runs.json"
    argv = [*QUICK, "--config-file", str(first), "--configs", str(second)]
    argv += ["--precision", "fp32", "tf32", "--json", str(out)]
    assert bench.main(argv) == 0
    runs = json.loads(out.read_text())["runs"]
    got = [(r["config_file"], r["precision"], r["setup"]["image_size"]) for r in runs]
    assert got == [
        (str(first), "fp32", 16), (str(first), "tf32", 16),
        (str(second), "fp32", 8), (str(second), "tf32", 8),
    ]  # fmt: skip
    assert all(r["setup"]["precision"]["precision"] == r["precision"] for r in runs)
    assert all(r["infer"]["images_per_s"] > 0 and "train" not in r for r in runs)


def test_profile_gives_top_operators_and_part_ranges(tmp_path):
    out = tmp_path / "prof.json"
    argv = [*QUICK, "--mode", "train", "--profile", "--profile-steps", "2", "--json", str(out)]
    assert bench.main([*argv, *TINY]) == 0
    r = json.loads(out.read_text())["runs"][0]["train"]
    names = [op["name"] for op in r["top_operators"]]
    assert 0 < len(names) <= 15 and any("conv" in n for n in names), names
    times = [op["self_time_s"] for op in r["top_operators"]]
    assert times == sorted(times, reverse=True)
    # The ranges come from hooks on the submodules: one per call, T+1 decodes, T refinements.
    ranges = r["ranges"]
    assert ranges["iodine.decoder"]["calls"] == 2 * (T + 1)
    assert ranges["iodine.refinement"]["calls"] == 2 * T
    assert all(ranges[n]["total_time_s"] > 0 for n in ("iodine.decoder", "iodine.refinement"))


def test_bad_arguments(capsys, tmp_path):
    assert bench.main(["MODEL.NOPE", "1"]) == 1
    assert "MODEL.NOPE" in capsys.readouterr().err
    assert bench.main([*TINY, "--steps", "0"]) == 1
    assert "steps >= 1" in capsys.readouterr().err
    missing = str(tmp_path / "missing.yaml")
    assert bench.main([*TINY, "--configs", missing]) == 1
    assert "missing.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--nope", "1"])


def test_precision_device_and_compile_flags_become_config_keys(restore_precision_switches):
    args = bench.build_parser().parse_args(["--precision", "tf32", "--compile", "on"])
    args.opts = TINY
    args.device = "cpu"
    cfg = bench.benchmark_cfg(args)
    assert (cfg.MODEL.PRECISION, cfg.MODEL.COMPILE, cfg.MODEL.DEVICE) == ("tf32", True, "cpu")
    assert bench.benchmark_cfg(args, precision="bf16").MODEL.PRECISION == "bf16"
    args.precision, args.compile = None, "off"
    cfg = bench.benchmark_cfg(args)
    assert (cfg.MODEL.PRECISION, cfg.MODEL.COMPILE) == ("fp32", False)


@pytest.mark.skipif(
    not cpu_bf16_support()[0], reason=f"this CPU has no native bf16 ({cpu_bf16_support()[1]})"
)
def test_bf16_recorded_in_the_json(tmp_path, restore_precision_switches):
    out = tmp_path / "bench.json"
    argv = [*QUICK, "--precision", "bf16", "--json", str(out), *TINY, "INPUT.IMAGE_SIZE", "8"]
    assert bench.main(argv) == 0
    setup = json.loads(out.read_text())["runs"][0]["setup"]
    assert setup["precision"]["precision"] == "bf16"
    assert "bf16 autocast on CPU" in setup["precision"]["support"]


def test_bf16_refusal_recorded_in_the_json(tmp_path, capsys, fake_cpu_flags):
    fake_cpu_flags(NO_BF16_FLAGS)
    out = tmp_path / "bench.json"
    argv = [*QUICK, "--precision", "bf16", "--json", str(out), *TINY, "INPUT.IMAGE_SIZE", "8"]
    assert bench.main(argv) == 1
    err = capsys.readouterr().err
    assert "MODEL.PRECISION bf16 needs a CPU with native bf16" in err
    assert "no avx512_bf16/amx_bf16" in err and len(err.strip().splitlines()) == 1
    (refused,) = json.loads(out.read_text())["runs"]
    assert refused["refused"] in err and refused["precision"] == "bf16"
    assert "train" not in refused and "infer" not in refused


def test_a_refused_precision_leaves_the_other_runs(tmp_path, capsys, fake_cpu_flags):
    # fp32 runs, bf16 is refused on this (faked) CPU: both are in the JSON, the exit is 1.
    fake_cpu_flags(NO_BF16_FLAGS)
    out = tmp_path / "bench.json"
    argv = [*QUICK, "--precision", "fp32", "bf16", "--json", str(out), *TINY]
    assert bench.main([*argv, "INPUT.IMAGE_SIZE", "8"]) == 1
    assert "needs a CPU with native bf16" in capsys.readouterr().err
    fp32, bf16 = json.loads(out.read_text())["runs"]
    assert fp32["precision"] == "fp32" and fp32["infer"]["images_per_s"] > 0
    assert bf16["precision"] == "bf16" and "refused" in bf16
