"""Atomic, verified checkpoints: save, keep the newest few, resume, load weights.

A checkpoint ``OUTPUT_DIR/model_0001000.pth`` holds the model, optimiser and scheduler states,
the iteration, every rank's RNG states and the config (YAML text), as tensors and plain values
(``torch.load(weights_only=True)``). Files are written atomically (``lib.utils.io``) in the
order: checkpoint, ``last_checkpoint`` (its name relative to OUTPUT_DIR), deletion of old
ones; so a process killed at any moment leaves a ``last_checkpoint`` naming a complete file,
and the next run removes the temporary files. Every load checks the CRC-32 of each entry of
torch's zip archive, so a corrupted file is refused rather than evaluated.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from lib.errors import IodineError
from lib.utils.io import TMP_MARK, atomic_torch_save, atomic_write_text

LAST_CHECKPOINT = "last_checkpoint"
_CHECKPOINT_RE = re.compile(r"^model_(\d{7,})\.pth$")
_WRITTEN = re.compile(r"^(model_\d{7,}\.pth|last_checkpoint|config\.yaml)" + re.escape(TMP_MARK))


class CheckpointError(IodineError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model."""


def get_rng_states() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU, every CUDA device), as tensors
    and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore RNG states saved by ``get_rng_states``."""
    random.setstate(_as_tuple(states["python"]))
    np_state = states["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    fields = (np_state[k] for k in ("pos", "has_gauss", "cached_gaussian"))
    np.random.set_state((np_state["name"], keys, *fields))
    torch.set_rng_state(states["torch"])
    cuda_states = states.get("cuda", [])
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            # Another GPU count: restore what matches (this process's device first).
            for index, state in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, index)


def _as_tuple(value: Any) -> Any:
    # random.setstate needs tuples all the way down; serialisation keeps them, but be lenient.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _canonical(key: str) -> str:
    # Wrappers add prefixes ("module." from DDP, "_orig_mod." from torch.compile) that do not
    # change the parameter; compare and store names without them.
    key = key.removeprefix("module.")
    return key.replace("_orig_mod.", "")


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with wrapper prefixes removed (what checkpoints store)."""
    return {_canonical(k): v for k, v in unwrap_model(model).state_dict().items()}


FACTOR_PREFIX = "factor_regressor"
logger = logging.getLogger(__name__)


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a state dict (``model_state_dict``'s names; wrapper prefixes are ignored on both
    sides) into a possibly wrapped model strictly; ``source`` names the file in messages.

    Raises:
        CheckpointError: naming every key missing from / unexpected in the checkpoint and
            every shape mismatch (missing ``factor_regressor.*`` keys only warn).
    """
    target = unwrap_model(model)
    own = target.state_dict()
    by_canonical = {_canonical(k): k for k in own}
    given = {_canonical(k): v for k, v in state.items()}
    missing = sorted(set(by_canonical) - set(given))
    unexpected = sorted(set(given) - set(by_canonical))
    # The factor regressor only reads IODINE's latents: weights saved without it (older runs,
    # conversions with it off) still load, and it keeps its fresh initialisation.
    fresh = [k for k in missing if k.startswith(f"{FACTOR_PREFIX}.")]
    if fresh:
        logger.warning(
            "%s has no %s weights: the factor regressor starts from its initialisation",
            source,
            FACTOR_PREFIX,
        )
        missing = [k for k in missing if k not in fresh]
    wrong_shape = [
        f"{name}: checkpoint {tuple(given[name].shape)} vs model {tuple(own[by_canonical[name]].shape)}"
        for name in sorted(set(given) & set(by_canonical))
        if tuple(given[name].shape) != tuple(own[by_canonical[name]].shape)
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"checkpoint {source} does not fit the model (another architecture or config?)"]
        if wrong_shape:
            lines.append("shape mismatch: " + "; ".join(wrong_shape[:10]))
        if missing:
            lines.append("missing from checkpoint: " + ", ".join(missing[:10]))
        if unexpected:
            lines.append("not in model: " + ", ".join(unexpected[:10]))
        raise CheckpointError("\n  ".join(lines))
    target.load_state_dict({by_canonical[k]: v for k, v in given.items()}, strict=not fresh)


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU once the CRC-32 of every archive entry matches.

    Args:
        path: a ``.pth`` written by ``Checkpointer`` (or ``tools/convert_checkpoint.py``), or a
            bare model state dict.

    Returns:
        Dict with at least ``model`` (state dict); a bare state dict is wrapped as such.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted or no checkpoint.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        with open(path, "rb") as f:
            raw = io.BytesIO(f.read())
        with zipfile.ZipFile(raw) as archive:
            corrupt = archive.testzip()
        raw.seek(0)
        data = None if corrupt else torch.load(raw, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"cannot read checkpoint {path} (truncated?): {exc}") from exc
    if corrupt:
        raise CheckpointError(f"checkpoint {path} is corrupted: its {corrupt} fails its CRC-32")
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a dict")
    if "model" not in data:
        if all(isinstance(v, torch.Tensor) for v in data.values()):
            return {"model": data}
        raise CheckpointError(f"checkpoint {path} has no 'model' entry")
    return data


def _readable(path: str) -> bool:
    try:
        read_checkpoint(path)
    except CheckpointError:
        return False
    return True


class Checkpointer:
    """Saves and restores the training state (``model``, possibly wrapped; ``optimizer`` and
    ``scheduler`` or None) in ``save_dir``, the run's OUTPUT_DIR, keeping the newest ``keep``
    checkpoints; only a process with ``save_to_disk`` (rank 0) writes."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        save_dir: str = "",
        keep: int = 3,
        save_to_disk: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.save_dir, self.keep, self.save_to_disk = save_dir, keep, save_to_disk
        self.logger = logger or logging.getLogger(__name__)

    def remove_stale_tmp_files(self) -> list[str]:
        """Delete the temporary files of writes killed midway; returns their names."""
        if not self.save_to_disk or not os.path.isdir(self.save_dir):
            return []
        removed = sorted(n for n in os.listdir(self.save_dir) if _WRITTEN.match(n))
        for name in removed:
            os.remove(os.path.join(self.save_dir, name))
        return removed

    def save(
        self,
        iteration: int,
        cfg_yaml: str = "",
        rng_states: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> str | None:
        """Write ``model_<iteration>.pth`` with the config (YAML text), every rank's
        ``get_rng_states()`` (gathered by the caller: a collective) and ``extra`` entries;
        point ``last_checkpoint`` at it, prune old ones. Returns its path (None: no writer)."""
        if not self.save_to_disk:
            return None
        name = f"model_{iteration:07d}.pth"
        path = os.path.join(self.save_dir, name)
        data = {
            "model": model_state_dict(self.model),
            "iteration": iteration,
            "cfg": cfg_yaml,
            "rng_states": rng_states if rng_states is not None else [get_rng_states()],
            **(extra or {}),
        }
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        atomic_torch_save(data, path)
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), name + "\n")
        self._prune(keep_name=name)
        self.logger.info("saved checkpoint %s", path)
        return path

    def _checkpoints(self) -> list[str]:
        # The checkpoint files in save_dir, oldest first.
        found = [n for n in os.listdir(self.save_dir) if _CHECKPOINT_RE.match(n)]
        return sorted(found, key=lambda n: int(_CHECKPOINT_RE.match(n).group(1)))

    def _prune(self, keep_name: str) -> None:
        found = self._checkpoints()
        for name in found[: max(len(found) - self.keep, 0)]:
            if name != keep_name:
                os.remove(os.path.join(self.save_dir, name))

    def last_checkpoint(self, fall_back: bool = False) -> str | None:
        """Path of the checkpoint named by ``OUTPUT_DIR/last_checkpoint``, or None if absent.

        Args:
            fall_back: when that file is missing or unreadable, the newest intact checkpoint
                in OUTPUT_DIR instead, with a warning naming both (a resume).

        Raises:
            CheckpointError: ``last_checkpoint`` names a missing file (without ``fall_back``),
                or no checkpoint is intact.
        """
        pointer = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if not os.path.isfile(pointer):
            return None
        with open(pointer, encoding="utf-8") as f:
            name = f.read().strip()
        path = os.path.join(self.save_dir, name)  # an absolute name stays itself
        if not fall_back:
            if not name or not os.path.isfile(path):
                raise CheckpointError(f"{pointer} names {name or 'nothing'}, which does not exist")
            return path
        try:
            read_checkpoint(path)
            return path
        except CheckpointError as exc:
            problem = str(exc)
        for older in reversed(self._checkpoints()):
            candidate = os.path.join(self.save_dir, older)
            if older == name or not _readable(candidate):
                continue
            self.logger.warning("%s; resuming from %s, the newest intact one", problem, candidate)
            return candidate
        raise CheckpointError(f"{problem}; no other checkpoint in {self.save_dir} is intact")

    def load(self, path: str, weights_only: bool = False) -> dict[str, Any]:
        """Restore the model and, unless ``weights_only`` (a fresh start from MODEL.WEIGHT),
        the optimiser and scheduler from a file; returns the checkpoint dict. CheckpointError:
        an unreadable or corrupted file, missing entries, or an architecture mismatch."""
        data = read_checkpoint(path)
        load_model_state(self.model, data["model"], path)
        if not weights_only:
            for key, obj in (("optimizer", self.optimizer), ("scheduler", self.scheduler)):
                if obj is None:
                    continue
                if key not in data:
                    raise CheckpointError(f"checkpoint {path} has no '{key}' state to resume")
                try:
                    obj.load_state_dict(data[key])
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise CheckpointError(f"cannot restore {key} from {path}: {exc}") from exc
        self.logger.info("loaded %s from %s", "weights" if weights_only else "training state", path)
        return data
