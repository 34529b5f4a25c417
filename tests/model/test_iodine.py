"""IODINE against independent computations: gradients, stop-gradients, loss, batch independence."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.config import load_cfg
from lib.model import build_model, trainable_parameter_counts
from tests.model.conftest import tiny_cfg

S = 0.03  # released logistic scale


def _nll_explicit(x, mu, logits):
    """Per-image NLL from the mixture formula written out (sigmoid form of the logistic pdf)."""
    u = (x[:, None] - mu) / S  # (B, K, 3, H, W)
    dens = (torch.sigmoid(u) * torch.sigmoid(-u) / S).prod(dim=2)  # (B, K, H, W)
    mix = (torch.softmax(logits, dim=1) * dens).sum(dim=1)
    return -torch.log(mix).sum(dim=(1, 2))


def _layer_norm(v):
    """Joint normalisation of each row's values, eps 1e-5, unit gain, zero bias."""
    flat = v.reshape(v.shape[0], -1)
    out = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(
        flat.var(1, unbiased=False, keepdim=True) + 1e-5
    )
    return out.view_as(v)


def test_masks_sum_to_one_and_shapes(images):
    model = build_model(tiny_cfg()).eval()
    out = model(images)
    b, t1, k = 4, 3, 3
    assert out["masks"].shape == (b, t1, k, 16, 16)
    assert out["recon"].shape == (b, t1, 3, 16, 16)
    torch.testing.assert_close(out["masks"].sum(dim=2), torch.ones(b, t1, 16, 16))
    # recon is the mask-weighted sum of the components
    want = (out["masks"][:, :, :, None] * out["components"]).sum(dim=2)
    torch.testing.assert_close(out["recon"], want)


DIVISOR = 5  # MODEL.IODINE.EVAL_GRAD_DIVISOR in the gradient-input test


@pytest.mark.parametrize(
    "mode,reduction", [("train", "mean"), ("eval", "mean"), ("train", "sum"), ("eval", "sum")]
)
def test_gradient_inputs_equal_finite_differences(images, mode, reduction):
    """dcomponents, dmask and dzp reaching their LayerNorm equal FD gradients of the loss the
    released code differentiates (float64): in training the batch mean of L_0 (per-image
    gradients divided by B), in eval mode the per-image sum over the fixed divisor; "sum" (the
    earlier behaviour) the per-image sum in both modes. The refinement then sees their
    LayerNorm (eps 1e-5)."""
    cfg = tiny_cfg(
        **{
            "MODEL.REFINEMENT.IMAGE_INPUTS": ("dcomponents", "dmask"),
            "MODEL.REFINEMENT.VECTOR_INPUTS": ("dzp",),
            "MODEL.IODINE.NUM_ITERS": 1,
            "MODEL.IODINE.GRAD_INPUT_REDUCTION": reduction,
            "MODEL.IODINE.EVAL_GRAD_DIVISOR": DIVISOR,
        }
    )
    model = build_model(cfg).double().train(mode == "train")
    x = images[:2].double()
    b, k, d = 2, 3, model.latent_dim

    def reduce(per_image):  # (B,) -> the scalar whose gradients the model feeds on
        if reduction == "sum":
            return per_image.sum()
        return per_image.mean() if mode == "train" else per_image.sum() / DIVISOR

    pre_norm, captured = {}, {}
    for name in ("dcomponents", "dmask", "dzp"):
        model.input_norms[name].register_forward_pre_hook(
            lambda mod, args, name=name: pre_norm.setdefault(name, args[0].detach().clone())
        )
    model.refinement.register_forward_pre_hook(
        lambda mod, args: captured.update(image=args[0].detach(), vector=args[1].detach())
    )
    torch.manual_seed(0)
    out = model(x)
    mu0 = out["components"][:, 0].clone()
    logits0 = out["mask_logits"][:, 0].clone()
    loc0, scale0 = out["posterior_loc"][:, 0], out["posterior_scale"][:, 0]
    noise = (out["z"][:, 0] - loc0) / scale0  # (B, K, D), the draw this step used

    def fd(tensor, fn, idx_list, h=1e-6):
        grads = []
        for idx in idx_list:
            plus, minus = tensor.clone(), tensor.clone()
            plus[idx] += h
            minus[idx] -= h
            grads.append(((fn(plus) - fn(minus)) / (2 * h)).item())
        return torch.tensor(grads, dtype=torch.float64)

    # dL/dmu and dL/dlogits: autograd of the explicit NLL, checked by central differences.
    gen = torch.Generator().manual_seed(0)
    mu_idx = [
        tuple(int(torch.randint(0, n, (1,), generator=gen)) for n in mu0.shape) for _ in range(6)
    ]
    lg_idx = [
        tuple(int(torch.randint(0, n, (1,), generator=gen)) for n in logits0.shape)
        for _ in range(6)
    ]
    fd_mu = fd(mu0, lambda m: reduce(_nll_explicit(x, m, logits0)), mu_idx)
    fd_lg = fd(logits0, lambda lg: reduce(_nll_explicit(x, mu0, lg)), lg_idx)
    mu_req = mu0.clone().requires_grad_(True)
    lg_req = logits0.clone().requires_grad_(True)
    g_mu, g_lg = torch.autograd.grad(reduce(_nll_explicit(x, mu_req, lg_req)), [mu_req, lg_req])
    torch.testing.assert_close(torch.stack([g_mu[i] for i in mu_idx]), fd_mu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.stack([g_lg[i] for i in lg_idx]), fd_lg, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pre_norm["dcomponents"], g_mu.reshape(b * k, 3, 16, 16))
    torch.testing.assert_close(pre_norm["dmask"], g_lg.reshape(b * k, 1, 16, 16))
    image_in = captured["image"].view(b, k, 4, 16, 16)
    torch.testing.assert_close(
        image_in[:, :, :3], _layer_norm(g_mu.reshape(b * k, 3, 16, 16)).view(b, k, 3, 16, 16)
    )
    torch.testing.assert_close(
        image_in[:, :, 3], _layer_norm(g_lg.reshape(b * k, 16, 16)).view(b, k, 16, 16)
    )

    # dL/dlambda through decoder, sampling (the recorded noise) and the KL to N(0, prior):
    # autograd of the explicit loss, checked by central differences.
    lam0 = model.init_posterior.detach().expand(b, k, 2 * d).clone()
    prior = torch.distributions.Normal(0.0, math.sqrt(math.log(2.0)))

    def loss_of_lam(lam):
        loc, raw = lam[..., :d], lam[..., d:]
        scale = torch.sqrt(F.softplus(raw))
        dec = model.decode(loc + scale * noise, 16, 16)
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale), prior)
        nll = _nll_explicit(x, dec["components"], dec["mask_logits"])
        return reduce(nll + kl.sum(dim=(1, 2)))

    lam_req = lam0.clone().requires_grad_(True)
    (g_lam,) = torch.autograd.grad(loss_of_lam(lam_req), [lam_req])
    lam_idx = [
        tuple(int(torch.randint(0, n, (1,), generator=gen)) for n in lam0.shape) for _ in range(6)
    ]
    with torch.no_grad():
        fd_lam = fd(lam0, loss_of_lam, lam_idx, h=1e-5)
    torch.testing.assert_close(
        torch.stack([g_lam[i] for i in lam_idx]), fd_lam, rtol=1e-4, atol=1e-5
    )
    g_lam = g_lam.reshape(b * k, 2 * d)
    torch.testing.assert_close(pre_norm["dzp"], g_lam)
    torch.testing.assert_close(captured["vector"], _layer_norm(g_lam))


def test_stop_gradient_inputs_are_detached_before_layer_norm(images):
    """The five normalised inputs reach their LayerNorm detached: no gradient flows back."""
    model = build_model(tiny_cfg()).train()
    seen = {}
    for name, norm in model.input_norms.items():
        norm.register_forward_pre_hook(
            lambda mod, args, name=name: seen.setdefault(name, []).append(args[0].requires_grad)
        )
    model(images)["loss"].backward()
    assert set(seen) == {"counterfactual", "dcomponents", "dmask", "dzp", "log_prob"}
    assert all(not any(flags) for flags in seen.values()), seen


def test_gradient_flows_through_the_unrolled_chain(images):
    """With only the last step weighted, the refinement network and the initial lambda still
    get gradient, which can only arrive through lambda's chain of updates."""
    model = build_model(tiny_cfg(**{"MODEL.IODINE.LOSS_WEIGHTS": "last"})).train()
    model(images)["loss"].backward()
    assert model.init_posterior.grad.abs().sum() > 0
    for name, p in model.refinement.named_parameters():
        if not p.requires_grad:  # the LSTM's frozen bias_hh (Sonnet has one bias vector)
            assert name == "lstm.bias_hh" and p.grad is None
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # The step-0 decode feeds the non-stopped inputs (components, mask, posterior, pred_mask)
    # whose gradient also reaches the LayerNorm gains only through the chain.
    assert model.input_norms["dcomponents"].weight.grad.abs().sum() > 0


def test_eval_is_deterministic(images):
    model = build_model(tiny_cfg()).eval()
    out1 = model(images)
    out2 = model(images)
    torch.testing.assert_close(out1["masks"], out2["masks"])  # deterministic evaluation


def test_loss_is_linspace_weighted_sum_of_step_terms(images):
    t = 3
    model = build_model(tiny_cfg(**{"MODEL.IODINE.NUM_ITERS": t})).train()
    torch.manual_seed(0)
    out = model(images)
    w = np.linspace(0.0, 1.0, t + 1)
    want = sum(w[i] * (out["nll"][i] + out["kl"][i]) for i in range(t + 1))
    torch.testing.assert_close(out["loss"].detach(), torch.as_tensor(want, dtype=torch.float32))
    # and the recorded NLL is the mixture NLL of the recorded masks and components
    nll_last = _nll_explicit(
        images.double(), out["components"][:, -1].double(), out["mask_logits"][:, -1].double()
    )
    torch.testing.assert_close(out["nll_per_image"][:, -1].double(), nll_last, rtol=1e-4, atol=1e-2)


def test_eval_result_of_each_image_equals_running_it_alone(images):
    model = build_model(tiny_cfg()).eval()
    with torch.no_grad():
        batch = model(images)
        for i in range(images.shape[0]):
            alone = model(images[i : i + 1])
            torch.testing.assert_close(alone["masks"][0], batch["masks"][i], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(alone["recon"][0], batch["recon"][i], atol=1e-4, rtol=1e-4)


def test_no_grad_caller_gets_detached_outputs_and_more_slots_work(images):
    model = build_model(tiny_cfg()).eval()
    with torch.no_grad():
        out = model(images, num_slots=5, num_iters=4)
    assert not out["loss"].requires_grad
    assert out["masks"].shape == (4, 5, 5, 16, 16)


def _expected_params(d, coord_ch, ref_convs, ref_k, mlp, lstm, dec_convs, dec_k):
    """Trainable parameter count from DESIGN.md's layer table, written out (Sonnet's LSTM:
    one weight matrix on [input, h] and one bias vector)."""
    n = 0
    cin = 1 + 3 + coord_ch + 1 + 3 + 1 + 3 + 1 + 1 + 1 + 1  # the 11 image inputs, sorted
    for c in ref_convs:
        n += cin * c * ref_k * ref_k + c
        cin = c
    for m in mlp:
        n += cin * m + m
        cin = m
    cin += 2 * d + 1 + 2 * d  # [h, dzp, flat_capacity, zp]
    if lstm:
        n += 4 * lstm * (cin + lstm) + 4 * lstm
        cin = lstm
    n += cin * 2 * d + 2 * d  # residual head
    cin = d + 1 + 2  # z, constant 5.0, two coordinates
    for c in dec_convs:
        n += cin * c * dec_k * dec_k + c
        cin = c
    n += cin * 4 * dec_k * dec_k + 4
    n += 2 * (3 + 1 + 1 + 1 + 2 * d)  # LayerNorm gains and biases
    n += 2 * d  # initial lambda
    return n


@pytest.mark.parametrize(
    "config,expected,released,lstm",
    [
        (
            "configs/clevr6_prop.yaml",
            _expected_params(64, 2, [64] * 4, 3, [256, 256], 256, [64] * 4, 3),
            1_177_168,
            256,
        ),
        (
            "configs/multi_dsprites.yaml",
            _expected_params(16, 8, [32] * 3, 5, [128], 128, [32] * 4, 5),
            339_152,
            128,
        ),
        (
            "configs/tetrominoes.yaml",
            _expected_params(32, 8, [32] * 3, 5, [128], 0, [32] * 4, 5),
            199_568,
            0,
        ),
    ],
)
def test_paper_config_parameter_counts(config, expected, released, lstm):
    """Trainable counts equal the layer table and the released checkpoints' counts; the
    earlier LSTM init (zero_bias) trains PyTorch's second bias too."""
    assert expected == released

    def count(net):
        # The factor regressor is reported apart (not part of IODINE's released count).
        named = net.named_parameters()
        return sum(p.numel() for n, p in named if p.requires_grad and "factor" not in n)

    model = build_model(load_cfg(config))
    assert count(model) == released
    # Its linear map: latent size x (sum of the released factor sizes), plus a bias.
    latent, factor_sizes = {
        "configs/clevr6_prop.yaml": (64, 9 + 4 + 3 + 3),
        "configs/multi_dsprites.yaml": (16, 3 + 4 + 1 + 1 + 1 + 2),
        "configs/tetrominoes.yaml": (32, 2 + 3 + 20),
    }[config]
    assert trainable_parameter_counts(model) == {
        "iodine": released,
        "factor_regressor": (latent + 1) * factor_sizes,
    }
    old = build_model(load_cfg(config, ["MODEL.REFINEMENT.LSTM_INIT", "zero_bias"]))
    assert count(old) == released + 4 * lstm


@pytest.mark.slow
def test_small_model_overfits_one_batch():
    """Loss on a fixed batch of two-square scenes falls by at least 3x within 150 Adam steps."""
    torch.manual_seed(0)
    imgs = torch.zeros(4, 3, 16, 16)
    for i in range(4):
        imgs[i, 0, 2 + i : 8 + i, 2:8] = 1.0
        imgs[i, 2, 8:14, 8 - i : 14 - i] = 1.0
    cfg = tiny_cfg(**{"MODEL.IODINE.PIXEL_SCALE": 0.1, "MODEL.IODINE.LIKELIHOOD": "gaussian"})
    model = build_model(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3, betas=(0.95, 0.999))
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = model(imgs)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) / 3, (losses[:5], losses[-10:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(images):
    model = build_model(tiny_cfg()).eval()
    cpu = model(images)
    gpu = model.cuda()(images.cuda())
    torch.testing.assert_close(gpu["masks"].cpu(), cpu["masks"], atol=1e-3, rtol=1e-3)


def test_iodine_built_directly_from_its_parts(images):
    from lib.model.decoder import SpatialBroadcastDecoder
    from lib.model.factor_regressor import FactorRegressor
    from lib.model.iodine import IODINE, released_initial_posterior
    from lib.model.refinement import RefinementNetwork
    from lib.spec import FACTOR_MAPPINGS

    torch.manual_seed(0)
    d = 4
    model = IODINE(
        decoder=SpatialBroadcastDecoder(d, (8,)),
        refinement=RefinementNetwork(18, 4 * d + 1, 2 * d, (8,), 3, mlp_sizes=(8,), lstm_size=8),
        factor_regressor=FactorRegressor(latent_dim=d, mapping=FACTOR_MAPPINGS["clevr"]),
        num_slots=3,
        num_iters=2,
        latent_dim=d,
    )
    # The factor regressor is a constructor argument, registered last.
    assert list(model.state_dict())[-2:] == [
        "factor_regressor.predict_latents.weight",
        "factor_regressor.predict_latents.bias",
    ]
    assert model.image_inputs[0] == "capacity" and len(model.image_inputs) == 11
    limit = math.sqrt(6.0 / (4 * d))  # Glorot-uniform on a [2D] variable
    assert model.init_posterior.abs().max() <= limit
    out = model(images)
    assert out["masks"].shape == (4, 3, 3, 16, 16) and out["loss"].requires_grad
    out["loss"].backward()  # no labels: the regressor still takes part (a zero gradient)
    assert torch.equal(
        model.factor_regressor.predict_latents.weight.grad, torch.zeros(9 + 4 + 3 + 3, d)
    )
    raw = released_initial_posterior(d, 0.5)[d:]
    torch.testing.assert_close(F.softplus(raw).sqrt(), torch.full((d,), 0.5))
    for key, bad in [("likelihood", "laplace"), ("coord_type", "polar"), ("loss_weights", "x")]:
        with pytest.raises(ValueError, match=key):
            IODINE(decoder=model.decoder, refinement=model.refinement, **{key: bad})
