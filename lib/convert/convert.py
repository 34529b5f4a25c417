"""Convert a released TF1 IODINE checkpoint into a checkpoint that ``MODEL.WEIGHT`` loads.

Nothing is guessed: the checkpoint's variables must be exactly those the config's architecture
has in the release (``lib.convert.released``), with the same shapes, and the converted tensors
must be exactly our model's state dict; otherwise ``ConversionError`` lists every difference.
Optimiser slots, ``global_step`` and the factor regressor's statistics are skipped. The factor
regressor's trainable map ``factor_evaluator/repres_content/predict_latents/{w,b}`` is checked
against the paper configuration when the architecture is one of them, kept aside in TensorFlow
layout, and converted to ``factor_regressor.predict_latents.{weight,bias}`` when the config's
model has a factor regressor (``MODEL.FACTOR_REGRESSOR``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lib.convert.released import (
    FACTOR_SCOPE,
    PAPER_ARCHS,
    ConversionError,
    ParamRule,
    ReleasedArch,
    arch_from_cfg,
    classify,
    factor_variables,
    is_ignored,
    linear_to_torch,
    model_variables,
    paper_config_of,
    parameter_rules,
    table_mismatches,
)
from lib.convert.tf_checkpoint import TFCheckpoint

FACTOR_REGRESSOR_PREFIX = "factor_regressor."
# Runtime settings of the released models (they shape no parameter, but change the function).
_RELEASED_RUNTIME = {
    "MODEL.REFINEMENT.PADDING": "tf_same",
    "MODEL.REFINEMENT.STRIDE": 2,
    "MODEL.IODINE.LIKELIHOOD": "logistic",
    "MODEL.IODINE.PIXEL_SCALE": 0.03,
    "MODEL.IODINE.PRIOR_SCALE": math.sqrt(math.log(2.0)),
    "MODEL.IODINE.GRAD_INPUT_REDUCTION": "mean",
}
_PAPER_IMAGE_SIZE = {"clevr6": 128, "multi_dsprites": 64, "tetrominoes": 35}


@dataclass
class ConversionResult:
    """A converted checkpoint and what was done.

    Attributes:
        state: our parameter name -> float32 tensor (the ``model`` entry of the output).
        sources: our parameter name -> the checkpoint variables it was made from.
        paper_config: name of the matching paper configuration, or None.
        factor: the factor regressor's trainable variables, kept in TensorFlow layout.
        ignored: skipped variables (optimiser slots, global_step, statistics).
        global_step: the checkpoint's training step, if stored.
        notes: config settings that differ from the released model's behaviour.
    """

    state: dict[str, torch.Tensor]
    sources: dict[str, tuple[str, ...]]
    paper_config: str | None
    factor: dict[str, torch.Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    global_step: int | None = None
    notes: list[str] = field(default_factory=list)


def _refuse(source: str, what: str, lines: list[str]) -> ConversionError:
    shown = lines[:40]
    more = [f"... and {len(lines) - len(shown)} more"] if len(lines) > len(shown) else []
    return ConversionError("\n  ".join([f"{source}: {what}", *shown, *more]))


def _factor_rules(source: str, factor: Mapping[str, tuple[int, ...]]) -> list[ParamRule]:
    """The factor regressor's rules: snt.Linear ``w`` [Z, M] -> our weight [M, Z], ``b`` [M]."""
    w, b = f"{FACTOR_SCOPE}/predict_latents/w", f"{FACTOR_SCOPE}/predict_latents/b"
    missing = [v for v in (w, b) if v not in factor]
    if missing:
        raise _refuse(
            source,
            "has no factor regressor, but the config's model has one (set "
            "MODEL.FACTOR_REGRESSOR.ENABLED off to convert without it); missing:",
            missing,
        )
    return [
        ParamRule(FACTOR_REGRESSOR_PREFIX + "predict_latents.weight", (w,), linear_to_torch),
        ParamRule(FACTOR_REGRESSOR_PREFIX + "predict_latents.bias", (b,), np.asarray),
    ]


def convert_variables(
    checkpoint: TFCheckpoint, arch: ReleasedArch, model_shapes: Mapping[str, tuple[int, ...]]
) -> ConversionResult:
    """Map a checkpoint's variables onto our parameters for one architecture.

    Args:
        checkpoint: the opened TensorFlow checkpoint.
        arch: the architecture it must have (``arch_from_cfg``).
        model_shapes: our model's state dict, name -> shape.

    Returns:
        The converted state and its provenance.

    Raises:
        ConversionError: missing, unexpected or mis-shaped variables on either side, or a
            non-float parameter.
        TFCheckpointError: the data cannot be read.
    """
    source = checkpoint.prefix
    split = classify(checkpoint.variables())
    expected = model_variables(arch)
    problems = table_mismatches(expected, split.model)
    paper = paper_config_of(arch)
    if paper is not None and split.factor:
        want = {n: s for n, s in factor_variables(PAPER_ARCHS[paper]).items() if not is_ignored(n)}
        problems += table_mismatches(want, split.factor)
    if problems:
        raise _refuse(
            source,
            "does not match the released architecture of this config (another configuration?)",
            problems,
        )
    not_float = [
        f"{n}: {checkpoint.entries[n].dtype_name}"
        for n in expected
        if checkpoint.entries[n].dtype_name not in ("float32", "float16", "bfloat16", "float64")
    ]
    if not_float:
        raise _refuse(source, "has non-float parameters", not_float)

    rules = parameter_rules(arch)
    if any(n.startswith(FACTOR_REGRESSOR_PREFIX) for n in model_shapes):
        rules += _factor_rules(source, split.factor)
    arrays = checkpoint.read_many(sorted({n for rule in rules for n in rule.sources}))
    state, sources = {}, {}
    for rule in rules:
        value = rule.fn(*(arrays[n] for n in rule.sources)).astype(np.float32)
        state[rule.target] = torch.from_numpy(np.ascontiguousarray(value))
        sources[rule.target] = rule.sources
    mismatches = table_mismatches(
        {n: tuple(s) for n, s in model_shapes.items()},
        {n: tuple(t.shape) for n, t in state.items()},
        missing="our model has no conversion for",
        extra="not in our model",
        found_label="converted",
        expected_label="model",
    )
    if mismatches:
        raise _refuse(source, "converts to parameters that do not fit our model", mismatches)
    step = None
    if "global_step" in checkpoint.entries and checkpoint.entries["global_step"].shape == ():
        step = int(checkpoint.read("global_step"))
    return ConversionResult(
        state=state,
        sources=sources,
        paper_config=paper,
        factor={n: torch.from_numpy(checkpoint.read(n)) for n in split.factor},
        ignored=sorted(split.ignored),
        global_step=step,
    )


def _runtime_notes(cfg: Any, paper: str | None) -> list[str]:
    notes = []
    for key, released in _RELEASED_RUNTIME.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        same = math.isclose(node, released) if isinstance(released, float) else node == released
        if not same:
            notes.append(f"{key} is {node!r}; the released model used {released!r}")
    if paper is not None and cfg.INPUT.IMAGE_SIZE != _PAPER_IMAGE_SIZE[paper]:
        notes.append(
            f"INPUT.IMAGE_SIZE is {cfg.INPUT.IMAGE_SIZE}; the released {paper} model saw "
            f"{_PAPER_IMAGE_SIZE[paper]}x{_PAPER_IMAGE_SIZE[paper]} images"
        )
    return notes


def _model_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    from lib.model import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.COMPILE = False  # plain parameter names
    # Only the shapes matter: no initialisation, no memory.
    cfg.MODEL.IODINE.INIT = "pytorch"
    cfg.MODEL.DECODER.BLOB_INIT_GAIN = 0.0
    with torch.device("meta"):
        model: nn.Module = build_model(cfg)
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def convert_checkpoint(cfg: Any, checkpoint_path: str) -> ConversionResult:
    """Convert the released checkpoint at ``checkpoint_path`` for the model of ``cfg``.

    Args:
        cfg: the config whose model the weights are for (its architecture keys decide which
            variables the checkpoint must hold).
        checkpoint_path: the TensorFlow checkpoint prefix, ``.index`` file or folder.

    Returns:
        The conversion (``state`` loads into ``build_model(cfg)`` strictly).

    Raises:
        ConversionError, TFCheckpointError: see ``convert_variables`` and ``TFCheckpoint``.
    """
    arch = arch_from_cfg(cfg)
    checkpoint = TFCheckpoint(checkpoint_path)
    result = convert_variables(checkpoint, arch, _model_shapes(cfg))
    result.notes = _runtime_notes(cfg, result.paper_config)
    return result


def checkpoint_dict(result: ConversionResult, cfg: Any, source: str) -> dict[str, Any]:
    """The dict to save: ``model`` (what ``MODEL.WEIGHT`` loads) plus provenance.

    ``iteration`` is the released ``global_step`` (None if absent); ``factor_regressor`` holds
    the released factor-regressor variables in TensorFlow layout.
    """
    return {
        "model": result.state,
        "iteration": result.global_step,
        "cfg": cfg.dump(),
        "converted_from": source,
        "factor_regressor": result.factor,
    }


def summary_lines(result: ConversionResult, source: str, output: str) -> list[str]:
    """A human-readable summary of a conversion."""
    iodine = {n: t for n, t in result.state.items() if not n.startswith(FACTOR_REGRESSOR_PREFIX)}
    count = sum(t.numel() for t in iodine.values())
    factor_count = sum(t.numel() for t in result.state.values()) - count
    lines = [
        f"converted {source} -> {output}",
        f"  paper configuration: {result.paper_config or 'none (custom architecture)'}",
        f"  global_step: {result.global_step}",
        f"  {len(iodine)} tensors, {count:,} values"
        + (f" (plus the factor regressor's {factor_count:,})" if factor_count else "")
        + ":",
    ]
    for name, tensor in result.state.items():
        lines.append(f"    {name} {list(tensor.shape)} <- {', '.join(result.sources[name])}")
    if result.factor and not factor_count:
        lines.append("  factor regressor (kept in TensorFlow layout, not converted):")
        lines += [f"    {n} {list(t.shape)}" for n, t in result.factor.items()]
    lines.append(f"  skipped {len(result.ignored)} optimiser/statistics variables")
    lines += [f"  note: {note}" for note in result.notes]
    return lines
