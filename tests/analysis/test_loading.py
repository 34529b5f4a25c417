"""lib/analysis/loading.py: checkpoint loading, image batches, the forward pass, the heading."""

import pytest
import torch

from lib.analysis.loading import figure_heading, load_model, run_model, take_images
from lib.config import get_cfg
from lib.engine.checkpoint import Checkpointer
from lib.errors import RunError
from lib.model import build_model

from .conftest import K, T


def _items(n, with_masks=True):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(3, 6, 6, generator=g), torch.full((6, 6), i) if with_masks else None)
        for i in range(n)
    ]


def test_take_images_clips_and_stacks():
    items = _items(5)
    batch = take_images(items, "toy", 3, 4)
    assert batch.dataset == "toy" and batch.indices == [3, 4]  # clipped at the end
    for row, i in enumerate((3, 4)):
        assert torch.equal(batch.images[row], items[i][0])
        assert torch.equal(batch.masks[row], items[i][1])
    assert batch.labels == ["#3", "#4"]
    assert torch.equal(batch.mask(1), items[4][1])
    # A count below one still takes one image.
    assert take_images(items, "toy", 0, 0).indices == [0]


def test_take_images_without_masks_and_out_of_range():
    batch = take_images(_items(2, with_masks=False), "pngs", 0, 2)
    assert batch.masks is None and batch.mask(0) is None
    with pytest.raises(RunError, match="--index 2 is out of range: toy has 2 images"):
        take_images(_items(2), "toy", 2, 1)
    with pytest.raises(RunError):
        take_images(_items(2), "toy", -1, 1)


def test_run_model_outputs_on_cpu(tiny_model):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 8, 8)
    out = run_model(tiny_model, images, torch.device("cpu"), None, None)
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in out.values())
    assert out["masks"].shape == (2, T + 1, K, 8, 8)
    # The reconstruction is the mask-weighted sum of the components, written as a loop.
    recon = torch.zeros_like(out["recon"])
    for k in range(K):
        recon += out["masks"][:, :, k, None] * out["components"][:, :, k]
    torch.testing.assert_close(out["recon"], recon, atol=1e-5, rtol=0)
    # K and T at test time; 0 means as trained.
    more = run_model(tiny_model, images, torch.device("cpu"), 5, 1)
    assert more["masks"].shape == (2, 2, 5, 8, 8)
    as_trained = run_model(tiny_model, images, torch.device("cpu"), 0, 0)["masks"]
    assert as_trained.shape[1:3] == (T + 1, K)


def test_figure_heading():
    assert (
        figure_heading("refinement", "cfg.yaml", "/runs/a/model_0000007.pth", 7, "sprites_test")
        == "refinement | config cfg.yaml | checkpoint model_0000007.pth (iteration 7) | "
        "dataset sprites_test"
    )
    assert figure_heading("dataset", "", None, None, "") == "dataset | config (defaults)"


def _tiny_cfg(out_dir, weight=""):
    cfg = get_cfg()
    cfg.merge_from_list(
        ["MODEL.IODINE.NUM_SLOTS", K, "MODEL.IODINE.NUM_ITERS", T, "MODEL.IODINE.LATENT_DIM", 6,
         "MODEL.REFINEMENT.CONV_CHANNELS", (8, 8), "MODEL.REFINEMENT.MLP_SIZES", (16,),
         "MODEL.REFINEMENT.LSTM_SIZE", 16, "MODEL.DECODER.CONV_CHANNELS", (8, 8),
         "MODEL.FACTOR_REGRESSOR.ENABLED", "off", "MODEL.DEVICE", "cpu",
         "OUTPUT_DIR", str(out_dir), "MODEL.WEIGHT", weight]
    )  # fmt: skip
    return cfg


def test_load_model_reads_the_last_checkpoint(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    torch.manual_seed(3)
    saved = build_model(cfg)
    path = Checkpointer(saved, save_dir=str(tmp_path)).save(11, cfg.dump())
    loaded = load_model(cfg)
    assert loaded.checkpoint == path and loaded.iteration == 11
    assert loaded.device.type == "cpu" and not loaded.model.training
    state = loaded.model.state_dict()
    for name, value in saved.state_dict().items():
        assert torch.equal(state[name], value), name


def test_load_model_without_checkpoint(tmp_path):
    with pytest.raises(RunError, match="nothing to draw"):
        load_model(_tiny_cfg(tmp_path / "empty"))
