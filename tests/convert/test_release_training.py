"""Training steps of our trainer against the released program's own training.

``tests/fixtures/equivalence/make_equivalence.py`` trains the release (its configuration's
``tf.train.AdamOptimizer`` with ``exponential_decay``, gradients clipped together to global
norm 5.0, as ``iodine/main.py`` does) for a few steps from the seeded initial checkpoint, on
fixed batches with fixed noise, and saves each step's loss and global gradient norm and the
trainable variables after each step (``<config>/training.npz``). Here the same checkpoint is
converted, and our ``Trainer`` (``lib.engine.trainer``: ``run_step`` with the optimiser and
scheduler of ``lib.engine.solver``, as ``tools/train_net.py`` builds them) takes the same
steps on the same batches with the same noise, in float32 and in float64.

Tolerance, as in ``test_release_equivalence``, element by element: ``|ours - TF| <=
ROUNDING_FACTOR * max(max|ours32 - ours64|, FLOOR_EPS * eps32 * max|value|) + floor``: our
float32-vs-float64 difference measures how far float32 rounding carries through the same
steps (TensorFlow's float32 run is one more float32 run of the same arithmetic), and ``floor``
is TensorFlow's own reduction rounding of each gradient carried through the clipping and Adam
(``_Record``).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest
import torch

from lib.convert.convert import convert_checkpoint
from lib.convert.released import RELEASED_LSTM_FORGET_BIAS
from lib.engine.hooks import HookBase
from lib.engine.solver import make_lr_scheduler, make_optimizer
from lib.engine.trainer import Trainer
from lib.model import build_model
from tests.convert.test_release_equivalence import (
    FIXTURES,
    _cfg,
    _fixture,
    _row,
    _sum_floor,
    _track_reduction_terms,
    to_tf_layout,
)


def _training_fixture(config: str) -> dict[str, np.ndarray]:
    path = os.path.join(FIXTURES, config, "training.npz")
    if not os.path.isfile(path):
        pytest.skip(f"no training fixture {path}: run make_equivalence.py (see its README.md)")
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


class _Record(HookBase):
    """Keeps each step's loss, gradient norm and the parameters after it (TF layout).

    With ``sum_terms`` (the float64 run) it also carries TensorFlow's reduction rounding of
    each gradient (``sqrt(N) eps32 sum|terms|``, see ``test_release_equivalence``) through the
    clipping and the Adam update into a floor for each parameter: the rounding ``d`` of the
    clipped gradient enters m and v (``e_m <- beta1 e_m + (1 - beta1) d``, ``e_v <- beta2 e_v +
    (1 - beta2) (2 |g| d + d^2)``), and the update ``lr_t m / (sqrt(v) + eps)`` can move by up
    to ``lr_t ((|m| + e_m) / (sqrt(v - e_v) + eps) - |m| / (sqrt(v) + eps))``; the floors add
    up over the steps. Near epsilon Adam turns a gradient's rounding into a sizeable update
    difference, which is why this is needed at all.
    """

    def __init__(self, config: str, sum_terms: dict | None = None, tracking=None) -> None:
        self.config = config
        self.loss: list[float] = []
        self.norm: list[float] = []
        self.params: list[dict[str, np.ndarray]] = []
        self.floors: list[dict[str, np.ndarray]] = []
        self.sum_terms, self.tracking = sum_terms, tracking
        self._errors: dict[str, tuple] = {}

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.step
        assert not bool(step.bad), "a step of the reference run was skipped"
        self.loss.append(float(step.stats["loss"]))
        self.norm.append(float(step.stats["grad_norm"]))
        state = dict(trainer.model.named_parameters())
        # Copies: in float64 the layout's arrays can share memory with the live parameters.
        self.params.append({k: v.copy() for k, v in to_tf_layout(state, self.config).items()})
        if self.sum_terms is not None:
            self.floors.append(self._floors(trainer, state))

    @torch.no_grad()
    def _floors(self, trainer: Trainer, state: dict) -> dict[str, np.ndarray]:
        self.tracking["finish"]()
        group = trainer.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        scale = min(1.0, trainer.clip / float(trainer.step.stats["grad_norm"]))
        floors = {}
        for name, param in state.items():
            if not param.requires_grad:
                continue
            adam = trainer.optimizer.state[param]
            t = float(adam["step"])
            terms = self.sum_terms.get(name)
            d = 0.0 if terms is None else scale * _sum_floor(*terms)
            g = param.grad.double().abs()
            m, v = adam["exp_avg"].double().abs(), adam["exp_avg_sq"].double()
            e_m, e_v, total = self._errors.get(name, (0.0, 0.0, 0.0))
            e_m = beta1 * e_m + (1 - beta1) * d
            e_v = beta2 * e_v + (1 - beta2) * (2 * g * d + d * d)
            lr_t = trainer.lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
            eps = group["eps"]
            low = torch.sqrt(torch.clamp(v - e_v, min=0.0)) + eps
            total = total + lr_t * ((m + e_m) / low - m / (torch.sqrt(v) + eps))
            self._errors[name] = (e_m, e_v, total)
            floors[name] = total.clone()
        self.sum_terms.clear()
        return to_tf_layout(floors, self.config)


def train_ours(
    config: str,
    dtype: torch.dtype,
    overrides: tuple[str, ...] = (),
    steps: int | None = None,
) -> dict[str, np.ndarray]:
    """Our trainer's steps on the fixture's batches and noise.

    Args:
        config: the paper configuration.
        dtype: torch.float32 or torch.float64 for IODINE (the factor regressor stays float32).
        overrides: config overrides (e.g. ``("SOLVER.ADAM", "torch")``).
        steps: the first steps of the fixture to take (default: all).

    Returns:
        ``loss`` (S,), ``global_norm`` (S,) and ``param/<TF name>`` (S, ...) float64.
    """
    ref = _training_fixture(config)
    _, _, prefix = _fixture(config)
    cfg = _cfg(config)
    # The release's schedule for its own batch size (ours scales it to batch 32).
    cfg.defrost()
    cfg.SOLVER.BASE_LR = float(ref["schedule/learning_rate"])
    cfg.SOLVER.DECAY_STEPS = int(ref["schedule/decay_steps"])
    cfg.SOLVER.DECAY_RATE = float(ref["schedule/decay_rate"])
    cfg.merge_from_list(list(overrides))
    cfg.freeze()
    converted = convert_checkpoint(cfg, prefix)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.load_state_dict(converted.state, strict=True)
    model.to(dtype)
    if model.factor_regressor is not None:
        model.factor_regressor.float()
    noise = torch.from_numpy(ref["noise"][:steps]).to(dtype)  # (S, T+1, B, K, D)
    draws = iter(noise.unbind(0))

    def fixed_noise(b, k, num_iters, device, noise_dtype):
        step_noise = next(draws)  # one step's T+1 draws
        assert step_noise.shape[:3] == (num_iters + 1, b, k)
        return list(step_noise.to(device=device, dtype=noise_dtype).unbind(0))

    model._noise = fixed_noise
    steps = noise.shape[0]
    names = [name.split("/")[-1] for name in ref if name.startswith("batch/factor/")]
    batches = []
    for s in range(steps):
        images = torch.from_numpy(ref["batch/image"][s]).permute(0, 3, 1, 2).to(dtype)
        labels = torch.from_numpy(ref["batch/mask"][s]).argmax(dim=1)  # disjoint entity masks
        factors = {n: torch.from_numpy(ref[f"batch/factor/{n}"][s]) for n in names}
        factors["visibility"] = torch.from_numpy(ref["batch/visibility"][s])
        batches.append((images, labels, factors))
    sum_terms, tracking = None, None
    if dtype == torch.float64:  # TensorFlow's reduction rounding, measured on exact terms
        sum_terms, tracking = _track_reduction_terms(model)
        forward = model.forward

        def loss_backward_only(*args, **kwargs):
            # The terms of the loss's backward, not of the gradient inputs' inner backward.
            tracking["on"] = False
            out = forward(*args, **kwargs)
            tracking["on"] = True
            return out

        model.forward = loss_backward_only
    optimizer = make_optimizer(cfg, model)
    record = _Record(config, sum_terms, tracking)
    trainer = Trainer(
        model, optimizer, batches, make_lr_scheduler(cfg, optimizer), torch.device("cpu"),
        0, steps, [record], clip=cfg.SOLVER.GRAD_CLIP_NORM,
    )  # fmt: skip
    trainer.train()
    out = {"loss": np.asarray(record.loss), "global_norm": np.asarray(record.norm)}
    for name in record.params[0]:
        out[f"param/{name}"] = np.stack([p[name] for p in record.params])
    for name in record.floors[0] if record.floors else ():
        out[f"floor/{name}"] = np.stack([f[name] for f in record.floors])
    return out


def _reference_params(ref: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """TF name -> (values (S, n), indices into the flattened variable or None)."""
    params = {}
    for key, value in ref.items():
        if not key.startswith("param/") or key.endswith((".idx", ".sum", ".sumsq", ".shape")):
            continue
        base = key.removesuffix(".val")
        idx = ref.get(f"{base}.idx")
        value = value.astype(np.float64).reshape(value.shape[0], -1)
        if base.endswith("lstm/b_gates"):
            # Sonnet adds its constant forget bias in the forward; ours holds it in the bias.
            hidden = int(np.prod(ref[f"{base}.shape"][1:]) if idx is not None else value.shape[1])
            hidden //= 4
            rows = np.arange(value.shape[1]) if idx is None else idx
            forget = (rows >= 2 * hidden) & (rows < 3 * hidden)
            value = value.astype(np.float32) + np.float32(RELEASED_LSTM_FORGET_BIAS) * forget
            value = value.astype(np.float64)
        params[base] = (value, idx)
    return params


def training_rows(config: str, ours32: dict, ours64: dict) -> list[dict]:
    """One row per quantity over the steps both runs took (the fixture may hold more):
    ``quantity``, ``scale``, ``d32``, ``d64``, ``rounding``, ``tol``, ``ratio``, ``ok`` (as in
    ``test_release_equivalence.differences``)."""
    ref = _training_fixture(config)
    steps = len(ours64["loss"])
    pairs = {
        "loss": (ref["loss"].astype(np.float64), None),
        "global_norm": (ref["global_norm"].astype(np.float64), None),
    }
    pairs.update(_reference_params(ref))
    pairs = {key: (theirs[:steps], idx) for key, (theirs, idx) in pairs.items()}
    rows = []
    for key, (theirs, idx) in pairs.items():
        a32, a64 = (o[key].reshape(o[key].shape[0], -1) for o in (ours32, ours64))
        floor = ours64.get(key.replace("param/", "floor/", 1))
        floor = 0.0 if floor is None else floor.reshape(a64.shape)
        if idx is not None:
            a32, a64 = a32[:, idx], a64[:, idx]
            floor = floor if np.isscalar(floor) else floor[:, idx]
        rows.append(_row(key, theirs.reshape(a32.shape), a32, a64, floor))
    return rows


# Steps compared: our float64 run (float64 convolutions, the reduction terms) takes ~9 s a
# Tetrominoes step and ~30 s a Multi-dSprites step here; the fixtures hold 5 of each.
STEPS = {"tetrominoes": 5, "multi_dsprites": 3}


@functools.cache
def training_runs(config: str, overrides: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """``train_ours`` in float32 and float64 over STEPS[config] steps, once per session."""
    return tuple(
        train_ours(config, dtype, overrides, steps=STEPS[config])
        for dtype in (torch.float32, torch.float64)
    )


def _format(rows: list[dict]) -> str:
    return "\n".join(
        f"{r['quantity']:<60} max|TF| {r['scale']:9.2e} f32 {r['d32']:9.2e} f64 {r['d64']:9.2e} "
        f"rounding {r['rounding']:9.2e} tol {r['tol']:9.2e} worst/tol {r['ratio']:5.2f}"
        for r in rows
    )


TRAIN_PARAMS = [
    pytest.param("tetrominoes", id="tetrominoes", marks=pytest.mark.slow),
    pytest.param("multi_dsprites", id="multi_dsprites", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("config", ["tetrominoes", "multi_dsprites"])
def test_release_schedule_is_our_default(config):
    """beta1, the decay rate and its steps of the release's configuration are our defaults
    (the learning rate differs only by the batch-size rule, see configs/README.md)."""
    ref = _training_fixture(config)
    cfg = _cfg(config)
    assert float(ref["schedule/beta1"]) == cfg.SOLVER.BETA1
    assert float(ref["schedule/decay_rate"]) == cfg.SOLVER.DECAY_RATE
    assert int(ref["schedule/decay_steps"]) == cfg.SOLVER.DECAY_STEPS


@pytest.mark.parametrize("config", TRAIN_PARAMS)
def test_training_steps_agree_with_the_release(config):
    """Loss, gradient norm and every trainable variable after each step agree with the
    release's training within float32 rounding."""
    ours32, ours64 = training_runs(config)
    rows = training_rows(config, ours32, ours64)
    _, meta, _ = _fixture(config)
    assert {f"param/{n}" for n in meta["trainable_variables"]} <= {r["quantity"] for r in rows}
    bad = [r for r in rows if not r["ok"]]
    assert not bad, "beyond float32 rounding:\n" + _format(bad)


@pytest.mark.slow
def test_torch_adam_placement_is_beyond_rounding():
    """``SOLVER.ADAM torch`` (epsilon on sqrt(v_hat)) is not the release's training: the
    parameters leave the rounding floor at the first step."""
    torch_adam = training_runs("tetrominoes", ("SOLVER.ADAM", "torch"))
    bad = {r["quantity"] for r in training_rows("tetrominoes", *torch_adam) if not r["ok"]}
    assert len([q for q in bad if q.startswith("param/")]) >= 3, sorted(bad)


@pytest.mark.slow
def test_a_per_variable_clip_is_beyond_rounding(monkeypatch):
    """Clipping each variable's gradient to norm 5 instead of their global norm (a classic
    slip, which Adam's scale invariance hides except near epsilon) leaves the floor."""
    clip_global = torch.nn.utils.clip_grad_norm_

    def clip_each(params, max_norm, *args, **kwargs):
        params = list(params)
        norm = clip_global(params, float("inf"))  # the global norm, reported as before
        for p in params:
            clip_global([p], max_norm)
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_each)
    planted = [train_ours("tetrominoes", d) for d in (torch.float32, torch.float64)]
    bad = {r["quantity"] for r in training_rows("tetrominoes", *planted) if not r["ok"]}
    assert len([q for q in bad if q.startswith("param/")]) >= 3, sorted(bad)


def main() -> None:
    """Print every row of each training fixture."""
    for config in ("tetrominoes", "multi_dsprites"):
        rows = training_rows(config, *training_runs(config))
        print(config)
        print(_format(rows))


if __name__ == "__main__":
    main()
