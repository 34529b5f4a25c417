"""The likelihood pieces against explicit, independent computations."""

import math

import torch

from lib.model import distributions as dist


def _logistic_density(x, mean, s):
    # pdf = sigmoid(u) * sigmoid(-u) / s: a different formula from the implementation's.
    u = (x - mean) / s
    return torch.sigmoid(u) * torch.sigmoid(-u) / s


def test_logistic_log_prob_matches_density_product_over_channels():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 3, 5, 5, generator=gen, dtype=torch.float64)
    mean = torch.rand(2, 4, 3, 5, 5, generator=gen, dtype=torch.float64)
    got = dist.pixel_log_prob(x, mean, 0.03, "logistic")
    want = torch.log(_logistic_density(x, mean, 0.03).prod(dim=2))
    torch.testing.assert_close(got, want)


def test_gaussian_log_prob_matches_torch_normal():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 3, 4, 4, generator=gen, dtype=torch.float64)
    mean = torch.rand(2, 3, 3, 4, 4, generator=gen, dtype=torch.float64)
    got = dist.pixel_log_prob(x, mean, 0.1, "gaussian")
    want = torch.distributions.Normal(mean, 0.1).log_prob(x).sum(dim=2)
    torch.testing.assert_close(got, want)


def test_leave_one_out_equals_explicit_loop_over_slots():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 6, 6, generator=gen, dtype=torch.float64) * 3
    comp = torch.randn(2, 5, 6, 6, generator=gen, dtype=torch.float64) * 20
    got = dist.leave_one_out_log_prob(logits, comp)
    for k in range(5):
        keep = [j for j in range(5) if j != k]
        probs = torch.softmax(logits[:, keep], dim=1)
        # A mixture density summed in probability space (float64 holds these magnitudes).
        want = torch.log((probs * comp[:, keep].exp()).sum(dim=1))
        torch.testing.assert_close(got[:, k], want)


def test_component_posterior_is_released_formula_and_finite_at_extremes():
    gen = torch.Generator().manual_seed(4)
    comp = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64) * 5
    p = comp.exp()
    torch.testing.assert_close(dist.component_posterior(comp), p / (p.sum(1, keepdim=True) + 1e-6))
    # Densities that underflow (or overflow) float32 must not give NaN: 0/0 in the port.
    extreme = torch.tensor([-1e4, -2e4, 1e3], dtype=torch.float32).view(1, 3, 1, 1)
    out = dist.component_posterior(extreme)
    assert torch.isfinite(out).all()
    assert 0.999 < out[0, 2].item() <= 1.0


def test_gaussian_kl_matches_torch_kl_divergence():
    gen = torch.Generator().manual_seed(5)
    loc = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    scale = torch.rand(3, 7, generator=gen, dtype=torch.float64) + 0.1
    prior = math.sqrt(math.log(2.0))
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, prior)
    )
    torch.testing.assert_close(dist.gaussian_kl(loc, scale, prior), want)


def test_posterior_scale_is_sqrt_softplus():
    lam = torch.tensor([[0.3, -1.0, 0.0, 2.0]])
    loc, scale = dist.posterior_params(lam)
    torch.testing.assert_close(loc, torch.tensor([[0.3, -1.0]]))
    want = torch.sqrt(torch.log1p(torch.exp(torch.tensor([[0.0, 2.0]]))))
    torch.testing.assert_close(scale, want)
