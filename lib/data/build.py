"""Dataset registry (``make_dataset``) and data loaders (``make_data_loader``).

Adding a dataset (data/README.md): a ``Dataset`` class built as ``cls(cfg, is_train, **kwargs)``
with items ``(image float32 (3, S, S) in [0, 1], mask int64 (S, S) label map, 0 = background,
or None)``, S = ``INPUT.IMAGE_SIZE``, decorated with ``@register_dataset("my_set_train",
split="train")`` in a module that ``DATASETS.IMPORTS`` names (a dotted module or a .py file).
Optional attributes: ``provenance`` (a dict, logged and in metrics.json), ``has_masks``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, Sampler

from lib.data.datasets.external import EXTERNAL_PREFIXES, make_external_dataset
from lib.data.datasets.folder import FolderDataset
from lib.data.datasets.prepared import PreparedDataset
from lib.data.format import BUILTIN_DATASETS
from lib.errors import ConfigError, DatasetError, IodineError
from lib.spec import SPLIT_SUFFIXES, dataset_names

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


def register_dataset(name: str, **kwargs):
    """Class decorator: make ``name`` build ``cls(cfg, is_train, **kwargs)``.

    Raises:
        ConfigError: ``name`` is already registered to another class or arguments.
    """

    def decorator(cls: type) -> type:
        if DATASET_REGISTRY.get(name, (cls, kwargs)) != (cls, kwargs):
            raise ConfigError(f"dataset name {name!r} is already registered")
        DATASET_REGISTRY[name] = (cls, kwargs)
        return cls

    return decorator


def import_dataset_modules(modules: Sequence[str]) -> None:
    """Import ``DATASETS.IMPORTS``: dotted module names, or ``.py`` files (loaded once each,
    as module ``iodine_datasets_<stem>``), so that their ``register_dataset`` calls run.

    Raises:
        ConfigError: a file or module that does not exist (other import errors propagate).
    """
    for module in modules:
        if not module.endswith(".py"):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name == module or module.startswith(f"{exc.name}."):
                    raise ConfigError(f"DATASETS.IMPORTS: no module {module!r}") from exc
                raise
            continue
        if not os.path.isfile(module):
            raise ConfigError(f"DATASETS.IMPORTS: no file {module}")
        # The absolute path names the module: two files with one stem are two modules.
        path = os.path.abspath(module)
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"iodine_datasets_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, module)
            sys.modules[name] = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(sys.modules[name])
            except BaseException:
                del sys.modules[name]
                raise


def set_item_format(dataset: Dataset, with_factors: bool, uint8_images: bool) -> None:
    """Choose what a dataset's items carry, where it supports it (before any loader copies it):
    ``(image, mask, factors)`` with ``with_factors`` where it has a ``factor_mapping``, uint8
    images with ``uint8_images`` where its frames need no resize (``native_size``)."""
    if getattr(dataset, "factor_mapping", None) is not None:
        dataset.return_factors = bool(with_factors)
    if hasattr(dataset, "native_size"):
        dataset.return_uint8 = bool(uint8_images) and dataset.native_size


def make_dataset(
    name: str, cfg, is_train: bool, with_factors: bool = False, uint8_images: bool = False
) -> Dataset:
    """Build a dataset by name.

    Args:
        name: a key of ``DATASET_REGISTRY`` (``clevr6_train``, ``tetrominoes``, ... and what
            ``DATASETS.IMPORTS`` registers), ``folder:<path>``, ``hdf5:<file>`` or
            ``clevrtex:<dir>``.
        cfg: the config.
        is_train: whether it is used for training (passed to the dataset class).
        with_factors, uint8_images: the item format (``set_item_format``).

    Returns:
        The dataset; items ``(image float32 (3, S, S), mask int64 (S, S) or None)``.

    Raises:
        UnknownDatasetError: an unknown name (the message lists the known names).
        IodineError: a missing or unreadable dataset (the message names the file).
    """
    import_dataset_modules(cfg.DATASETS.IMPORTS)
    if name.startswith(FOLDER_PREFIX):
        if name == FOLDER_PREFIX:
            raise UnknownDatasetError("dataset name 'folder:' needs a path: folder:<path>")
        dataset = FolderDataset(cfg, is_train, path=name[len(FOLDER_PREFIX) :])
    elif name.split(":", 1)[0] + ":" in EXTERNAL_PREFIXES:
        dataset = make_external_dataset(name, cfg, is_train)
    elif name in DATASET_REGISTRY:
        cls, kwargs = DATASET_REGISTRY[name]
        dataset = cls(cfg, is_train, **kwargs)
    else:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known: {sorted(DATASET_REGISTRY)}, folder:<path>, "
            f"{', '.join(p + '<path>' for p in EXTERNAL_PREFIXES)}, or a name registered by a "
            "module in DATASETS.IMPORTS"
        )
    set_item_format(dataset, with_factors, uint8_images)
    return dataset


def dataset_provenance(dataset) -> list[dict]:
    """Provenance of a dataset, looking through ``ConcatDataset`` and wrappers with a
    ``dataset`` attribute (``Subset``, ``DataLoader``): one dict (a copy) per underlying
    dataset, in order; ``{"source": class name}`` for a dataset that records none."""
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
            ``(image, mask, factors {name: (L, ...)})`` (``return_factors``).

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
        self.size, self.seed, self.rank, self.num_replicas = size, seed, rank, num_replicas
        self.start = start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start * self.num_replicas + self.rank, self.size)
        while True:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            while offset < self.size:
                yield int(perm[offset])
                offset += self.num_replicas
            offset -= self.size
            epoch += 1


def per_process_batch(cfg, num_replicas: int) -> int:
    """The training micro-batch of one process (what each loss averages over):
    ``SOLVER.IMS_PER_BATCH // (num_replicas * SOLVER.ACCUMULATE_STEPS)``, with a warning when
    not exact.

    Raises:
        ConfigError: it would be 0.
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


def _training_set(datasets: list, with_factors: bool, uint8: bool) -> Dataset:
    """The training datasets as one, all with one item format (a batch needs one)."""
    factors = with_factors and all(getattr(d, "factor_mapping", None) for d in datasets)
    if with_factors and not factors:
        logger.warning(
            "the factor regressor is on but a training dataset stores no factors: it is not "
            "trained (MODEL.FACTOR_REGRESSOR.ENABLED off silences this)"
        )
    uint8 = uint8 and all(getattr(d, "native_size", False) for d in datasets)
    for dataset in datasets:
        set_item_format(dataset, factors, uint8)
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def make_data_loader(
    cfg,
    is_train: bool,
    num_replicas: int = 1,
    rank: int = 0,
    start_iter: int = 0,
    with_factors: bool = False,
    uint8_images: bool = False,
    datasets: dict[str, Dataset] | None = None,
) -> DataLoader | list[tuple[str, DataLoader]]:
    """Build the training loader or the evaluation loaders.

    Training: one endless loader over the concatenation of ``DATASETS.TRAIN``, micro-batches
    of ``per_process_batch`` images shuffled by ``InfiniteShuffleSampler`` (seed ``cfg.SEED``,
    disjoint across ranks); resumed at ``start_iter``, it continues the uninterrupted stream.
    Evaluation: one loader per ``DATASETS.TEST`` name, in dataset order, batches of
    ``TEST.IMS_PER_BATCH // num_replicas``; rank r reads indices ``r::num_replicas`` (no
    padding).

    Args:
        cfg: the config.
        is_train: training loader or evaluation loaders.
        num_replicas, rank: number of processes and this one.
        start_iter: training iteration to resume from.
        with_factors: ``(image, mask, factors)`` batches: training only when every training
            dataset has factors (else a warning); evaluation per dataset.
        uint8_images: training only: uint8 images when no training set needs a resize.
        datasets: ``{name: dataset}`` already built; the names missing from it are built here.

    Returns:
        Training: a ``DataLoader`` yielding ``(images (B, 3, S, S), masks (B, S, S) int64 or
        None)`` forever. Evaluation: ``[(name, DataLoader), ...]``, finite.

    Raises:
        ConfigError: a per-process batch of 0. DatasetError: an empty training set.
    """
    kwargs = {"num_workers": int(cfg.DATALOADER.NUM_WORKERS), "collate_fn": collate}
    kwargs["pin_memory"] = str(cfg.MODEL.DEVICE) != "cpu" and torch.cuda.is_available()
    names = dataset_names(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
    built = dict(datasets or {})
    for name in names:
        if name not in built:
            built[name] = make_dataset(name, cfg, is_train)
    if is_train:
        dataset = _training_set([built[n] for n in names], with_factors, uint8_images)
        if len(dataset) == 0:
            raise DatasetError(f"the training datasets {names} have no examples")
        batch = per_process_batch(cfg, num_replicas)
        start = start_iter * int(cfg.SOLVER.ACCUMULATE_STEPS) * batch
        sampler = InfiniteShuffleSampler(len(dataset), int(cfg.SEED), rank, num_replicas, start)
        batch_sampler = BatchSampler(sampler, batch, drop_last=True)
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)

    loaders = []
    batch = max(1, int(cfg.TEST.IMS_PER_BATCH) // num_replicas)
    for name in names:
        set_item_format(built[name], with_factors, False)
        loader = DataLoader(
            built[name],
            batch_size=batch,
            sampler=range(rank, len(built[name]), num_replicas),
            drop_last=False,
            # Evaluation repeats during training: keep the workers instead of respawning them.
            persistent_workers=kwargs["num_workers"] > 0,
            **kwargs,
        )
        loaders.append((name, loader))
    return loaders
