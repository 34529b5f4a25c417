"""make_data_loader: batch shapes, None masks, resuming, distributed splits without padding."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from lib.data import (
    InfiniteShuffleSampler,
    collate,
    dataset_provenance,
    make_data_loader,
    make_dataset,
)
from lib.prepare import generate_dataset
from tests.data.conftest import data_cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader")
    generate_dataset(
        "tetrominoes_synth", str(path), num_examples=13, seed=0, test_size=10, progress=False
    )
    return path


def _cfg(root, **kw):
    base = dict(
        INPUT__IMAGE_SIZE=35,
        DATASETS__TRAIN=("tetrominoes_synth_train",),
        DATASETS__TEST=("tetrominoes_synth_test",),
        DATASETS__TEST_SIZE=10,
        SOLVER__IMS_PER_BATCH=8,
        TEST__IMS_PER_BATCH=6,
    )
    base.update(kw)
    return data_cfg(root, **base)


def _key(image: torch.Tensor) -> bytes:
    return (image * 255).round().to(torch.uint8).numpy().tobytes()


def test_train_batches(root):
    cfg = _cfg(root, SOLVER__ACCUMULATE_STEPS=2)
    loader = make_data_loader(cfg, True, num_replicas=2, rank=1)
    # 8 images per step over 2 processes x 2 accumulation steps: micro-batches of 2.
    batches = list(itertools.islice(loader, 20))  # more than one epoch: endless
    for images, masks in batches:
        assert images.shape == (2, 3, 35, 35) and images.dtype == torch.float32
        assert masks.shape == (2, 35, 35) and masks.dtype == torch.int64
    assert dataset_provenance(loader.dataset)[0]["source"] == "generated"


def test_train_with_worker_and_concat(root):
    cfg = _cfg(root, DATASETS__TRAIN=("tetrominoes_synth_train", "tetrominoes_synth_test"))
    cfg.DATALOADER.NUM_WORKERS = 1
    loader = make_data_loader(cfg, True)
    assert len(loader.dataset) == 23
    images, masks = next(iter(loader))
    assert images.shape == (8, 3, 35, 35) and masks.shape == (8, 35, 35)


def test_sampler_disjoint_across_ranks_and_resumable():
    size, replicas = 11, 3
    streams = [
        list(itertools.islice(InfiniteShuffleSampler(size, 5, r, replicas), 20))
        for r in range(replicas)
    ]
    # Interleaving the ranks gives the global stream: each epoch a permutation of all indices.
    merged = [streams[p % replicas][p // replicas] for p in range(60)]
    for epoch in range(5):
        assert sorted(merged[epoch * size : (epoch + 1) * size]) == list(range(size))
    assert merged[:size] != merged[size : 2 * size]  # reshuffled every epoch
    resumed = list(itertools.islice(InfiniteShuffleSampler(size, 5, 1, replicas, start=7), 13))
    assert resumed == streams[1][7:20]
    other_seed = list(itertools.islice(InfiniteShuffleSampler(size, 6, 0, 1), size))
    assert other_seed != merged[:size] and sorted(other_seed) == list(range(size))


def test_resume_continues_the_stream(root):
    cfg = _cfg(root, SOLVER__ACCUMULATE_STEPS=2, SOLVER__IMS_PER_BATCH=4)
    full = list(itertools.islice(make_data_loader(cfg, True), 10))
    resumed = list(itertools.islice(make_data_loader(cfg, True, start_iter=3), 4))
    for (a, _), (b, _) in zip(full[6:], resumed):  # 3 iterations x 2 micro-batches skipped
        assert torch.equal(a, b)
    cfg.SEED = 1
    other = next(iter(make_data_loader(cfg, True)))[0]
    assert not torch.equal(other, full[0][0])


@pytest.mark.parametrize("replicas", [1, 3, 4])
def test_test_loaders_split_without_padding(root, replicas):
    cfg = _cfg(root)
    reference = make_data_loader(cfg, False)[0][1].dataset
    expected = [_key(reference[i][0]) for i in range(len(reference))]
    seen = []
    for rank in range(replicas):
        ((name, loader),) = make_data_loader(cfg, False, num_replicas=replicas, rank=rank)
        assert name == "tetrominoes_synth_test"
        keys = []
        for images, masks in loader:
            assert images.shape[0] <= max(1, 6 // replicas) and masks.shape[0] == images.shape[0]
            keys += [_key(im) for im in images]
        assert keys == expected[rank::replicas]  # sequential order, no padding
        seen += keys
    assert sorted(seen) == sorted(expected) and len(seen) == 10


def test_none_masks(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(5):
        Image.fromarray(np.full((12, 12, 3), i * 40, np.uint8)).save(
            tmp_path / "images" / f"{i}.png"
        )
    cfg = data_cfg(
        tmp_path,
        INPUT__IMAGE_SIZE=12,
        DATASETS__TRAIN=(f"folder:{tmp_path}",),
        DATASETS__TEST=(f"folder:{tmp_path}",),
        SOLVER__IMS_PER_BATCH=2,
        TEST__IMS_PER_BATCH=4,
    )
    images, masks = next(iter(make_data_loader(cfg, True)))
    assert images.shape == (2, 3, 12, 12) and masks is None
    batches = list(make_data_loader(cfg, False)[0][1])
    assert [b[0].shape[0] for b in batches] == [4, 1] and all(b[1] is None for b in batches)
    mixed = collate(
        [(torch.zeros(3, 2, 2), torch.zeros(2, 2, dtype=torch.int64)), (torch.zeros(3, 2, 2), None)]
    )
    assert mixed[1] is None


def test_bad_batch_size(root):
    cfg = _cfg(root, SOLVER__IMS_PER_BATCH=2, SOLVER__ACCUMULATE_STEPS=2)
    with pytest.raises(ValueError, match="IMS_PER_BATCH"):
        make_data_loader(cfg, True, num_replicas=2)


def test_provenance_through_wrappers(root):
    cfg = _cfg(root)
    test = make_dataset("tetrominoes_synth_test", cfg, False)
    train = make_dataset("tetrominoes_synth_train", cfg, True)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(test, [0, 1]))
    assert dataset_provenance(loader) == [test.provenance]
    both = dataset_provenance(torch.utils.data.ConcatDataset([train, test]))
    assert [p["split"] for p in both] == ["train", "test"]
    plain = torch.utils.data.TensorDataset(torch.zeros(2))
    assert dataset_provenance(plain) == [{"source": "TensorDataset"}]
    # A copy: changing it does not change the dataset's record.
    dataset_provenance(test)[0]["split"] = "changed"
    assert test.provenance["split"] == "test"
