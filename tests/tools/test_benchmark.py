"""tools/benchmark.py on a tiny model: sane numbers, shares that add up, FLOPs vs a hand count."""

import json

from tools_helpers import load_tool

TINY = [
    "MODEL.DEVICE", "cpu", "INPUT.IMAGE_SIZE", "16", "MODEL.IODINE.NUM_SLOTS", "3",
    "MODEL.IODINE.NUM_ITERS", "2", "MODEL.IODINE.LATENT_DIM", "4",
    "MODEL.REFINEMENT.CONV_CHANNELS", "(8, 8)", "MODEL.REFINEMENT.MLP_SIZES", "(16,)",
    "MODEL.REFINEMENT.LSTM_SIZE", "16", "MODEL.DECODER.CONV_CHANNELS", "(8, 8)",
    "MODEL.DECODER.FACTORIZED_FIRST_LAYER", "False",
]  # fmt: skip


def test_benchmark_reports_consistent_numbers(tmp_path):
    out = tmp_path / "bench.json"
    bench = load_tool("benchmark")
    result = bench.main(
        ["--batch-size", "2", "--steps", "2", "--warmup", "1", "--json", str(out), *TINY]
    )
    saved = json.loads(out.read_text())
    assert saved["train_images_per_s"] == result["train_images_per_s"] > 0
    assert result["infer_images_per_s"] > 0 and result["peak_memory_mib"] > 0
    shares = result["train_shares"]
    assert set(shares) == {"decode", "grad_inputs", "refinement", "final_backward", "other"}
    assert all(0.0 <= v <= 1.0 for v in shares.values())
    assert abs(sum(shares.values()) - 1.0) < 0.05

    # Decoder forward FLOPs of one inference pass, counted by hand: T+1 decodes of K slots,
    # each conv 2 * Cin * Cout * k * k * H * W (stride 1, SAME).
    t1, k, hw = 3, 3, 16 * 16
    convs = [(4 + 1 + 2, 8), (8, 8), (8, 4)]  # (z, 5.0, coords) -> 8 -> 8 -> 4, all 3x3
    decoder = t1 * k * sum(2 * cin * cout * 9 * hw for cin, cout in convs)
    # Inference also runs T backward passes through the decoder for the gradient inputs, and
    # the refinement network; so the total is above the decoder forward alone but below the
    # decoder's forward plus three times that for backward plus the refinement.
    assert decoder < result["infer_gflop_per_image"] * 1e9 < 4 * decoder + 1e6
    assert result["train_gflop_per_image"] > result["infer_gflop_per_image"]
