"""Dataset names for files researchers already have, read in place with no code:

    hdf5:<file>[:<split>][:clevr6][:sizes=TRAIN,VAL,TEST]
        an HDF5 file of the object-centric library (``<name>-full.hdf5``) or of EfficientMORL
        (groups ``train``/``val``/``test``), layout detected (``lib/data/datasets/hdf5.py``)
    clevrtex:<dir>[:<variant>][:<split>]
        a ClevrTex variant folder ``clevrtex_<variant>`` or its parent
        (``lib/data/datasets/clevrtex.py``)

``<split>`` is ``train``, ``val``, ``test`` or ``all``; without it the split follows the use:
``train`` in ``DATASETS.TRAIN``, ``test`` in ``DATASETS.TEST``. Options follow the path after
colons, in any order; they are read from the right, so a path may itself contain colons as
long as its last component is not an option word.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from lib.data.datasets.clevrtex import VARIANTS as CLEVRTEX_VARIANTS
from lib.data.datasets.clevrtex import ClevrTexDataset
from lib.data.datasets.hdf5 import OCL_VARIANTS, Hdf5Dataset
from lib.errors import ConfigError

HDF5_PREFIX = "hdf5:"
CLEVRTEX_PREFIX = "clevrtex:"
# Name prefixes handled here (``folder:`` is build.py's own).
EXTERNAL_PREFIXES = (HDF5_PREFIX, CLEVRTEX_PREFIX)
SPLIT_WORDS = ("train", "val", "test", "all")
LAYOUT_WORDS = ("ocl", "emorl")


class ExternalNameError(ConfigError):
    """A malformed ``hdf5:`` / ``clevrtex:`` dataset name."""


def split_options(rest: str, words: tuple[str, ...]) -> tuple[str, list[str]]:
    """Split ``<path>[:<option>]...`` (the name after its prefix) into the path and its options
    in the order written, reading from the right while a token is in ``words`` or, for
    ``sizes=`` in ``words``, starts with it."""
    path, options = rest, []
    while ":" in path:
        head, token = path.rsplit(":", 1)
        if token not in words and not ("sizes=" in words and token.startswith("sizes=")):
            break
        path, options = head, [token, *options]
    return path, options


def _one(options: list[str], words, what: str, name: str) -> str | None:
    chosen = [o for o in options if o in words]
    if len(chosen) > 1:
        raise ExternalNameError(f"dataset name {name!r}: more than one {what}: {chosen}")
    return chosen[0] if chosen else None


def _parse_sizes(token: str, name: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(v) for v in token[len("sizes=") :].split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 0:
        raise ExternalNameError(
            f"dataset name {name!r}: {token!r} must be sizes=TRAIN,VAL,TEST (three counts >= 0)"
        )
    return sizes  # type: ignore[return-value]


def make_external_dataset(name: str, cfg, is_train: bool) -> Dataset | None:
    """Build an ``hdf5:`` or ``clevrtex:`` dataset; None for any other name.

    Args:
        name: the dataset name (see the module docstring).
        cfg: the config.
        is_train: used for training (default split ``train``) or evaluation (``test``).

    Returns:
        A ``Hdf5Dataset`` or ``ClevrTexDataset``, or None when ``name`` has none of
        ``EXTERNAL_PREFIXES``.

    Raises:
        ExternalNameError: no path, or conflicting options.
        MissingDatasetError: a missing file or folder.
        DatasetError: a file of the wrong layout, a missing key, a wrong shape (the message
            names the file and the key).
    """
    if name.startswith(HDF5_PREFIX):
        path, options = split_options(
            name[len(HDF5_PREFIX) :], (*SPLIT_WORDS, *OCL_VARIANTS, *LAYOUT_WORDS, "sizes=")
        )
        if not path:
            raise ExternalNameError(f"dataset name {name!r} needs a file: hdf5:<file>[:<split>]")
        sizes_tokens = [o for o in options if o.startswith("sizes=")]
        if len(sizes_tokens) > 1:
            raise ExternalNameError(f"dataset name {name!r}: more than one sizes= option")
        return Hdf5Dataset(
            cfg,
            is_train,
            path=path,
            split=_one(options, SPLIT_WORDS, "split", name),
            variant=_one(options, tuple(OCL_VARIANTS), "variant", name),
            sizes=_parse_sizes(sizes_tokens[0], name) if sizes_tokens else None,
            layout=_one(options, LAYOUT_WORDS, "layout", name),
        )
    if name.startswith(CLEVRTEX_PREFIX):
        path, options = split_options(name[len(CLEVRTEX_PREFIX) :], SPLIT_WORDS + CLEVRTEX_VARIANTS)
        if not path:
            raise ExternalNameError(
                f"dataset name {name!r} needs a folder: clevrtex:<dir>[:<variant>][:<split>]"
            )
        return ClevrTexDataset(
            cfg,
            is_train,
            path=path,
            variant=_one(options, CLEVRTEX_VARIANTS, "variant", name),
            split=_one(options, SPLIT_WORDS, "split", name),
        )
    return None
