"""Dataset registry (``make_dataset``) and data loaders (``make_data_loader``).

Adding a dataset: write a ``torch.utils.data.Dataset`` class whose constructor takes
``(cfg, is_train, **kwargs)`` and whose items are ``(image float32 (3, S, S) in [0, 1],
mask int64 (S, S) label map with 0 = background, or None)`` with S = ``INPUT.IMAGE_SIZE``;
optionally give it a ``provenance`` dict. Then register it under a name::

    from lib.data.build import DATASET_REGISTRY
    DATASET_REGISTRY["my_set_train"] = (MyDataset, {"split": "train"})

and use the name in ``DATASETS.TRAIN`` / ``DATASETS.TEST``. A folder of images needs no code:
``folder:<path>`` (see ``lib/data/datasets/folder.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, Sampler

from lib.data.datasets.external import EXTERNAL_PREFIXES, make_external_dataset
from lib.data.datasets.folder import FolderDataset
from lib.data.datasets.prepared import PreparedDataset
from lib.data.format import BUILTIN_DATASETS, SPLIT_SUFFIXES
from lib.errors import ConfigError, DatasetError, IodineError

logger = logging.getLogger(__name__)

FOLDER_PREFIX = "folder:"

# Dataset name -> (class, constructor kwargs); the class is called as cls(cfg, is_train, **kw).
DATASET_REGISTRY: dict[str, tuple[type, dict]] = {
    f"{name}{suffix}": (PreparedDataset, {"dataset": name, "split": split})
    for name in BUILTIN_DATASETS
    for suffix, split in SPLIT_SUFFIXES.items()
}


class UnknownDatasetError(IodineError, KeyError):
    """A dataset name that is neither registered nor ``folder:<path>``."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def make_dataset(
    name: str, cfg, is_train: bool, with_factors: bool = False, uint8_images: bool = False
) -> Dataset:
    """Build a dataset by name; its item format is fixed here, for the dataset's lifetime.

    Args:
        name: a key of ``DATASET_REGISTRY`` (``clevr6_train``, ``tetrominoes``, ...),
            ``folder:<path>`` or another prefix of ``lib.data.datasets.external``.
        cfg: the config.
        is_train: whether it is used for training (passed to the dataset class).
        with_factors: items ``(image, mask, factors)`` where the dataset stores factors with
            a released mapping (its ``return_factors`` then says True), else ``(image, mask)``.
        uint8_images: uint8 images where the stored frames need no resize (prepared sets;
            ``return_uint8`` says whether), else float32.

    Returns:
        The dataset; items ``(image float32 (3, S, S), mask int64 (S, S) or None)``. Built-in
        and folder datasets have ``provenance`` (dict) and ``has_masks`` attributes.

    Raises:
        UnknownDatasetError: an unknown name (the message lists the known names).
        FileNotFoundError: a missing folder (``PreparedDataset`` only reads: prepare a missing
            built-in folder first with ``lib.prepare.prepare_missing`` or
            ``tools/prepare_data.py``; see also ``FolderDataset``).
    """
    if name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX) :]
        if not path:
            raise UnknownDatasetError("dataset name 'folder:' needs a path: folder:<path>")
        return FolderDataset(cfg, is_train, path=path)
    external = make_external_dataset(name, cfg, is_train)
    if external is not None:
        return external
    if name not in DATASET_REGISTRY:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known: {sorted(DATASET_REGISTRY)}, folder:<path> or "
            f"{', '.join(p + '<path>' for p in EXTERNAL_PREFIXES)}"
        )
    cls, kwargs = DATASET_REGISTRY[name]
    if cls is PreparedDataset:
        kwargs = {**kwargs, "return_factors": with_factors, "return_uint8": uint8_images}
    return cls(cfg, is_train, **kwargs)


def dataset_provenance(dataset) -> list[dict]:
    """Provenance of a dataset, looking through ConcatDataset and wrappers.

    Args:
        dataset: a dataset from ``make_dataset``, or anything that wraps one in a
            ``dataset`` attribute (``Subset``, a ``DataLoader``), or a ``ConcatDataset``.

    Returns:
        One dict (a copy) per underlying dataset, in order; ``{"source": class name}`` for a
        dataset that records none.
    """
    if isinstance(dataset, ConcatDataset):
        return [p for d in dataset.datasets for p in dataset_provenance(d)]
    provenance = getattr(dataset, "provenance", None)
    if provenance is not None:
        return [dict(provenance)]
    inner = getattr(dataset, "dataset", None)
    if inner is not None:  # Subset, DataLoader, ...
        return dataset_provenance(inner)
    return [{"source": type(dataset).__name__}]


def collate(batch: Sequence[tuple]) -> tuple:
    """Collate function of the loaders.

    Args:
        batch: B items ``(image (3, H, W) float32, mask (H, W) int64 or None)``, or
            ``(image, mask, factors)`` from a dataset with ``return_factors`` set (factors:
            ``{name: tensor (L, ...)}``, the same names in every item).

    Returns:
        ``(images (B, 3, H, W), masks (B, H, W))``; masks is None when any item has none (ARI
        needs every label map). With factors, a third element ``{name: (B, L, ...)}``.
    """
    images = torch.stack([item[0] for item in batch])
    masks = [item[1] for item in batch]
    stacked = None if any(m is None for m in masks) else torch.stack(masks)
    if len(batch[0]) < 3:
        return images, stacked
    factors = {name: torch.stack([item[2][name] for item in batch]) for name in batch[0][2]}
    return images, stacked, factors


class InfiniteShuffleSampler(Sampler[int]):
    """Endless stream of shuffled indices, split across processes without overlap.

    The global stream is the concatenation of per-epoch permutations of ``range(size)``;
    epoch e's permutation is ``np.random.default_rng([seed, e])``. Process ``rank`` of
    ``num_replicas`` takes positions ``rank, rank + num_replicas, ...`` of it, so processes
    never share an index within an epoch and together cover every index once per epoch.

    Args:
        size: dataset length.
        seed: shuffling seed (``cfg.SEED``).
        rank, num_replicas: this process and the number of processes.
        start: samples this process has already consumed; the stream resumes after them
            without generating the skipped ones (only the current epoch's permutation).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, num_replicas: int = 1, start: int = 0):
        if size <= 0:
            raise DatasetError("cannot sample from an empty dataset")
        if not 0 <= rank < num_replicas:
            raise DatasetError(f"rank {rank} is not in [0, {num_replicas})")
        self.size, self.seed, self.rank, self.num_replicas, self.start = (
            size,
            seed,
            rank,
            num_replicas,
            start,
        )

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start * self.num_replicas + self.rank, self.size)
        while True:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            while offset < self.size:
                yield int(perm[offset])
                offset += self.num_replicas
            offset -= self.size
            epoch += 1


def _as_names(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _loader_kwargs(cfg) -> dict:
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    device = str(cfg.MODEL.DEVICE)
    return {
        "num_workers": workers,
        "collate_fn": collate,
        "pin_memory": device != "cpu" and torch.cuda.is_available(),
    }


def per_process_batch(cfg, num_replicas: int) -> int:
    """The training micro-batch of one process: what each loss (and the released gradient
    inputs' batch mean) averages over.

    Args:
        cfg: the config (SOLVER.IMS_PER_BATCH, the total over processes and accumulation
            steps; SOLVER.ACCUMULATE_STEPS).
        num_replicas: number of processes.

    Returns:
        ``IMS_PER_BATCH // (num_replicas * ACCUMULATE_STEPS)`` (a warning when not exact).

    Raises:
        ValueError: it would be 0.
    """
    accumulate = int(cfg.SOLVER.ACCUMULATE_STEPS)
    batch = int(cfg.SOLVER.IMS_PER_BATCH) // (num_replicas * accumulate)
    if batch < 1:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} is smaller than "
            f"num_replicas ({num_replicas}) x SOLVER.ACCUMULATE_STEPS ({accumulate})"
        )
    if batch * num_replicas * accumulate != cfg.SOLVER.IMS_PER_BATCH:
        logger.warning(
            "SOLVER.IMS_PER_BATCH = %d is not divisible by %d processes x %d accumulation "
            "steps: using %d images per micro-batch",
            cfg.SOLVER.IMS_PER_BATCH,
            num_replicas,
            accumulate,
            batch,
        )
    return batch


def _train_datasets(cfg, names: tuple[str, ...], with_factors: bool, uint8: bool) -> list:
    """The training datasets, all with one item format (a batch needs one)."""
    datasets = [make_dataset(name, cfg, True, with_factors, uint8) for name in names]
    factors = with_factors and all(getattr(d, "return_factors", False) for d in datasets)
    uint8_ok = uint8 and all(getattr(d, "return_uint8", False) for d in datasets)
    if with_factors and not factors:
        logger.warning(
            "the factor regressor is on but a training dataset of %s stores no factors: it is "
            "not trained (MODEL.FACTOR_REGRESSOR.ENABLED off silences this)",
            names,
        )
    if (factors, uint8_ok) != (with_factors, uint8):
        datasets = [make_dataset(name, cfg, True, factors, uint8_ok) for name in names]
    return datasets


def make_data_loader(
    cfg,
    is_train: bool,
    num_replicas: int = 1,
    rank: int = 0,
    start_iter: int = 0,
    with_factors: bool = False,
    uint8_images: bool = False,
) -> DataLoader | list[tuple[str, DataLoader]]:
    """Build the training loader or the evaluation loaders.

    Training: one endless loader over the concatenation of ``DATASETS.TRAIN``. Each process
    gets micro-batches of ``SOLVER.IMS_PER_BATCH // (num_replicas * SOLVER.ACCUMULATE_STEPS)``
    images (the trainer takes ``ACCUMULATE_STEPS`` of them per iteration), shuffled by
    ``InfiniteShuffleSampler`` seeded with ``cfg.SEED``, disjoint across ranks. The stream is a
    function of (SEED, rank, num_replicas, start_iter): a run resumed at ``start_iter`` gets
    the batches the uninterrupted run would have had from that iteration on.

    Evaluation: one loader per ``DATASETS.TEST`` name, in dataset order, batches of
    ``TEST.IMS_PER_BATCH // num_replicas``; rank r reads indices ``r::num_replicas``, with no
    padding, so the ranks together see every image exactly once.

    Args:
        cfg: the config.
        is_train: training loader or evaluation loaders.
        num_replicas: number of processes (world size).
        rank: this process.
        start_iter: training iteration to resume from.
        with_factors: ask for ``(image, mask, factors)`` batches (a factor regressor to train
            or score). Training: only when every training dataset has factors (else a
            warning and plain batches); evaluation: per dataset. Decided here, once: the
            batches' fields never change during the loaders' life (persistent workers).
        uint8_images: training only: uint8 images when every dataset's stored frames need
            no resize (a quarter of the bytes to copy to a GPU; ``images_to_device``
            converts them), else float32.

    Returns:
        Training: a ``DataLoader`` yielding ``(images (B, 3, S, S) float32, masks (B, S, S)
        int64 or None)`` forever. Evaluation: ``[(name, DataLoader), ...]`` with the same batch
        format, finite.

    Raises:
        ValueError: a per-process batch of 0 or an empty training set.
    """
    kwargs = _loader_kwargs(cfg)
    if is_train:
        names = _as_names(cfg.DATASETS.TRAIN)
        datasets = _train_datasets(cfg, names, with_factors, uint8_images)
        dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        if len(dataset) == 0:
            raise DatasetError(f"the training datasets {names} have no examples")
        accumulate = int(cfg.SOLVER.ACCUMULATE_STEPS)
        batch = per_process_batch(cfg, num_replicas)
        sampler = InfiniteShuffleSampler(
            len(dataset),
            int(cfg.SEED),
            rank=rank,
            num_replicas=num_replicas,
            start=start_iter * accumulate * batch,
        )
        batch_sampler = BatchSampler(sampler, batch, drop_last=True)
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)

    loaders = []
    batch = max(1, int(cfg.TEST.IMS_PER_BATCH) // num_replicas)
    for name in _as_names(cfg.DATASETS.TEST):
        dataset = make_dataset(name, cfg, False, with_factors=with_factors)
        indices = range(rank, len(dataset), num_replicas)
        loader = DataLoader(
            dataset,
            batch_size=batch,
            sampler=indices,
            drop_last=False,
            # Evaluation repeats during training: keep the workers instead of respawning them.
            persistent_workers=kwargs["num_workers"] > 0,
            **kwargs,
        )
        loaders.append((name, loader))
    return loaders
