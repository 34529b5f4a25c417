"""Names and layouts of DeepMind's released TF1 IODINE checkpoints, and the map to ours.

The release (deepmind-research ``iodine/``, Sonnet 1.35 modules) builds each entry of a
configuration under its own root variable scope, so a checkpoint's variables are:

- ``model/iodine/initial_sample_distribution`` [2Z]: the learned initial lambda (loc, raw);
- ``model/iodine/preprocess/layer_norm_<input>/{gamma,beta}`` [C]: one Sonnet LayerNorm per
  normalised refinement input that is used (counterfactual, dcomponents, dmask, dzp, log_prob);
- ``encoder_net/cnn/conv_net_2d/conv_2d_<i>/{w,b}``: refinement convs, w in HWIO;
- ``encoder_net/cnn/mlp/linear_<i>/{w,b}``: refinement MLP, w [in, out];
- ``recurrent_net/lstm/lstm/{w_gates,b_gates}``: the Sonnet LSTM (absent for Tetrominoes),
  w_gates [(input + hidden), 4H] with gate blocks i, j, f, o and one bias b_gates [4H]; Sonnet
  adds ``forget_bias`` (1.0, not stored) to the f block inside the cell;
- ``refinement_head/residual_head/linear/{w,b}``: the residual head, w [H, 2Z];
- ``pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_<i>/{w,b}``: decoder convs, the last one
  to 4 channels (mask logit, then 3 means);
- ``factor_evaluator/repres_content/predict_latents/{w,b}`` [Z, M]: the factor regressor's
  linear map (M = sum of the factor sizes), and ``.../<factor>_mean_var/{M2,mean,total}``
  running statistics for scalar and angle factors (not trained);
- ``global_step`` and the Adam slots (``<var>/Adam``, ``<var>/Adam_1``, ``beta1_power``,
  ``beta2_power``).

Channel orders need no permutation: both implementations concatenate the refinement inputs in
alphabetical order of their names with linear coordinates x then y, and the decoder input as
[z, 5.0, y, x]. Layout changes: conv HWIO -> OIHW, linear [in, out] -> [out, in], and the LSTM
(see ``lstm_to_torch``). This module needs only NumPy (the fixture script imports it next to
TensorFlow).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.spec import (
    COORD_CHANNELS,
    FACTOR_SCOPE,
    IMAGE_INPUTS,
    PAPER_ARCHS,
    VECTOR_INPUTS,
    Factor,  # noqa: F401  (re-exported: the one Factor type, lib.spec's)
    ReleasedArch,
    layer_variables,
    released_layers,
    used_inputs,
)

# Sonnet 1.35 snt.LSTM's default forget_bias, which the released code keeps: a constant of the
# released model, whatever our MODEL.REFINEMENT.LSTM_FORGET_BIAS (which only sets our init).
RELEASED_LSTM_FORGET_BIAS = 1.0

# Saved state that is not a model parameter: optimiser slots, step counter, the factor
# regressor's running statistics.
_IGNORED = re.compile(r"(.*/Adam(_1)?|beta[12]_power|global_step|.*_mean_var/.*)")


class ConversionError(ValueError):
    """A checkpoint does not match the configuration (the message lists every mismatch)."""


def arch_from_cfg(cfg: Any) -> ReleasedArch:
    """The released-naming architecture of a config (no factor regressor).

    Args:
        cfg: a config from ``lib.config`` (MODEL.IODINE, MODEL.REFINEMENT, MODEL.DECODER).

    Returns:
        The ``ReleasedArch`` whose variables a checkpoint for this config must hold.

    Raises:
        ConversionError: a setting with no released counterpart (flattening pool, an input).
    """
    m, r, d = cfg.MODEL.IODINE, cfg.MODEL.REFINEMENT, cfg.MODEL.DECODER
    if r.POOL != "avg":
        # The released flatten mode orders features H, W, C; ours C, H, W. Not converted.
        raise ConversionError(
            f"MODEL.REFINEMENT.POOL {r.POOL!r}: the released models pool by average ('avg')"
        )
    if r.COORD_TYPE not in COORD_CHANNELS:
        raise ConversionError(f"MODEL.REFINEMENT.COORD_TYPE {r.COORD_TYPE!r} is not released")
    image_inputs, vector_inputs = used_inputs(r.IMAGE_INPUTS, r.VECTOR_INPUTS, m.LEGACY_CONSTANTS)
    unknown = [n for n in image_inputs if n not in IMAGE_INPUTS]
    unknown += [n for n in vector_inputs if n not in VECTOR_INPUTS]
    if unknown:
        raise ConversionError(f"refinement inputs with no released counterpart: {unknown}")
    return ReleasedArch(
        latent_dim=m.LATENT_DIM,
        image_inputs=image_inputs,
        vector_inputs=vector_inputs,
        coord_type=r.COORD_TYPE,
        refine_conv_channels=tuple(r.CONV_CHANNELS),
        refine_kernel_size=r.KERNEL_SIZE,
        mlp_sizes=tuple(r.MLP_SIZES),
        lstm_size=r.LSTM_SIZE,
        decoder_conv_channels=tuple(d.CONV_CHANNELS),
        decoder_kernel_size=d.KERNEL_SIZE,
        decoder_output_kernel_size=d.OUTPUT_KERNEL_SIZE,
        legacy_constant=bool(m.LEGACY_CONSTANTS),
    )


def paper_config_of(arch: ReleasedArch) -> str | None:
    """Name of the paper configuration with this architecture (factors ignored), or None."""
    for name, paper in PAPER_ARCHS.items():
        if paper.without_factors() == arch.without_factors():
            return name
    return None


def is_ignored(name: str) -> bool:
    """Whether a checkpoint variable is saved state rather than a parameter (optimiser slots,
    ``global_step``, the factor regressor's running statistics)."""
    return _IGNORED.fullmatch(name) is not None


def model_variables(arch: ReleasedArch) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every IODINE parameter of a released checkpoint (no factor regressor).

    Args:
        arch: the architecture (e.g. ``PAPER_ARCHS["clevr6"]`` or ``arch_from_cfg(cfg)``).

    Returns:
        Dict sorted by name.
    """
    table: dict[str, tuple[int, ...]] = {}
    for layer in released_layers(arch):
        table.update(layer_variables(layer))
    return dict(sorted(table.items()))


def factor_variables(arch: ReleasedArch) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the factor regressor's variables (empty without ``arch.factors``).

    ``predict_latents`` is trainable (w [Z, M], b [M]); the ``<factor>_mean_var`` statistics
    (scalar and angle factors) are not.
    """
    if not arch.factors:
        return {}
    total = sum(f.size for f in arch.factors)
    table = {
        FACTOR_SCOPE + "/predict_latents/w": (arch.latent_dim, total),
        FACTOR_SCOPE + "/predict_latents/b": (total,),
    }
    for f in arch.factors:
        if f.type in ("scalar", "angle"):
            for stat in ("M2", "mean", "total"):
                table[f"{FACTOR_SCOPE}/{f.name}_mean_var/{stat}"] = (f.size,)
    return dict(sorted(table.items()))


def released_variables(arch: ReleasedArch) -> dict[str, tuple[int, ...]]:
    """Every variable of a released checkpoint except optimiser slots and ``global_step``."""
    return dict(sorted({**model_variables(arch), **factor_variables(arch)}.items()))


# --- layout conversion -----------------------------------------------------------------------


def conv_to_torch(w: np.ndarray) -> np.ndarray:
    """Conv kernel HWIO (TensorFlow) -> OIHW (PyTorch)."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def linear_to_torch(w: np.ndarray) -> np.ndarray:
    """Linear weight [in, out] (Sonnet) -> [out, in] (PyTorch)."""
    return np.ascontiguousarray(w.T)


def _gates_to_torch(x: np.ndarray) -> np.ndarray:
    # Rows in 4 blocks i, j, f, o (Sonnet) -> i, f, g(=j), o (PyTorch).
    i, j, f, o = np.split(x, 4, axis=0)
    return np.concatenate([i, f, j, o], axis=0)


def lstm_to_torch(
    w_gates: np.ndarray, b_gates: np.ndarray, forget_bias: float = RELEASED_LSTM_FORGET_BIAS
) -> dict[str, np.ndarray]:
    """Sonnet LSTM parameters -> ``nn.LSTMCell``'s.

    Sonnet computes ``[x, h] @ w_gates + b_gates`` split into i, j, f, o and adds
    ``forget_bias`` to f. PyTorch computes ``W_ih x + b_ih + W_hh h + b_hh`` split into
    i, f, g, o. So ``weight_ih``/``weight_hh`` are the transposed input/hidden rows of
    ``w_gates`` with the gate blocks reordered, ``bias_ih`` is the reordered ``b_gates`` with
    ``forget_bias`` added to the f block, and ``bias_hh`` is zero (our convention: it has no
    Sonnet counterpart and stays frozen at zero).

    Args:
        w_gates: [(input + hidden), 4H].
        b_gates: [4H].
        forget_bias: Sonnet's constant forget-gate bias.

    Returns:
        ``weight_ih`` [4H, input], ``weight_hh`` [4H, H], ``bias_ih`` [4H], ``bias_hh`` [4H].
    """
    hidden = b_gates.shape[0] // 4
    inputs = w_gates.shape[0] - hidden
    w = _gates_to_torch(w_gates.T)  # (4H, input + H)
    bias = _gates_to_torch(b_gates).copy()
    bias[hidden : 2 * hidden] += forget_bias
    return {
        "weight_ih": np.ascontiguousarray(w[:, :inputs]),
        "weight_hh": np.ascontiguousarray(w[:, inputs:]),
        "bias_ih": bias,
        "bias_hh": np.zeros_like(bias),
    }


@dataclass(frozen=True)
class ParamRule:
    """How one of our parameters is made: ``our = fn(*(checkpoint[n] for n in sources))``."""

    target: str
    sources: tuple[str, ...]
    fn: Callable[..., np.ndarray]


def parameter_rules(
    arch: ReleasedArch, forget_bias: float = RELEASED_LSTM_FORGET_BIAS
) -> list[ParamRule]:
    """The rule for each of our parameters (``lib.model`` names) of this architecture.

    Args:
        arch: the architecture.
        forget_bias: Sonnet's forget bias folded into ``bias_ih``.

    Returns:
        One rule per parameter of our model, covering every name of ``model_variables(arch)``.
    """
    rules = []
    for layer in released_layers(arch):
        s, ours = layer.scope, layer.ours
        if layer.kind == "init":
            rules.append(ParamRule(ours, (s,), np.asarray))
        elif layer.kind == "norm":
            rules.append(ParamRule(f"{ours}.weight", (s + "/gamma",), np.asarray))
            rules.append(ParamRule(f"{ours}.bias", (s + "/beta",), np.asarray))
        elif layer.kind == "lstm":
            sources = (s + "/w_gates", s + "/b_gates")
            for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):

                def pick(w, b, part=part):
                    return lstm_to_torch(w, b, forget_bias)[part]

                rules.append(ParamRule(f"{ours}.{part}", sources, pick))
        else:
            to_torch = conv_to_torch if layer.kind == "conv" else linear_to_torch
            rules.append(ParamRule(f"{ours}.weight", (s + "/w",), to_torch))
            rules.append(ParamRule(f"{ours}.bias", (s + "/b",), np.asarray))
    return rules


@dataclass
class Classified:
    """A checkpoint's variables sorted by role (see ``classify``)."""

    model: dict[str, tuple[int, ...]]
    factor: dict[str, tuple[int, ...]]
    ignored: list[str]


def classify(variables: Mapping[str, tuple[int, ...]]) -> Classified:
    """Split checkpoint variables into IODINE parameters, factor regressor and ignored state."""
    model, factor, ignored = {}, {}, []
    for name, shape in variables.items():
        if is_ignored(name):
            ignored.append(name)
        elif name.startswith(FACTOR_SCOPE + "/"):
            factor[name] = tuple(shape)
        else:
            model[name] = tuple(shape)
    return Classified(model, factor, ignored)


def table_mismatches(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    missing: str = "missing from checkpoint",
    extra: str = "not expected",
    found_label: str = "checkpoint",
    expected_label: str = "expected",
) -> list[str]:
    """Every difference between two name -> shape tables, one line each (empty: identical).

    Args:
        expected, found: the tables.
        missing, extra: wording of names only in ``expected`` / only in ``found``.
        found_label, expected_label: wording of the two sides of a shape mismatch.
    """
    lines = [f"{missing}: {n} {list(expected[n])}" for n in expected if n not in found]
    lines += [f"{extra}: {n} {list(found[n])}" for n in found if n not in expected]
    lines += [
        f"shape mismatch: {n}: {found_label} {list(found[n])} vs {expected_label} "
        f"{list(expected[n])}"
        for n in expected
        if n in found and tuple(found[n]) != tuple(expected[n])
    ]
    return lines
