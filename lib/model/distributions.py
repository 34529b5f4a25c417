"""Pixel mixture likelihood, latent Gaussian and KL, all in log space.

Shapes: B images, K slots, C = 3 colour channels, H x W pixels, D latent size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pixel_log_prob(
    x: torch.Tensor, mean: torch.Tensor, scale: float, family: str = "logistic"
) -> torch.Tensor:
    """Log density of each slot's component at each pixel, channels independent.

    Args:
        x: (B, 1, C, H, W) image.
        mean: (B, K, C, H, W) component means mu_k.
        scale: fixed scale (logistic s, or Gaussian sigma).
        family: "logistic" (released) or "gaussian" (paper text).

    Returns:
        (B, K, H, W): log p_k(x) = sum over channels of the per-channel log density.
    """
    u = (x - mean) / scale
    if family == "logistic":
        # log of exp(-u) / (s (1 + exp(-u))^2), written to stay finite for any u.
        lp = -u - 2.0 * F.softplus(-u) - math.log(scale)
    elif family == "gaussian":
        lp = -0.5 * u * u - math.log(scale) - 0.5 * math.log(2.0 * math.pi)
    else:
        raise ValueError(f"unknown likelihood family {family!r}")
    return lp.sum(dim=2)


def mixture_log_prob(log_masks: torch.Tensor, comp_log_prob: torch.Tensor) -> torch.Tensor:
    """Per-pixel log of the mixture density sum_k m_k p_k(x).

    Args:
        log_masks: (B, K, H, W) log softmax of the mask logits over K.
        comp_log_prob: (B, K, H, W) log p_k(x).

    Returns:
        (B, H, W) log p(x).
    """
    return torch.logsumexp(log_masks + comp_log_prob, dim=1)


def leave_one_out_log_prob(mask_logits: torch.Tensor, comp_log_prob: torch.Tensor) -> torch.Tensor:
    """log p(x) of the mixture without slot k, for every k at once (released counterfactual).

    The released code rebuilds the mixture from the other K-1 slots' logits and components,
    so the remaining masks are renormalised by their own softmax:
    log p_{-k}(x) = logsumexp_{j != k}(l_j + log p_j) - logsumexp_{j != k}(l_j).

    Args:
        mask_logits: (B, K, H, W).
        comp_log_prob: (B, K, H, W).

    Returns:
        (B, K, H, W); zeros when K == 1 (no mixture is left).
    """
    k = mask_logits.shape[1]
    if k == 1:
        return torch.zeros_like(mask_logits)
    drop = torch.eye(k, dtype=torch.bool, device=mask_logits.device)[None, :, :, None, None]
    joint = (mask_logits + comp_log_prob).unsqueeze(1).expand(-1, k, -1, -1, -1)
    logits = mask_logits.unsqueeze(1).expand(-1, k, -1, -1, -1)  # (B, K_drop, K, H, W)
    num = torch.logsumexp(joint.masked_fill(drop, float("-inf")), dim=2)
    den = torch.logsumexp(logits.masked_fill(drop, float("-inf")), dim=2)
    return num - den


def component_posterior(comp_log_prob: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """p_k(x) / (sum_j p_j(x) + eps), from component likelihoods only (released "posterior").

    Computed as exp(log p_k - log(sum_j p_j + eps)) so that neither underflow nor overflow of
    the densities (logistic scale 0.03 gives densities up to ~580) produces 0/0.

    Args:
        comp_log_prob: (B, K, H, W).

    Returns:
        (B, K, H, W) in [0, 1).
    """
    total = torch.logsumexp(comp_log_prob, dim=1, keepdim=True)
    log_den = torch.logaddexp(total, torch.full_like(total, math.log(eps)))
    return torch.exp(comp_log_prob - log_den)


def posterior_params(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split lambda into the Normal's loc and scale = sqrt(softplus(raw)) (released).

    Args:
        lam: (..., 2D).

    Returns:
        loc (..., D) and scale (..., D).
    """
    loc, raw = lam.chunk(2, dim=-1)
    return loc, torch.sqrt(F.softplus(raw))


def gaussian_kl(loc: torch.Tensor, scale: torch.Tensor, prior_scale: float) -> torch.Tensor:
    """Per-dimension KL(N(loc, scale) || N(0, prior_scale)).

    Args:
        loc, scale: (..., D).
        prior_scale: std of the prior.

    Returns:
        (..., D) KL of each latent dimension (sum over D for the KL of a slot).
    """
    ratio = (scale / prior_scale) ** 2
    return 0.5 * (ratio + (loc / prior_scale) ** 2 - 1.0 - torch.log(ratio))
