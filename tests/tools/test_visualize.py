"""tools/visualize.py: every subcommand on a tiny random-weight model and generated data.

The fast tier draws refinement, curves and a decomposition without masks in-process; the
figures with many panels, the full evaluation and the subprocess run are marked slow."""

import os
import subprocess

import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score
from torch.utils.tensorboard import SummaryWriter

from lib.analysis.layout import GAP_PX, ROW_LABEL_PX, figure_pixel_size, save_figure
from lib.cli import parse_tool_args
from lib.config import load_cfg
from lib.data import make_dataset
from lib.engine.checkpoint import Checkpointer
from lib.model import build_model
from tests.tools.tools_helpers import PYTHON, REPO, load_tool, subprocess_env, write_config

visualize = load_tool("visualize")

K, T, CELL = 3, 2, 48
STEP = CELL + GAP_PX


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    """A tiny config, a random-weight checkpoint at iteration 7 and TensorBoard scalars."""
    folder = tmp_path_factory.mktemp("vis")
    config = write_config(str(folder), data_root)
    out = str(folder / "run")
    cfg = load_cfg(config, ["OUTPUT_DIR", out])
    torch.manual_seed(0)
    Checkpointer(build_model(cfg), save_dir=out).save(7, cfg.dump())
    writer = SummaryWriter(out)
    for step in (1, 2, 3):
        writer.add_scalar("loss/total", 100.0 - step, step)
        for t in range(T + 1):
            writer.add_scalar(f"loss/nll_t{t}", 50.0 - step, step)
            writer.add_scalar(f"loss/kl_t{t}", 1.0 + step, step)
    writer.add_scalar("eval/fg_ari", 0.3, 2)
    writer.close()
    return {"config": config, "out": out, "folder": str(folder)}


def _draw(run, argv):
    """Run one subcommand in-process; returns (every text of the figure joined by spaces,
    (width, height) of the written PNG, checked against what the figure promises)."""
    args = parse_tool_args(visualize.build_parser(), argv)
    cfg = visualize.build_cfg(args)
    fig = visualize.COMMAND_FUNCTIONS[args.command](args, cfg)
    texts = " ".join(t.get_text() for t in fig.texts)
    path = args.out
    size = save_figure(fig, path)
    with Image.open(path) as image:
        assert image.size == size == figure_pixel_size(fig)
    return texts, size


def _argv(run, command, *extra):
    out = os.path.join(run["folder"], f"{command}.png")
    return [
        command,
        "--config-file",
        run["config"],
        "--out",
        out,
        "--cell-size",
        str(CELL),
        *extra,
        "OUTPUT_DIR",
        run["out"],
    ]


def _width(columns):
    return ROW_LABEL_PX + columns * STEP + GAP_PX


def test_parser_options():
    # Each subcommand's options, as tools/README.md lists them (--help texts are checked by eye).
    common = {"config_file", "out", "dpi", "cell_size", "opts", "command"}
    model_data = {"weights", "dataset", "index"}
    expected = {
        "decomposition": common | model_data | {"background", "num_images", "steps"},
        "refinement": common | model_data,
        "traversal": common | model_data | {"background", "slot", "dims", "range",
                                             "range_unit", "steps_per_dim", "show_component"},
        "generalisation": common | model_data | {"background", "num_images", "num_slots",
                                                  "full_eval"},
        "curves": common | {"logdir"},
        "dataset": common | {"dataset", "index", "num_images", "pairs_per_row"},
    }  # fmt: skip
    parser = visualize.build_parser()
    for command, dests in expected.items():
        args = parse_tool_args(parser, [command, "--config-file", "c.yaml", "SEED", "3"])
        assert set(vars(args)) == dests, command
        assert args.command == command and args.opts == ["SEED", "3"]
    args = parse_tool_args(parser, ["traversal", "--range-unit", "prior", "--range", "1.5"])
    assert (args.range_unit, args.range, args.slot, args.dims, args.steps_per_dim) == (
        "prior", 1.5, -1, 5, 7,
    )  # fmt: skip
    assert set(visualize.COMMAND_FUNCTIONS) == set(expected)


@pytest.mark.slow
def test_decomposition(run):
    texts, (width, height) = _draw(run, _argv(run, "decomposition", "--num-images", "2"))
    # input, recon, argmax, true masks, then one column per slot.
    assert width == _width(4 + K)
    assert "model_0000007.pth (iteration 7)" in texts and "tetrominoes_synth_test" in texts
    assert "tiny.yaml" in texts and "fg ARI" in texts and "slot 2" in texts

    _, (width3, height3) = _draw(run, _argv(run, "decomposition", "--num-images", "3"))
    _, (width_s, height_s) = _draw(run, _argv(run, "decomposition", "--num-images", "2", "--steps"))
    assert width3 == width_s == width
    row = height3 - height
    assert row > 2 * CELL  # a row holds slot tiles twice as tall as wide
    # One more row per step t = 0..T (their labels, "t=0 argmax slot", may wrap more).
    assert height_s >= height + (T + 1) * row


def test_decomposition_without_masks(run, tmp_path):
    # A folder dataset of images only: no true-mask column, no ARI.
    folder = tmp_path / "pngs"
    os.makedirs(folder / "images")
    for i in range(2):
        pixels = (torch.rand(20, 24, 3) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / "images" / f"{i:02d}.png")
    argv = _argv(run, "decomposition", "--dataset", f"folder:{folder}", "--background", "black")
    texts, (width, _) = _draw(run, argv)
    assert width == _width(3 + K)
    assert "no true masks" in texts and "fg ARI" not in texts


def test_refinement(run):
    texts, (width, _) = _draw(run, _argv(run, "refinement", "--index", "1"))
    assert width == _width(T + 2)  # reference column + steps 0..T
    assert "image #1" in texts
    # The printed numbers, recomputed here: the checkpoint's model on test image 1, MSE with
    # numpy and the ARIs with scikit-learn.
    cfg = load_cfg(run["config"], ["OUTPUT_DIR", run["out"]])
    model = build_model(cfg)
    Checkpointer(model, save_dir=run["out"], save_to_disk=False).load(
        os.path.join(run["out"], "model_0000007.pth"), weights_only=True
    )
    image, mask = make_dataset("tetrominoes_synth_test", cfg, False)[1]
    with torch.no_grad():
        out = model.eval()(image[None])
    true = mask.numpy()
    for t in range(T + 1):
        mse = float(((out["recon"][0, t].numpy() - image.numpy()) ** 2).mean())
        pred = out["masks"][0, t].argmax(dim=0).numpy()
        ari = adjusted_rand_score(true.ravel(), pred.ravel())
        fg_ari = adjusted_rand_score(true[true > 0], pred[true > 0])
        assert f"t={t} recon\nMSE {mse:.4f}" in texts
        assert f"t={t} argmax\nARI {100 * ari:.1f}\nfg ARI {100 * fg_ari:.1f}" in texts


@pytest.mark.slow
def test_traversal(run):
    argv = _argv(run, "traversal", "--dims", "2", "--steps-per-dim", "5", "--show-component")
    texts, (width, height) = _draw(run, argv)
    assert width == _width(5)
    _, (_, shorter) = _draw(run, _argv(run, "traversal", "--dims", "2", "--steps-per-dim", "5"))
    assert height > shorter  # the component rows
    for unit in ("posterior", "prior"):
        argv = _argv(run, "traversal", "--slot", "0", "--dims", "1", "--range-unit", unit)
        texts, _ = _draw(run, argv)
        assert "slot 0, offsets in" in texts and f"{unit} std" in texts
    assert visualize.main(_argv(run, "traversal", "--slot", "9")) == 1
    assert visualize.main(_argv(run, "traversal", "--steps-per-dim", "0")) == 1  # one line


@pytest.mark.slow
def test_generalisation(run, capsys):
    argv = _argv(run, "generalisation", "--dataset", "tetrominoes_synth", "--num-images", "2")
    texts, (width, _) = _draw(run, [*argv[:-2], "--num-slots", "5", "--full-eval", *argv[-2:]])
    assert width == _width(4 + 5)
    assert "dataset tetrominoes_synth " in texts
    assert "computed directly on these 2 images" in texts
    assert "K=3 (as trained): fg ARI" in texts and "K=5: fg ARI" in texts
    assert "do_evaluate on all 30 images of tetrominoes_synth" in texts
    # TEST.NUM_SLOTS as a trailing override works too; no extra slots is an error.
    assert visualize.main([*argv, "TEST.NUM_SLOTS", "4"]) == 0
    assert visualize.main(argv) == 1
    assert "--num-slots" in capsys.readouterr().err


def test_curves(run):
    texts, size = _draw(run, _argv(run, "curves", "--dpi", "60"))
    assert size == (600, 432)
    assert "last logged iteration 3" in texts
    assert visualize.main(_argv(run, "curves", "--logdir", os.path.join(run["folder"], "x"))) == 1


@pytest.mark.slow
def test_dataset_command_line(run):
    out = os.path.join(run["folder"], "dataset.png")
    cmd = [
        PYTHON,
        os.path.join(REPO, "tools", "visualize.py"),
        "dataset",
        "--config-file",
        run["config"],
        "--dataset",
        "tetrominoes_synth_test",
        "--num-images",
        "5",
        "--pairs-per-row",
        "2",
        "--cell-size",
        str(CELL),
        "--out",
        out,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        width, height = image.size
    assert f"({width}x{height} px)" in result.stdout
    assert width == 4 * STEP + GAP_PX  # 2 image/mask pairs per row, no row labels
    assert height > 3 * CELL  # 3 rows


def test_checkpoint_resolution(run, tmp_path, capsys):
    # --weights wins over last_checkpoint.
    cfg = load_cfg(run["config"], ["OUTPUT_DIR", run["out"]])
    other = str(tmp_path / "other")
    path = Checkpointer(build_model(cfg), save_dir=other).save(3, cfg.dump())
    argv = _argv(run, "refinement")
    texts, _ = _draw(run, [*argv[:-2], "--weights", path, *argv[-2:]])
    assert "model_0000003.pth (iteration 3)" in texts
    # Neither MODEL.WEIGHT nor last_checkpoint: a one-line error.
    empty = str(tmp_path / "empty")
    assert visualize.main([*argv[:-1], empty]) == 1
    assert "nothing to draw" in capsys.readouterr().err
