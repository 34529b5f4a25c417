"""Our IODINE against DeepMind's released TF1 code, quantity by quantity.

The reference comes from ``tests/fixtures/equivalence/make_equivalence.py``: the release's own
modules, built for each paper configuration, run on a fixed batch of 2 with a fixed noise in
place of the posterior sampling, with the checkpoint of their initial variables. Here that
checkpoint is converted with our converter (``lib.convert.convert.convert_checkpoint``), our
model is built from our paper config (``configs/*.yaml``, ``build_model``), fed the same noise
in training mode (``IODINE._noise`` replaced on the instance), and every saved quantity is
compared: per step the posterior loc/scale, z, mask logits, components, masks, reconstruction,
NLL and KL; per refinement step every refinement input; the losses (the factor regressor's
included); and the gradient of the total loss for every trainable variable (IODINE's and the
factor regressor's).

Tolerances come from float32 rounding, measured, not guessed: our model runs twice, in float32
and in float64. ``|ours64 - TF|`` is TensorFlow's own float32 error (nothing in float32 can do
better), ``|ours32 - ours64|`` ours. A faithful port has both differences to TF of the size of
float32 rounding, so each quantity must satisfy ``max|ours - TF| <= max(ROUNDING_FACTOR *
max(max|ours32 - ours64|, FLOOR_EPS * EPS32 * max|value|), SUM_FLOOR)`` for ours in float32
and in float64. FLOOR_EPS: see below. SUM_FLOOR, for conv bias gradients only: TensorFlow sums
a bias gradient over every position of the batch in float32 (1.4 million terms a channel in
CLEVR6's first decoder layer, whose absolute sum is ~90 times the result), and that sum's
rounding, sqrt(N) eps sum|terms|, is measured from the terms in our float64 run
(``_track_conv_bias_terms``). A fidelity defect (another formula, order, constant or layout)
shows as a float64 difference far above float32 rounding.

``python -m tests.convert.test_release_equivalence`` prints the table of worst differences.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from lib.config import load_cfg
from lib.convert.convert import convert_checkpoint
from lib.convert.released import RELEASED_LSTM_FORGET_BIAS, parameter_rules
from lib.convert.tf_checkpoint import TFCheckpoint, TFCheckpointError
from lib.data.format import factor_mapping
from lib.model import build_model
from lib.spec import PAPER_ARCHS, input_channels
from tests.fixtures.equivalence.initial_values import initial_value

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "equivalence")
CONFIG_FILES = {
    "tetrominoes": "configs/tetrominoes.yaml",
    "multi_dsprites": "configs/multi_dsprites.yaml",
    "clevr6": "configs/clevr6_prop.yaml",
}
EPS32 = float(np.finfo(np.float32).eps)
# Allowed multiple of the measured float32 rounding (see the module docstring).
ROUNDING_FACTOR = 8.0
# Least rounding credited to a quantity, in float32 epsilons of its largest value: our float32
# result can be luckier than TensorFlow's (a sum of ~10^4 terms in another order is off by
# ~sqrt(10^4) eps), so our own rounding alone would understate the floor.
FLOOR_EPS = 32.0


# --- fixture and our run -----------------------------------------------------------------------


def _fixture(config: str) -> tuple[dict[str, np.ndarray], dict, str]:
    """The reference, its metadata and the prefix of the rebuilt TF1 checkpoint."""
    folder = os.path.join(FIXTURES, config)
    files = ("reference.npz", "meta.json", "model.ckpt.index")
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        pytest.skip(
            f"equivalence fixture {folder} lacks {missing}: run "
            "tests/fixtures/equivalence/make_equivalence.py (see its README.md)"
        )
    with np.load(os.path.join(folder, "reference.npz")) as data:
        ref = {name: data[name] for name in data.files}
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    return ref, meta, _rebuilt_checkpoint(config, meta["seed"])


@functools.cache
def _rebuilt_checkpoint(config: str, seed: int) -> str:
    """TensorFlow's checkpoint of the initial variables, its data file rebuilt from the recipe.

    The committed index (TensorFlow's) gives each tensor's offset, size and CRC-32C; the bytes
    are ``initial_values.initial_value`` as float32. Reading every tensor back checks the CRCs,
    so the rebuilt file is byte for byte the one TensorFlow wrote.

    Returns:
        The checkpoint prefix in a temporary folder (removed at exit).
    """
    folder = tempfile.mkdtemp(prefix=f"iodine_equivalence_{config}_")
    atexit.register(shutil.rmtree, folder, True)
    prefix = os.path.join(folder, "model.ckpt")
    shutil.copyfile(os.path.join(FIXTURES, config, "model.ckpt.index"), prefix + ".index")
    checkpoint = TFCheckpoint(prefix)
    data = bytearray(max(e.offset + e.size for e in checkpoint.entries.values()))
    for name, entry in checkpoint.entries.items():
        value = initial_value(name, entry.shape, seed).astype("<f4").tobytes()
        assert entry.dtype == 1 and entry.size == len(value), f"{name}: not float32 {entry}"
        data[entry.offset : entry.offset + entry.size] = value
    with open(checkpoint.shard_path(0), "wb") as f:
        f.write(bytes(data))
    for name in checkpoint.entries:
        try:
            checkpoint.read(name)
        except TFCheckpointError as exc:
            raise AssertionError(
                f"{config}: the rebuilt {name} is not what TensorFlow saved ({exc}); "
                "initial_values.py or NumPy's random stream changed: regenerate the fixture"
            ) from exc
    return prefix


def _cfg(config: str):
    return load_cfg(os.path.join(REPO, CONFIG_FILES[config]), ["MODEL.COMPILE", "False"])


def to_tf_layout(state: dict[str, torch.Tensor], config: str) -> dict[str, np.ndarray]:
    """Our parameters (or their gradients) in the release's names and layouts: the inverse of
    ``parameter_rules`` without Sonnet's constant forget bias (which has no gradient).

    Args:
        state: our parameter name -> tensor; ``refinement.lstm.bias_hh`` is ignored (frozen at
            zero, no Sonnet counterpart).
        config: the paper configuration.

    Returns:
        TF variable name -> float64 array.
    """
    rules = parameter_rules(PAPER_ARCHS[config], 0.0)
    out: dict[str, np.ndarray] = {}
    lstm: dict[str, np.ndarray] = {}
    for rule in rules:
        if rule.target not in state:
            continue
        value = state[rule.target].detach().double().numpy()
        if rule.target.startswith("refinement.lstm."):
            lstm[rule.target.rsplit(".", 1)[1]] = value
            continue
        (source,) = rule.sources
        if value.ndim == 4:
            out[source] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif value.ndim == 2:
            out[source] = value.T  # [out, in] -> [in, out]
        else:
            out[source] = value
    if lstm:
        w_name, b_name = next(r.sources for r in rules if r.target.startswith("refinement.lstm"))

        def gates(x: np.ndarray) -> np.ndarray:  # rows i, f, g, o (PyTorch) -> i, j, f, o
            i, f, g, o = np.split(x, 4, axis=0)
            return np.concatenate([i, g, f, o], axis=0)

        out[w_name] = gates(np.concatenate([lstm["weight_ih"], lstm["weight_hh"]], axis=1)).T
        out[b_name] = gates(lstm["bias_ih"])
    for ours, theirs in (("weight", "w"), ("bias", "b")):
        name = f"factor_regressor.predict_latents.{ours}"
        if name in state:
            value = state[name].detach().double().numpy()
            tf_name = f"factor_evaluator/repres_content/predict_latents/{theirs}"
            out[tf_name] = value.T if value.ndim == 2 else value
    return out


def _split(tensor: torch.Tensor, sizes: dict[str, int], dim: int) -> dict[str, torch.Tensor]:
    parts = torch.split(tensor, list(sizes.values()), dim=dim)
    return dict(zip(sizes, parts))


def run_ours(
    config: str, dtype: torch.dtype, edit_state: Callable[[dict], None] | None = None
) -> dict[str, np.ndarray]:
    """Our model on the fixture's batch and noise, every compared quantity in TF layout.

    Args:
        config: the paper configuration.
        dtype: torch.float32 or torch.float64 (IODINE's parameters and inputs; the factor
            regressor casts its inputs to float32 and stays float32).
        edit_state: changes the converted state in place before it is loaded (to plant a
            defect).

    Returns:
        Quantity name (the fixture's keys) -> float64 array.
    """
    ref, meta, prefix = _fixture(config)
    cfg = _cfg(config)
    converted = convert_checkpoint(cfg, prefix)
    if edit_state is not None:
        edit_state(converted.state)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.load_state_dict(converted.state, strict=True)
    model.train()  # the release has one mode: training (sampled z, batch-mean gradient inputs)
    model.to(dtype)
    if model.factor_regressor is not None:
        model.factor_regressor.float()  # its forward casts z to float32
    noise = torch.from_numpy(ref["noise"]).to(dtype)  # (T+1, B, K, D)

    def fixed_noise(b, k, num_iters, device, noise_dtype):
        # Replaces the training-mode torch.randn draws: z_t = loc_t + scale_t * noise[t].
        assert noise.shape[1:3] == (b, k) and noise.shape[0] == num_iters + 1
        return list(noise.to(device=device, dtype=noise_dtype).unbind(0))

    model._noise = fixed_noise
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def capture(module, args):
        captured.append((args[0].detach(), args[1].detach()))

    hook = model.refinement.register_forward_pre_hook(capture)
    bias_terms, tracking = _track_conv_bias_terms(model)
    images = torch.from_numpy(ref["image"]).permute(0, 3, 1, 2).to(dtype)  # (B, 3, H, W)
    labels = torch.from_numpy(ref["mask"]).argmax(dim=1)  # disjoint 0/1 entity masks
    factors = {
        name: torch.from_numpy(ref[f"factor/{name}"]) for name, _, _ in meta["factor_mapping"]
    }
    factors["visibility"] = torch.from_numpy(ref["visibility"])
    try:
        out = model(images, labels=labels, factors=factors)
        model.zero_grad(set_to_none=True)
        tracking["on"] = True  # the loss gradient only, not the gradient inputs' backward
        out["loss"].backward()
    finally:
        hook.remove()
        for handle in tracking["handles"]:
            handle.remove()

    def np64(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().numpy()

    b, t1, k = out["z"].shape[:3]
    weights = torch.linspace(0.0, 1.0, t1, dtype=torch.float64)
    res = {
        "loc": np64(out["posterior_loc"].transpose(0, 1)),
        "scale": np64(out["posterior_scale"].transpose(0, 1)),
        "z": np64(out["z"].transpose(0, 1)),
        "nll": np64(out["nll_per_image"].T),
        "kl": np64(out["kl_per_image"].transpose(0, 1)),
        "mask_logits": np64(out["mask_logits"].permute(1, 0, 3, 4, 2)[:, :, None]),
        "masks": np64(out["masks"].permute(1, 0, 3, 4, 2)[:, :, None]),
        "components": np64(out["components"].permute(1, 0, 4, 5, 2, 3)[:, :, None]),
        "recon": np64(out["recon"].permute(1, 0, 3, 4, 2)[:, :, None]),
        "loss/total": np64(out["loss"]),
        # The release's scalars: loss/recons is weighted, loss/kl the plain sum over steps.
        "loss/recons": np64((weights * out["nll"].double()).sum()),
        "loss/kl": np64(out["kl"].double().sum()),
    }
    if "factor_loss" in out:
        res["loss/factor"] = np64(out["factor_loss"])

    # Refinement inputs: split our concatenations back into the named inputs.
    def sizes(names: tuple[str, ...]) -> dict[str, int]:
        return {n: input_channels(n, model.coord_type, model.latent_dim) for n in names}

    image_sizes, vector_sizes = sizes(model.image_inputs), sizes(model.vector_inputs)
    steps: dict[str, list[torch.Tensor]] = {}
    for image_in, vector_in in captured:
        h, w = image_in.shape[-2:]
        spatial = image_in.view(b, k, -1, h, w).permute(0, 1, 3, 4, 2)  # (B, K, H, W, C)
        for name, value in _split(spatial, image_sizes, dim=-1).items():
            steps.setdefault(name, []).append(value)
        for name, value in _split(vector_in.view(b, k, -1), vector_sizes, dim=-1).items():
            steps.setdefault(name, []).append(value)
    inputs = {name: torch.stack(values) for name, values in steps.items()}  # steps first
    for name, value in inputs.items():
        if name == "log_prob":
            value = value[:, :, :1]  # per image in the release, broadcast over slots by us
        res[f"input/{name}"] = np64(value)
    res["input/coordinates"] = res["input/coordinates"][0, 0, 0]

    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, value in to_tf_layout(grads, config).items():
        res[f"grad/{name}"] = value
    floors = {n: torch.full_like(grads[n], _sum_floor(*t)) for n, t in bias_terms.items()}
    for name, value in to_tf_layout(floors, config).items():
        res[f"sum_floor/grad/{name}"] = value
    return res


def _track_conv_bias_terms(model) -> tuple[dict[str, list], dict]:
    """Hooks that collect, for each conv bias, the terms its gradient sums.

    A conv bias gradient is the sum of the output gradient over every position of the batch
    (N = B*K*H*W terms a channel; 1.4 million for CLEVR6's decoder). The hooks add up, per
    channel, the absolute values of those terms and count them (the decoder's factorised first
    layer bypasses its conv's forward and is wrapped instead).

    Returns:
        (terms, tracking): terms maps our bias name -> [sum |terms| (C,), N], filled while
        ``tracking["on"]``; ``tracking["handles"]`` are to be removed after the backward.
    """
    terms: dict[str, list] = {}
    tracking: dict = {"on": False, "handles": []}

    def add(name: str, grad: torch.Tensor) -> None:  # grad (N, C, H, W)
        if tracking["on"]:
            entry = terms.setdefault(name, [0.0, 0])
            entry[0] = entry[0] + grad.detach().double().abs().sum(dim=(0, 2, 3))
            entry[1] += grad.numel() // grad.shape[1]

    def on_output(name: str, out: torch.Tensor) -> None:
        out.register_hook(lambda g: add(name, g))

    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
            hook = module.register_forward_hook(
                lambda m, a, out, n=f"{prefix}.bias": on_output(n, out)
            )
            tracking["handles"].append(hook)
    decoder = model.decoder
    if getattr(decoder, "factorized", False):
        first = decoder._first_layer

        def first_layer(*args, **kwargs):
            out = first(*args, **kwargs)
            on_output("decoder.hidden.0.bias", out)
            return out

        decoder._first_layer = first_layer
    return terms, tracking


def _sum_floor(abs_sums: torch.Tensor, count: int) -> float:
    """The float32 rounding of a sum of ``count`` terms of absolute sum ``abs_sums`` (per
    channel, the worst): sqrt(N) eps sum|terms|, the random-walk size of N roundings, each of
    at most eps times the running sum. With cancellation (the terms sum to much less than
    their absolute sum) it is far above a multiple of eps times the result."""
    return math.sqrt(count) * EPS32 * float(abs_sums.max())


# --- comparison --------------------------------------------------------------------------------

# Inputs that copy a decoder output: the TF output they copy and how (steps 0..T-1, TF layout).
COPIED_INPUTS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "input/components": ("components", lambda x: np.moveaxis(x[:-1, :, 0], 4, 2)),
    "input/mask": ("mask_logits", lambda x: np.moveaxis(x[:-1, :, 0], 4, 2)[..., None]),
    "input/pred_mask": ("masks", lambda x: np.moveaxis(x[:-1, :, 0], 4, 2)[..., None]),
}


def _per_step(ours: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """``ours`` as the reference's (steps, values) rows (a gradient is one step)."""
    shape = tuple(int(n) for n in shape)
    if ours.size != int(np.prod(shape)) or ours.shape != shape[-ours.ndim :]:
        raise AssertionError(f"our shape {ours.shape} vs the reference's {shape}")
    return ours.reshape(shape[0], -1)


def quantity_keys(ref: dict[str, np.ndarray]) -> list[str]:
    """Every compared quantity of a fixture (subset tensors contribute their sums too)."""
    keys = set()
    skip = {"noise", "image", "mask", "visibility"}
    for name in ref:
        if name in skip or name.startswith("factor/"):
            continue
        base, _, part = name.rpartition(".")
        if part in ("val",):
            keys.update({base, f"{base}.sum", f"{base}.sumsq"})
        elif part in ("idx", "sum", "sumsq", "shape"):
            continue
        else:
            keys.add(name)
    return sorted(keys)


def differences(config: str, ours32: dict, ours64: dict) -> list[dict]:
    """One row per quantity: worst absolute and scale-relative differences and the tolerance.

    Args:
        config: the paper configuration.
        ours32, ours64: ``run_ours`` in float32 and float64.

    Returns:
        Rows with ``quantity``, ``scale`` (max |value|), ``d32``/``d64`` (max |ours - TF|),
        ``rounding`` (max |ours32 - ours64|), ``tol`` and ``ok``.
    """
    ref, _, _ = _fixture(config)
    rows = []
    for key in quantity_keys(ref):
        stat = None
        base = key
        if key.endswith((".sum", ".sumsq")):
            base, _, stat = key.rpartition(".")
        if stat:
            theirs = ref[key].astype(np.float64)
            power = 1 if stat == "sum" else 2
            shape = ref[f"{base}.shape"]
            a32, a64 = (_per_step(o[base], shape) ** power for o in (ours32, ours64))
            a32, a64 = a32.sum(axis=1), a64.sum(axis=1)
        elif key in ref:
            theirs, a32, a64 = ref[key], ours32[key], ours64[key]
        else:
            theirs, idx, shape = ref[f"{key}.val"], ref[f"{key}.idx"], ref[f"{key}.shape"]
            a32, a64 = (_per_step(o[key], shape)[:, idx] for o in (ours32, ours64))
        floor = ours64.get(f"sum_floor/{key}")
        rows.append(_row(key, theirs, a32, a64, 0.0 if floor is None else float(floor.max())))
    # Copies and constants among the inputs: against the TF tensors they copy (with a subset
    # reference, against our own output, which is compared with TF's above).
    for key, (base, copy) in COPIED_INPUTS.items():
        source = ref[base] if base in ref else ours64[base]
        theirs = copy(source.astype(np.float64))
        rows.append(_row(key, theirs, ours32[key], ours64[key]))
    image = np.broadcast_to(ref["image"][None, :, None], ours32["input/image"].shape)
    rows.append(_row("input/image", image.astype(np.float64), ours32["input/image"],
                     ours64["input/image"]))  # fmt: skip
    for key in ("input/capacity", "input/flat_capacity"):
        if key in ours32:
            half = np.full_like(ours32[key], 0.5)
            rows.append(_row(key, half, ours32[key], ours64[key]))
    return rows


def _row(
    key: str, theirs: np.ndarray, a32: np.ndarray, a64: np.ndarray, sum_floor: float = 0.0
) -> dict:
    theirs, a32, a64 = (np.asarray(x, np.float64) for x in (theirs, a32, a64))
    if theirs.shape != a32.shape:
        raise AssertionError(f"{key}: TF shape {theirs.shape} vs ours {a32.shape}")
    scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
    d32 = float(np.max(np.abs(a32 - theirs))) if theirs.size else 0.0
    d64 = float(np.max(np.abs(a64 - theirs))) if theirs.size else 0.0
    rounding = float(np.max(np.abs(a32 - a64))) if theirs.size else 0.0
    tol = max(ROUNDING_FACTOR * max(rounding, FLOOR_EPS * EPS32 * scale), sum_floor)
    return {
        "quantity": key,
        "scale": scale,
        "d32": d32,
        "d64": d64,
        "rounding": rounding,
        "tol": tol,
        "ok": d32 <= tol and d64 <= tol,
    }


def format_rows(config: str, rows: list[dict]) -> str:
    """The rows as a fixed-width table (relative = difference / max |TF value|)."""
    lines = [
        f"{config}: {'quantity':<58} {'max|TF|':>9} {'f32 abs':>9} {'f32 rel':>9} "
        f"{'f64 abs':>9} {'f64 rel':>9} {'rounding':>9} {'tol':>9}"
    ]
    for r in rows:
        s = r["scale"] or 1.0
        lines.append(
            f"{'':{len(config) + 2}}{r['quantity']:<58} {r['scale']:9.2e} {r['d32']:9.2e} "
            f"{r['d32'] / s:9.2e} {r['d64']:9.2e} {r['d64'] / s:9.2e} {r['rounding']:9.2e} "
            f"{r['tol']:9.2e}" + ("" if r["ok"] else "  <-- beyond rounding")
        )
    return "\n".join(lines)


@functools.cache
def runs(config: str) -> tuple[dict, dict]:
    """``run_ours`` in float32 and float64, once per session."""
    return run_ours(config, torch.float32), run_ours(config, torch.float64)


# --- tests -------------------------------------------------------------------------------------

PARAMS = list(CONFIG_FILES)
# Our two runs take ~5 s for Tetrominoes, ~20 s for Multi-dSprites, ~150 s for CLEVR6 here.
RUN_PARAMS = [
    pytest.param("tetrominoes", id="tetrominoes"),
    pytest.param("multi_dsprites", id="multi_dsprites", marks=pytest.mark.slow),
    pytest.param("clevr6", id="clevr6", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("config", PARAMS)
def test_fixture_matches_our_paper_config(config):
    """The release's configuration is our paper config: sizes and the factor mapping."""
    ref, meta, _ = _fixture(config)
    cfg = _cfg(config)
    assert cfg.MODEL.IODINE.NUM_SLOTS == meta["num_slots"]
    assert cfg.MODEL.IODINE.NUM_ITERS == meta["num_iters"]
    assert cfg.MODEL.IODINE.LATENT_DIM == meta["latent_dim"]
    assert cfg.INPUT.IMAGE_SIZE == meta["image_size"] == ref["image"].shape[1]
    mapping = [list(m) for m in factor_mapping(cfg.DATASETS.TRAIN[0])]
    assert mapping == meta["factor_mapping"]


@pytest.mark.parametrize("config", PARAMS)
def test_tf_layout_inverts_the_converter(config):
    """``to_tf_layout`` of the converted state gives back the checkpoint's variables exactly
    (Sonnet's constant forget bias aside), so gradients are compared in the right layout."""
    _, meta, prefix = _fixture(config)
    converted = convert_checkpoint(_cfg(config), prefix)
    back = to_tf_layout(converted.state, config)
    assert sorted(back) == sorted(meta["trainable_variables"])
    checkpoint = TFCheckpoint(prefix)
    for name, value in back.items():
        stored = checkpoint.read(name)  # float32
        if name.endswith("lstm/b_gates"):
            # The converter folds Sonnet's constant forget bias into the float32 bias, as
            # Sonnet adds it in float32: the sum is rounded once, in float32.
            hidden = stored.shape[0] // 4
            stored[2 * hidden : 3 * hidden] += np.float32(RELEASED_LSTM_FORGET_BIAS)
        np.testing.assert_array_equal(value, stored.astype(np.float64), err_msg=name)


@pytest.mark.parametrize("config", RUN_PARAMS)
def test_every_quantity_agrees_within_float32_rounding(config):
    """Posterior, z, decoder outputs, masks, reconstruction, refinement inputs, losses and
    every gradient agree with the release to a small multiple of float32 rounding."""
    ours32, ours64 = runs(config)
    rows = differences(config, ours32, ours64)
    ref, meta, _ = _fixture(config)
    compared = {r["quantity"] for r in rows}
    for name in meta["trainable_variables"]:
        assert f"grad/{name}" in compared, f"no gradient compared for {name}"
    bad = [r for r in rows if not r["ok"]]
    assert not bad, "beyond float32 rounding:\n" + format_rows(config, bad)


@pytest.mark.slow
def test_a_planted_defect_is_beyond_rounding():
    """The tolerances are tight enough to see a classic porting slip: one decoder kernel
    flipped left-right (convolution where TensorFlow correlates)."""

    def flip_kernel(state: dict) -> None:
        state["decoder.hidden.1.weight"] = state["decoder.hidden.1.weight"].flip(-1)

    # Planted in both runs, as a real defect would be (the tolerance is their difference).
    planted = (
        run_ours("tetrominoes", dtype, flip_kernel) for dtype in (torch.float32, torch.float64)
    )
    bad = {r["quantity"] for r in differences("tetrominoes", *planted) if not r["ok"]}
    assert {"mask_logits", "recon", "loc", "loss/total"} <= bad
    assert "input/coordinates" not in bad


def main() -> None:
    """Print the table of worst differences for every configuration with a fixture."""
    for config in CONFIG_FILES:
        if not os.path.isdir(os.path.join(FIXTURES, config)):
            print(f"{config}: no fixture")
            continue
        start = time.time()
        ours32, ours64 = runs(config)
        rows = differences(config, ours32, ours64)
        print(format_rows(config, rows))
        print(f"{config}: {time.time() - start:.1f} s\n")


if __name__ == "__main__":
    main()
