"""make_dataset: registry, splits from meta.json, read-only errors, provenance, resizing."""

import json
import logging
import os
import sys

import numpy as np
import pytest
import torch

from lib.data import (
    DATASET_REGISTRY,
    UnknownDatasetError,
    dataset_provenance,
    make_data_loader,
    make_dataset,
)
from lib.errors import ConfigError
from lib.prepare import generate_dataset
from tests.data.conftest import data_cfg


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(UnknownDatasetError) as info:
        make_dataset("clevr7_train", data_cfg(tmp_path), True)
    message = str(info.value)
    for name in (
        "clevr6_train",
        "clevr10_test",
        "multi_dsprites_synth",
        "tetrominoes_synth_test",
        "folder:<path>",
    ):
        assert name in message


def test_missing_folder_is_an_error_naming_the_command(tmp_path):
    # Reading never generates: the tools call lib.prepare.prepare_missing first.
    with pytest.raises(FileNotFoundError) as info:
        make_dataset("tetrominoes_synth_train", data_cfg(tmp_path / "root"), True)
    message = str(info.value)
    assert os.path.join(str(tmp_path / "root"), "tetrominoes_synth") in message
    assert "tools/prepare_data.py --dataset tetrominoes" in message
    assert not os.path.exists(tmp_path / "root")


def test_split_follows_meta_not_config(tmp_path, caplog):
    path = generate_dataset(
        "tetrominoes_synth", str(tmp_path), num_examples=5, seed=0, test_size=2, progress=False
    )
    # DATASETS.TEST_SIZE is a preparation key: the split is meta.json's num_test.
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=35, DATASETS__TEST_SIZE=3)
    full = make_dataset("tetrominoes_synth", cfg, False)
    with caplog.at_level(logging.WARNING):
        train = make_dataset("tetrominoes_synth_train", cfg, True)
        test = make_dataset("tetrominoes_synth_test", cfg, False)
    assert not caplog.records
    assert (len(full), len(train), len(test)) == (7, 5, 2)
    stored = np.load(os.path.join(path, "images.npy"))
    for i in range(2):
        np.testing.assert_array_equal(test.load_arrays(i)[0], stored[5 + i])
    assert test.provenance["split_range"] == [5, 7] and train.provenance["split_range"] == [0, 5]


def test_meta_without_num_test_falls_back_to_320(tmp_path, caplog):
    path = generate_dataset(
        "sprites", str(tmp_path), num_examples=3, seed=0, test_size=322, progress=False
    )
    meta_path = os.path.join(path, "meta.json")
    meta = json.load(open(meta_path))
    del meta["num_test"]
    json.dump(meta, open(meta_path, "w"))
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=32)
    with caplog.at_level(logging.WARNING):
        test = make_dataset("sprites_test", cfg, False)
    assert len(test) == 320 and test.start == 5
    assert path in caplog.text and "num_test" in caplog.text
    assert len(make_dataset("sprites_train", cfg, True)) == 5


@pytest.mark.parametrize("num_test", [-1, 8, 1.5])
def test_bad_num_test_is_error(tmp_path, num_test):
    path = generate_dataset(
        "tetrominoes_synth", str(tmp_path), num_examples=4, seed=0, test_size=2, progress=False
    )
    meta = json.load(open(os.path.join(path, "meta.json")))
    meta["num_test"] = num_test
    json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
    with pytest.raises(ValueError, match="num_test"):
        make_dataset("tetrominoes_synth_test", data_cfg(tmp_path), False)


def test_bad_format_version(tmp_path):
    path = generate_dataset(
        "tetrominoes_synth", str(tmp_path), num_examples=2, seed=0, test_size=1, progress=False
    )
    meta = json.load(open(os.path.join(path, "meta.json")))
    meta["format_version"] = 99
    json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
    with pytest.raises(ValueError, match="format_version"):
        make_dataset("tetrominoes_synth", data_cfg(tmp_path), False)


def test_resize_and_max_objects(tmp_path):
    generate_dataset(
        "multi_dsprites_synth", str(tmp_path), num_examples=6, seed=1, test_size=2, progress=False
    )
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=24, DATASETS__TEST_SIZE=2)
    ds = make_dataset("multi_dsprites_synth_train", cfg, True)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
        assert image.min() >= 0 and image.max() <= 1
        stored_image, stored_mask = ds.load_arrays(i)
        assert set(mask.unique().tolist()) <= set(np.unique(stored_mask).tolist())
        # Antialiased downsampling keeps the mean colour (a plain subsample would not).
        mean = torch.tensor(stored_image).float().mean(dim=(0, 1)) / 255
        torch.testing.assert_close(image.mean(dim=(1, 2)), mean, atol=0.01, rtol=0)
    cfg.DATASETS.MAX_OBJECTS = 1
    ds = make_dataset("multi_dsprites_synth_train", cfg, True)
    with pytest.raises(ValueError, match=r"example \d+: label map has \d objects.*MAX_OBJECTS = 1"):
        for i in range(len(ds)):
            ds[i]


PLUGIN = """
import torch
from lib.data.build import register_dataset

BUILT = []


@register_dataset("plugin_train", value=0.25)
@register_dataset("plugin_test", value=0.75)
class Plugin(torch.utils.data.Dataset):
    def __init__(self, cfg, is_train, value):
        BUILT.append(is_train)
        self.size, self.value = cfg.INPUT.IMAGE_SIZE, value
        self.provenance = {"source": "plugin", "value": value}

    def __len__(self):
        return 8

    def __getitem__(self, i):
        mask = torch.zeros(self.size, self.size, dtype=torch.int64)
        mask[: self.size // 2] = 1
        return torch.full((3, self.size, self.size), self.value), mask
"""


@pytest.mark.parametrize("how", ["file", "module"])
def test_a_dataset_class_registers_itself_in_its_own_module(tmp_path, monkeypatch, how):
    (tmp_path / "my_plugin_sets.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = str(tmp_path / "my_plugin_sets.py") if how == "file" else "my_plugin_sets"
    for key in ("plugin_train", "plugin_test"):
        monkeypatch.delitem(DATASET_REGISTRY, key, raising=False)
    monkeypatch.delitem(sys.modules, "my_plugin_sets", raising=False)
    cfg = data_cfg(
        tmp_path,
        INPUT__IMAGE_SIZE=8,
        DATASETS__IMPORTS=(name,),
        DATASETS__TRAIN=("plugin_train",),
        DATASETS__TEST=("plugin_test",),
        SOLVER__IMS_PER_BATCH=4,
    )
    images, masks = next(iter(make_data_loader(cfg, True)))
    assert images.shape == (4, 3, 8, 8) and torch.all(images == 0.25) and masks.shape == (4, 8, 8)
    [(test_name, loader)] = make_data_loader(cfg, False)
    assert test_name == "plugin_test" and dataset_provenance(loader)[0]["value"] == 0.75
    with pytest.raises(ConfigError, match="DATASETS.IMPORTS: no"):
        make_dataset("plugin_train", data_cfg(tmp_path, DATASETS__IMPORTS=("no_such_mod",)), True)


@pytest.mark.slow  # trains 2 iterations through tools/train_net.py
def test_train_net_builds_the_training_set_once_and_prepares_once(tmp_path, monkeypatch):
    import lib.prepare
    from tests.tools.tools_helpers import load_tool

    (tmp_path / "counted_sets.py").write_text(PLUGIN.replace("plugin_", "counted_"))
    for key in ("counted_train", "counted_test"):
        monkeypatch.delitem(DATASET_REGISTRY, key, raising=False)
    train_net = load_tool("train_net")
    calls = []
    real = lib.prepare.prepare_missing

    def counting(cfg, names):
        calls.append(list(names))
        return real(cfg, names)

    monkeypatch.setattr(lib.prepare, "prepare_missing", counting)
    monkeypatch.setattr(train_net, "prepare_missing", counting)
    argv = ["OUTPUT_DIR", str(tmp_path / "run"), "MODEL.DEVICE", "cpu", "INPUT.IMAGE_SIZE", "16"]
    argv += ["INPUT.RESIZE", "bilinear", "DATASETS.IMPORTS", f"('{tmp_path / 'counted_sets.py'}',)"]
    argv += ["DATASETS.TRAIN", "counted_train", "DATASETS.TEST", "counted_test"]
    argv += ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "2"]
    argv += [
        "MODEL.IODINE.NUM_SLOTS",
        "2",
        "MODEL.IODINE.NUM_ITERS",
        "1",
        "TEST.IMS_PER_BATCH",
        "2",
    ]
    argv += ["MODEL.REFINEMENT.CONV_CHANNELS", "(4,)", "MODEL.DECODER.CONV_CHANNELS", "(4,)"]
    argv += ["MODEL.REFINEMENT.MLP_SIZES", "(8,)", "MODEL.REFINEMENT.LSTM_SIZE", "8"]
    argv += ["MODEL.IODINE.LATENT_DIM", "4", "DATALOADER.NUM_WORKERS", "0", "SEED", "1"]
    assert train_net.main(argv) == 0
    built = sys.modules[DATASET_REGISTRY["counted_train"][0].__module__].BUILT
    assert built.count(True) == 1 and built.count(False) == 1  # training set once, held-out once
    assert calls == [["counted_train", "counted_test"]]


def test_imported_files_with_one_stem_are_two_modules_and_a_missing_dependency_stays(
    tmp_path, monkeypatch
):
    from lib.data.build import import_dataset_modules

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "sets.py").write_text(
            "from lib.data import register_dataset\n\n\n"
            f"@register_dataset('stem_{sub}_train')\nclass S{sub}:\n    pass\n"
        )
        monkeypatch.delitem(DATASET_REGISTRY, f"stem_{sub}_train", raising=False)
    import_dataset_modules([str(tmp_path / "a" / "sets.py"), str(tmp_path / "b" / "sets.py")])
    assert {"stem_a_train", "stem_b_train"} <= set(DATASET_REGISTRY)
    for sub in ("a", "b"):
        del DATASET_REGISTRY[f"stem_{sub}_train"]
    # A module that exists but lacks a dependency keeps Python's error (not "no module").
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_of_needs_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_needs_dep"):
        import_dataset_modules(["needs_dep"])


@pytest.mark.parametrize("crop", [(0, 100, 0, 50), (10, 5, 10, 5), (0, 4, 0)])
def test_a_crop_that_is_not_a_square_box_is_refused(tmp_path, crop):
    from lib.data.datasets.base import ItemFormat
    from lib.errors import DatasetError

    with pytest.raises(DatasetError, match="INPUT.CROP"):
        ItemFormat.from_cfg(data_cfg(tmp_path, INPUT__CROP=crop), True, "prepared")
