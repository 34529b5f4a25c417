"""The released IODINE architecture as facts, with no torch: one source for the model
(``lib.model``), the checkpoint converter (``lib.convert``) and config validation
(``lib.config``).

It holds the refinement inputs (their channels, which are LayerNorm-ed and stop-gradient,
which are legacy constants), the allowed values of the model's switches, the factor
regressor's mappings (one ``Factor`` type), the three paper architectures, the variable
scopes of a released checkpoint and the released layer list (each released layer with our
module path and its shape), from which both the converter's variable table and its
parameter rules are made. Importing it imports neither torch nor NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# --- switches: the allowed values of the model's string options ------------------------------
LIKELIHOODS = ("logistic", "gaussian")
LOSS_WEIGHTS = ("linspace", "uniform", "last")
INITS = ("released", "pytorch")
GRAD_INPUT_REDUCTIONS = ("sum", "mean")
LSTM_INITS = ("sonnet", "zero_bias")
PADDINGS = ("tf_same", "symmetric")
POOLS = ("avg", "flatten")
# MODEL.PRECISION (a run setting, listed here so that it is written once; INPUT.RESIZE: below).
PRECISIONS = ("fp32", "tf32", "bf16")
# Refinement coordinate channels: 2 linear (x then y) or 8 cosine (constant dropped).
COORD_CHANNELS = {"linear": 2, "cosine": 8}
COORD_TYPES = tuple(COORD_CHANNELS)


# --- refinement inputs: the released ones, frozen (a new input is a row of the table in
# lib.model.refinement_inputs, which leaves these facts, the paper configs and the converter alone)
@dataclass(frozen=True)
class RefinementInput:
    """One refinement input of the released model.

    Attributes:
        name: the released name (inputs are concatenated in alphabetical order of names).
        vector: False: image-sized, concatenated on channels before the conv stack; True: a
            vector, concatenated after the MLP.
        channels: its channels; 0 where they depend on the configuration (``coordinates``:
            ``COORD_CHANNELS``; ``dzp`` and ``zp``: 2 * latent size), see ``input_channels``.
        normalised: LayerNorm-ed (and stop-gradient): the released DEFAULT_PREPROCESSING.
        legacy: a constant 0.5 kept for parity (dropped without legacy constants).
    """

    name: str
    vector: bool
    channels: int
    normalised: bool = False
    legacy: bool = False


REFINEMENT_INPUTS: dict[str, RefinementInput] = {
    spec.name: spec
    for spec in (
        RefinementInput("capacity", False, 1, legacy=True),
        RefinementInput("components", False, 3),
        RefinementInput("coordinates", False, 0),
        RefinementInput("counterfactual", False, 1, normalised=True),
        RefinementInput("dcomponents", False, 3, normalised=True),
        RefinementInput("dmask", False, 1, normalised=True),
        RefinementInput("image", False, 3),
        RefinementInput("log_prob", False, 1, normalised=True),
        RefinementInput("mask", False, 1),
        RefinementInput("posterior", False, 1),
        RefinementInput("pred_mask", False, 1),
        RefinementInput("dzp", True, 0, normalised=True),
        RefinementInput("flat_capacity", True, 1, legacy=True),
        RefinementInput("zp", True, 0),
    )
}
IMAGE_INPUTS = tuple(sorted(n for n, s in REFINEMENT_INPUTS.items() if not s.vector))
VECTOR_INPUTS = tuple(sorted(n for n, s in REFINEMENT_INPUTS.items() if s.vector))
NORMALISED_INPUTS = tuple(sorted(n for n, s in REFINEMENT_INPUTS.items() if s.normalised))
LEGACY_INPUTS = tuple(sorted(n for n, s in REFINEMENT_INPUTS.items() if s.legacy))


def input_channels(name: str, coord_type: str, latent_dim: int) -> int:
    """Channels of one refinement input.

    Args:
        name: a key of ``REFINEMENT_INPUTS``.
        coord_type: "linear" or "cosine".
        latent_dim: Z (lambda has 2Z entries).

    Returns:
        The channel count (a vector input's size).

    Raises:
        KeyError: an unknown input or coordinate type.
    """
    if name == "coordinates":
        return COORD_CHANNELS[coord_type]
    if name in ("dzp", "zp"):
        return 2 * latent_dim
    return REFINEMENT_INPUTS[name].channels


def used_inputs(
    image_inputs, vector_inputs, legacy_constants: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The inputs a model uses, in the released (alphabetical) order.

    Args:
        image_inputs, vector_inputs: names as configured (any order).
        legacy_constants: keep the capacity inputs.

    Returns:
        (image inputs, vector inputs), each sorted, legacy ones dropped when not kept.
    """
    keep = (lambda n: True) if legacy_constants else (lambda n: n not in LEGACY_INPUTS)
    return (
        tuple(sorted(n for n in image_inputs if keep(n))),
        tuple(sorted(n for n in vector_inputs if keep(n))),
    )


# --- the factor regressor's mappings ---------------------------------------------------------
FACTOR_TYPES = ("scalar", "angle", "categorical")


class Factor(NamedTuple):
    """One factor of a mapping: its name, its size after preprocessing and its type.

    ``scalar``: the target as stored, ``size`` values; ``angle``: radians -> (cos, sin), size 2;
    ``categorical``: an integer label -> one-hot of ``size`` classes (a label outside
    ``[0, size)`` gives an all-zero target, as TensorFlow's ``one_hot`` does).
    """

    name: str
    size: int
    type: str


# The released mapping per dataset family (configurations.py), in output-column order.
FACTOR_MAPPINGS: dict[str, tuple[Factor, ...]] = {
    "clevr": (
        Factor("color", 9, "categorical"),
        Factor("shape", 4, "categorical"),
        Factor("size", 3, "categorical"),
        Factor("position", 3, "scalar"),
    ),
    "multi_dsprites": (
        Factor("color", 3, "scalar"),
        Factor("shape", 4, "categorical"),
        Factor("scale", 1, "scalar"),
        Factor("x", 1, "scalar"),
        Factor("y", 1, "scalar"),
        Factor("orientation", 2, "angle"),
    ),
    "tetrominoes": (
        Factor("position", 2, "scalar"),
        Factor("color", 3, "scalar"),
        Factor("shape", 20, "categorical"),
    ),
}


def dataset_names(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A ``DATASETS.TRAIN`` / ``DATASETS.TEST`` value as a tuple of dataset names.

    Args:
        value: a bare name (one dataset) or a sequence of names.

    Returns:
        The names as a tuple.
    """
    return (value,) if isinstance(value, str) else tuple(value)


# Dataset (built-in name, without a _train / _test suffix) -> its family in FACTOR_MAPPINGS;
# absent: no released regressor (folder: datasets; sprites, whose factors have no mapping).
DATASET_FACTOR_FAMILY = {
    "clevr6": "clevr",
    "clevr10": "clevr",
    "multi_dsprites": "multi_dsprites",
    "tetrominoes": "tetrominoes",
    "clevr6_synth": "clevr",
    "clevr10_synth": "clevr",
    "multi_dsprites_synth": "multi_dsprites",
    "tetrominoes_synth": "tetrominoes",
}


def factor_mapping(name: str) -> tuple[Factor, ...] | None:
    """The released factor mapping of a dataset name, or None when it has none.

    Args:
        name: a dataset name (``clevr6_train``, ``folder:/x``, ...).

    Returns:
        ``FACTOR_MAPPINGS`` of its family, or None.
    """
    family = DATASET_FACTOR_FAMILY.get(builtin_of(name) or "")
    return FACTOR_MAPPINGS[family] if family else None


# --- architectures ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleasedArch:
    """The shape-determining hyper-parameters of a released IODINE model.

    Attributes:
        latent_dim: Z, size of z_k (lambda has 2Z entries).
        image_inputs: names of the image-sized refinement inputs (coordinates included).
        vector_inputs: names among dzp, flat_capacity, zp.
        coord_type: "linear" or "cosine" (refinement coordinates).
        refine_conv_channels, refine_kernel_size: the refinement conv stack.
        mlp_sizes: refinement MLP sizes.
        lstm_size: LSTM hidden size, 0 for none.
        decoder_conv_channels, decoder_kernel_size, decoder_output_kernel_size: the decoder.
        legacy_constant: the decoder appends the constant 5.0 to z.
        factors: the factor regressor's mapping (empty: not known / not checked).
    """

    latent_dim: int
    image_inputs: tuple[str, ...]
    vector_inputs: tuple[str, ...]
    coord_type: str
    refine_conv_channels: tuple[int, ...]
    refine_kernel_size: int
    mlp_sizes: tuple[int, ...]
    lstm_size: int
    decoder_conv_channels: tuple[int, ...]
    decoder_kernel_size: int
    decoder_output_kernel_size: int
    legacy_constant: bool = True
    factors: tuple[Factor, ...] = ()

    def without_factors(self) -> ReleasedArch:
        """The same architecture with no factor regressor."""
        return ReleasedArch(**{**self.__dict__, "factors": ()})


def _paper_arch(latent_dim, coord_type, refine, mlp, lstm, decoder, kernel, family):
    # The paper configs use every input, 4 hidden decoder convs, equal decoder kernels.
    return ReleasedArch(
        latent_dim=latent_dim,
        image_inputs=IMAGE_INPUTS,
        vector_inputs=VECTOR_INPUTS,
        coord_type=coord_type,
        refine_conv_channels=refine,
        refine_kernel_size=kernel,
        mlp_sizes=mlp,
        lstm_size=lstm,
        decoder_conv_channels=(decoder,) * 4,
        decoder_kernel_size=kernel,
        decoder_output_kernel_size=kernel,
        factors=FACTOR_MAPPINGS[family],
    )


# The three paper configurations of the release (configurations.py).
PAPER_ARCHS: dict[str, ReleasedArch] = {
    "clevr6": _paper_arch(64, "linear", (64,) * 4, (256, 256), 256, 64, 3, "clevr"),
    "multi_dsprites": _paper_arch(16, "cosine", (32,) * 3, (128,), 128, 32, 5, "multi_dsprites"),
    "tetrominoes": _paper_arch(32, "cosine", (32,) * 3, (128,), 0, 32, 5, "tetrominoes"),
}


# --- the released checkpoint's layers --------------------------------------------------------
# Root variable scopes of a released checkpoint (each config entry under its own scope).
INIT_NAME = "model/iodine/initial_sample_distribution"
NORM_SCOPE = "model/iodine/preprocess/layer_norm_{}"
ENCODER_CONV = "encoder_net/cnn/conv_net_2d/conv_2d_{}"
ENCODER_LINEAR = "encoder_net/cnn/mlp/linear_{}"
LSTM_SCOPE = "recurrent_net/lstm/lstm"
HEAD_SCOPE = "refinement_head/residual_head/linear"
DECODER_CONV = "pixel_decoder/broadcast_conv/conv_net_2d/conv_2d_{}"
FACTOR_SCOPE = "factor_evaluator/repres_content"

LAYER_KINDS = ("init", "norm", "conv", "linear", "lstm")


class ReleasedLayer(NamedTuple):
    """One layer of a released model and its counterpart in ours.

    Attributes:
        scope: the released variable scope (``init``: the variable's own name).
        ours: our module path (``init``: our parameter's name).
        kind: "init" (the initial lambda), "norm" (Sonnet LayerNorm), "conv", "linear" or
            "lstm".
        shape: init (2Z,); norm (C,); conv (k, k, in, out); linear (in, out); lstm
            (input, hidden).
    """

    scope: str
    ours: str
    kind: str
    shape: tuple[int, ...]


def _refinement_in_channels(arch: ReleasedArch) -> int:
    return sum(input_channels(n, arch.coord_type, arch.latent_dim) for n in arch.image_inputs)


def _vector_size(arch: ReleasedArch) -> int:
    return sum(input_channels(n, arch.coord_type, arch.latent_dim) for n in arch.vector_inputs)


def released_layers(arch: ReleasedArch) -> list[ReleasedLayer]:
    """Every IODINE layer of a released checkpoint (no factor regressor), in our module order.

    Args:
        arch: the architecture (e.g. ``PAPER_ARCHS["clevr6"]``).

    Returns:
        The layers: initial lambda, input LayerNorms, refinement convs, MLP, LSTM (if any),
        residual head, decoder convs.

    Raises:
        KeyError: an input or coordinate type with no released counterpart.
    """
    z2 = 2 * arch.latent_dim
    layers = [ReleasedLayer(INIT_NAME, "init_posterior", "init", (z2,))]
    used = set(arch.image_inputs) | set(arch.vector_inputs)
    for name in NORMALISED_INPUTS:
        if name in used:
            channels = input_channels(name, arch.coord_type, arch.latent_dim)
            layers.append(
                ReleasedLayer(NORM_SCOPE.format(name), f"input_norms.{name}", "norm", (channels,))
            )
    k, cin = arch.refine_kernel_size, _refinement_in_channels(arch)
    for i, cout in enumerate(arch.refine_conv_channels):
        layers.append(
            ReleasedLayer(
                ENCODER_CONV.format(i), f"refinement.convs.{i}", "conv", (k, k, cin, cout)
            )
        )
        cin = cout
    for i, size in enumerate(arch.mlp_sizes):
        layers.append(
            ReleasedLayer(ENCODER_LINEAR.format(i), f"refinement.mlp.{i}", "linear", (cin, size))
        )
        cin = size
    cin += _vector_size(arch)
    if arch.lstm_size > 0:
        layers.append(ReleasedLayer(LSTM_SCOPE, "refinement.lstm", "lstm", (cin, arch.lstm_size)))
        cin = arch.lstm_size
    layers.append(ReleasedLayer(HEAD_SCOPE, "refinement.head", "linear", (cin, z2)))
    return layers + _decoder_layers(arch)


def _decoder_layers(arch: ReleasedArch) -> list[ReleasedLayer]:
    # Input [z, 5.0, y, x]; hidden convs, then the output conv to 4 channels.
    cin = arch.latent_dim + int(arch.legacy_constant) + 2
    n_hidden = len(arch.decoder_conv_channels)
    kernels = [arch.decoder_kernel_size] * n_hidden + [arch.decoder_output_kernel_size]
    layers = []
    for i, (k, cout) in enumerate(zip(kernels, [*arch.decoder_conv_channels, 4])):
        ours = f"decoder.hidden.{i}" if i < n_hidden else "decoder.output"
        layers.append(ReleasedLayer(DECODER_CONV.format(i), ours, "conv", (k, k, cin, cout)))
        cin = cout
    return layers


def layer_variables(layer: ReleasedLayer) -> dict[str, tuple[int, ...]]:
    """The released variables (name -> shape) of one layer.

    Args:
        layer: from ``released_layers``.

    Returns:
        init: the variable itself; norm: ``gamma``, ``beta``; conv and linear: ``w``, ``b``;
        lstm: ``w_gates`` [(input + hidden), 4H], ``b_gates`` [4H].
    """
    s = layer.scope
    if layer.kind == "init":
        return {s: layer.shape}
    if layer.kind == "norm":
        return {s + "/gamma": layer.shape, s + "/beta": layer.shape}
    if layer.kind in ("conv", "linear"):
        return {s + "/w": layer.shape, s + "/b": (layer.shape[-1],)}
    inputs, hidden = layer.shape
    return {s + "/w_gates": (inputs + hidden, 4 * hidden), s + "/b_gates": (4 * hidden,)}


# --- data: resize protocols and built-in dataset names ---------------------------------------
# INPUT.RESIZE: "" (the default) = each source's own protocol (DATA_RESIZE); any other value
# forces that method on every dataset. "pil_bilinear" / "pil_bicubic": PIL's Image.resize on
# the 8-bit image (ClevrTex's / EfficientMORL's loaders), exactly.
RESIZE_CHOICES = ("", "tf1", "bilinear", "nearest", "pil_bilinear", "pil_bicubic")
# The resize a source's own pipeline uses: DeepMind's TFRecords (prepared built-in sets, and
# their generated stand-ins) were read with TF 1.14 resize_images; ClevrTex resizes with PIL
# bilinear (labels nearest); EfficientMORL with PIL's default filter, bicubic; the object-centric
# library's files are stored at the size it trains at (bilinear only where asked for another).
DATA_RESIZE = {
    "prepared": "tf1",
    "clevrtex": "pil_bilinear",
    "emorl": "pil_bicubic",
    "ocl": "bilinear",
    "folder": "bilinear",
}
# Name suffix -> split: "<dataset>_train", "<dataset>_test", and "<dataset>" (all examples).
SPLIT_SUFFIXES = {"": "all", "_train": "train", "_test": "test"}
# The built-in datasets (folders under DATASETS.ROOT, lib.data.format.BUILTIN_DATASETS holds
# how each is read); a paper name never reads its generated stand-in, SYNTH_OF[name].
BUILTIN_NAMES = (
    *("tetrominoes", "multi_dsprites", "clevr6", "clevr10", "objects_room", "cater"),
    *("tetrominoes_synth", "multi_dsprites_synth", "clevr6_synth", "clevr10_synth"),
    *("sprites", "sprites5"),
)
SYNTH_OF = {
    name: f"{name}_synth" for name in ("tetrominoes", "multi_dsprites", "clevr6", "clevr10")
}


def builtin_of(name: str) -> str | None:
    """The built-in dataset a dataset name reads (``clevr6_train`` -> ``clevr6``), or None.

    Args:
        name: a dataset name (``clevr6_train``, ``tetrominoes``, ``folder:/x``, ...).
    """
    for suffix in SPLIT_SUFFIXES:
        base = name[: len(name) - len(suffix)] if suffix else name
        if name.endswith(suffix) and base in BUILTIN_NAMES:
            return base
    return None
