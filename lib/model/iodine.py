"""IODINE: iterative amortised inference of K object slots, as DeepMind released it.

The model receives its decoder, refinement network and (optional) factor regressor built by
``lib.model.build.build_model``; it holds the learned initial posterior, the input LayerNorms,
the inference loop and the loss. The refinement inputs are made from
``lib.model.refinement_inputs``' table; ``lib.model.compile`` compiles parts of a built model
from outside (MODEL.COMPILE).

Shapes: B images, T refinement steps (T+1 decodes), K slots, D latent size, C = 3 channels,
H x W pixels. Slots are folded into the batch (B*K) for the decoder and refinement network.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

import lib.model.distributions as dist
from lib import spec
from lib.model.factor_regressor import add_factor_loss
from lib.model.layers import autocast_enabled, cosine_coordinates, linear_coordinates
from lib.model.refinement_inputs import StepTensors, assemble_inputs, make_input_norms

# What the loop records per step, stacked on dim 1 of the outputs.
_RECORDED = (
    "nll",
    "kl",
    "masks",
    "mask_logits",
    "recon",
    "components",
    "z",
    "posterior_loc",
    "posterior_scale",
)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off inside where it is on (the caller's inputs are fp32), else no context at
    all, so that an fp32 run executes exactly the plain operations.

    Args:
        device: the device whose autocast state is checked.

    Returns:
        A context manager.
    """
    if autocast_enabled(device):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def released_initial_posterior(latent_dim: int, scale: float = 0.0) -> torch.Tensor:
    """The released initial value of the learned initial lambda = (loc, raw scale).

    Args:
        latent_dim: D.
        scale: if > 0, the initial posterior std of every latent (raw scale set to
            softplus^-1(std^2)); 0 keeps the released Glorot-uniform draw.

    Returns:
        (2D,) float32, drawn from torch's global generator.
    """
    value = torch.empty(2 * latent_dim)
    # TF's Glorot-uniform on a 1-D [2D] variable: fan_in = fan_out = 2D.
    limit = math.sqrt(6.0 / (4 * latent_dim))
    nn.init.uniform_(value, -limit, limit)
    if scale > 0:
        # scale = sqrt(softplus(raw)) -> raw = log(expm1(scale^2))
        value[latent_dim:] = math.log(math.expm1(scale**2))
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class IODINE(nn.Module):
    """The IODINE model: learned initial posterior, input LayerNorms, inference loop, loss.

    Args:
        decoder: maps (B*K, D) latents and an H x W size to (B*K, 4, H, W): mask logit, then
            3 means (``SpatialBroadcastDecoder``).
        refinement: maps image inputs (B*K, C_in, H, W), vector inputs (B*K, V), lambda
            (B*K, 2D) and its state to the new lambda and state (``RefinementNetwork``).
        factor_regressor: None, or a ``FactorRegressor`` whose loss joins the total when
            forward() gets labels and factors; its parameters are not part of IODINE's count.
        initial_posterior: (2D,) starting value of the learned initial lambda; None draws
            ``released_initial_posterior(latent_dim)`` here.
        num_slots: K used when forward() is not told otherwise.
        num_iters: T used when forward() is not told otherwise.
        latent_dim: D.
        image_inputs: names of the image-sized refinement inputs (any order; used sorted).
        vector_inputs: names of the vector inputs among dzp, flat_capacity, zp.
        coord_type: "linear" or "cosine" refinement coordinate channels.
        likelihood: "logistic" or "gaussian"; pixel_scale its fixed scale.
        prior_scale: std of the latent prior N(0, prior_scale).
        loss_weights: "linspace", "uniform" or "last": weights w_t of the T+1 step losses.
        eval_sample: sample z in eval mode from a reseeded generator (else use the mean).
        eval_seed: seed of that generator.
        grad_input_reduction: the loss whose gradients are refinement inputs: "mean"
            (released: in training the batch mean L_t, so each image's gradients are divided by
            B; in eval mode the per-image sum divided by ``eval_grad_divisor``, so an image's
            result does not depend on its batch) or "sum" (per-image sum of L_t in both modes).
            The LayerNorm's eps makes the two differ for low-variance slots.
        eval_grad_divisor: the fixed B of "mean" in eval mode (> 0); ``build_model`` sets the
            per-process training micro-batch.
    """

    def __init__(
        self,
        *,
        decoder: nn.Module,
        refinement: nn.Module,
        factor_regressor: nn.Module | None = None,
        initial_posterior: torch.Tensor | None = None,
        num_slots: int = 7,
        num_iters: int = 5,
        latent_dim: int = 64,
        image_inputs: tuple[str, ...] = spec.IMAGE_INPUTS,
        vector_inputs: tuple[str, ...] = spec.VECTOR_INPUTS,
        coord_type: str = "linear",
        likelihood: str = "logistic",
        pixel_scale: float = 0.03,
        prior_scale: float = math.sqrt(math.log(2.0)),
        loss_weights: str = "linspace",
        eval_sample: bool = True,
        eval_seed: int = 0,
        grad_input_reduction: str = "mean",
        eval_grad_divisor: float = 32.0,
    ) -> None:
        super().__init__()
        _check_choice("likelihood", likelihood, spec.LIKELIHOODS)
        _check_choice("grad_input_reduction", grad_input_reduction, spec.GRAD_INPUT_REDUCTIONS)
        _check_choice("loss_weights", loss_weights, spec.LOSS_WEIGHTS)
        _check_choice("coord_type", coord_type, spec.COORD_TYPES)
        if not eval_grad_divisor > 0:
            raise ValueError(f"eval_grad_divisor must be > 0, got {eval_grad_divisor!r}")
        self.num_slots, self.num_iters, self.latent_dim = num_slots, num_iters, latent_dim
        self.image_inputs = tuple(sorted(image_inputs))
        self.vector_inputs = tuple(sorted(vector_inputs))
        self.coord_type = coord_type
        self.likelihood, self.pixel_scale = likelihood, pixel_scale
        self.prior_scale = prior_scale
        self.loss_weights = loss_weights
        self.eval_sample, self.eval_seed = eval_sample, eval_seed
        self.grad_input_reduction = grad_input_reduction
        self.eval_grad_divisor = float(eval_grad_divisor)

        # Registration order (decoder, refinement, input norms, factor regressor) is the
        # parameter order that the optimiser and the clipping norm see: keep it.
        self.decoder = decoder
        self.refinement = refinement
        used = self.image_inputs + self.vector_inputs
        self.input_norms = make_input_norms(used, coord_type, latent_dim)
        if initial_posterior is None:
            initial_posterior = released_initial_posterior(latent_dim)
        # Learned initial lambda = (loc, raw scale), shared by every slot and image.
        self.init_posterior = nn.Parameter(initial_posterior.detach().clone())
        self.factor_regressor = factor_regressor

    def step_weights(self, num_iters: int) -> list[float]:
        """Weights w_t of the T+1 per-step losses."""
        if self.loss_weights == "linspace":
            return torch.linspace(0.0, 1.0, num_iters + 1).tolist()
        if self.loss_weights == "uniform":
            return [1.0] * (num_iters + 1)
        return [0.0] * num_iters + [1.0]

    def decode(self, z: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
        """Decode every slot's latent.

        Args:
            z: (B, K, D).
            height, width: output size.

        Returns:
            dict with ``mask_logits`` (B, K, H, W), ``components`` (B, K, 3, H, W) means,
            ``masks`` (B, K, H, W) softmax over K and ``recon`` (B, 3, H, W) = sum_k m_k mu_k.
        """
        b, k, d = z.shape
        out = self.decoder(z.reshape(b * k, d), height, width)  # (B*K, 4, H, W)
        # Likelihood arithmetic stays in at least float32 under bf16 autocast.
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        out = out.view(b, k, 4, height, width)
        mask_logits, components = out[:, :, 0], out[:, :, 1:]
        masks = torch.softmax(mask_logits, dim=1)
        recon = (masks[:, :, None] * components).sum(dim=1)
        return {
            "mask_logits": mask_logits,
            "components": components,
            "masks": masks,
            "recon": recon,
        }

    def latent_kl(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Per-dimension KL to the prior; (..., D) -> (..., D)."""
        return dist.gaussian_kl(loc, scale, self.prior_scale)

    def _noise(self, b: int, k: int, num_iters: int, device, dtype) -> list[torch.Tensor]:
        """Standard-normal noise for each of the T+1 samples of z, each (B, K, D) or (1, K, D)."""
        d = self.latent_dim
        if self.training:
            return [torch.randn(b, k, d, device=device, dtype=dtype) for _ in range(num_iters + 1)]
        if not self.eval_sample:
            return [torch.zeros(1, k, d, device=device, dtype=dtype)] * (num_iters + 1)
        # Reseeded on every call and shared by the batch: each image's result depends only on
        # that image; the slots still differ through their own draws.
        gen = torch.Generator(device="cpu").manual_seed(self.eval_seed)
        noise = torch.randn(num_iters + 1, 1, k, d, generator=gen).to(device=device, dtype=dtype)
        return list(noise.unbind(0))

    def _coordinates(self, height: int, width: int, device) -> torch.Tensor:
        """The refinement's coordinate channels, (2 or 8, H, W)."""
        if self.coord_type == "linear":
            return linear_coordinates(height, width, "xy", device=device)
        return cosine_coordinates(height, width, device=device)

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        num_slots: int | None = None,
        num_iters: int | None = None,
        labels: torch.Tensor | None = None,
        factors: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run T refinement steps and compute the loss.

        Works under ``torch.no_grad()``: the gradient inputs still need autograd, so the
        forward enables it internally but then cuts the chain between steps (nothing is kept
        for a backward pass). Not usable under ``torch.inference_mode()``.

        Args:
            images: (B, 3, H, W) in [0, 1].
            num_slots: K (default: as built); parameters do not depend on K.
            num_iters: T (default: as built).
            labels: (B, H, W) int64 true label maps (entity l = label l), used with factors.
            factors: None, or ``{name: (B, L, ...)}`` plus ``visibility`` (B, L) (a collated
                ``return_factors`` batch). With a ``factor_regressor`` and labels, its loss
                (times its ``loss_weight``) is added to ``loss``; its input is detached, so
                IODINE's gradients are unchanged.

        Returns:
            dict with
            ``loss`` scalar: sum_t w_t (mean_b NLL_t + mean_b sum_k KL_t) (differentiable);
            ``nll``, ``kl`` (T+1,): batch means per step;
            ``nll_per_image`` (B, T+1) and ``kl_per_image`` (B, T+1, K);
            ``masks`` (B, T+1, K, H, W); ``mask_logits`` (B, T+1, K, H, W);
            ``recon`` (B, T+1, 3, H, W); ``components`` (B, T+1, K, 3, H, W);
            ``z``, ``posterior_loc``, ``posterior_scale`` (B, T+1, K, D).
            Everything but ``loss`` is detached.
            With factors: ``factor_loss`` (scalar, detached), ``factor_scores`` {name:
            scalar}, ``factor_assignment`` (B, L, K), ``factor_matched`` {name: (B, L, size)}
            the matched slot's prediction, ``factor_targets`` {name: (B, L, size)}.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"IODINE expects images of shape (B, 3, H, W), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(f"IODINE expects float images in [0, 1], got dtype {images.dtype}")
        k = num_slots or self.num_slots
        t_max = self.num_iters if num_iters is None else num_iters
        keep_chain = torch.is_grad_enabled()
        with torch.enable_grad():
            out = self._infer(images, k, t_max, keep_chain)
        if self.factor_regressor is not None:
            add_factor_loss(self.factor_regressor, out, labels, factors, keep_chain)
        return out

    def _infer(self, images: torch.Tensor, k: int, t_max: int, keep_chain: bool) -> dict:
        """The T refinement steps and T+1 losses (``forward``'s outputs but the factors')."""
        b, _, h, w = images.shape
        device, dtype = images.device, self.init_posterior.dtype
        x = images[:, None]  # (B, 1, 3, H, W)
        weights = self.step_weights(t_max)
        noise = self._noise(b, k, t_max, device, dtype)
        coords = self._coordinates(h, w, device).to(images.dtype)  # (2 or 8, H, W)
        maybe_no_grad = contextlib.nullcontext if keep_chain else torch.no_grad

        lam = self.init_posterior.expand(b, k, 2 * self.latent_dim)  # (B, K, 2D)
        state = self.refinement.initial_state(b * k, device, dtype)
        total_loss = images.new_zeros(())
        record: dict[str, list[torch.Tensor]] = {name: [] for name in _RECORDED}
        for t in range(t_max + 1):
            if not keep_chain:
                # No backward will follow: cut the chain so that each step's graph is freed.
                lam = lam.detach().requires_grad_(True)
            loc, scale = dist.posterior_params(lam)  # (B, K, D) each
            z = loc + scale * noise[t]  # (B, K, D)
            dec = self.decode(z, h, w)
            mask_logits, mu = dec["mask_logits"], dec["components"]
            # Under bf16 autocast the likelihood and KL stay fp32 (decode returns fp32).
            with full_precision(device):
                losses = self._step_losses(x, mu, mask_logits, loc, scale)
            comp_lp, log_masks, log_px, nll, kl, step_loss, grad_loss = losses
            if weights[t] != 0.0:
                total_loss = total_loss + weights[t] * step_loss
            step = {"nll": nll, "kl": kl, "z": z, "posterior_loc": loc, "posterior_scale": scale}
            for name in _RECORDED:
                record[name].append((step[name] if name in step else dec[name]).detach())
            if t == t_max:
                break

            # Gradient inputs: one backward through this step's decoder, no second-order graph.
            d_lam, d_mu, d_logits = torch.autograd.grad(
                grad_loss, [lam, mu, mask_logits], retain_graph=keep_chain
            )  # (B, K, 2D), (B, K, 3, H, W), (B, K, H, W)
            with maybe_no_grad():
                flat_lam = lam.reshape(b * k, -1)  # (B*K, 2D)
                tensors = StepTensors(
                    images, coords, flat_lam, mu, mask_logits, log_masks, comp_lp, log_px,
                    d_lam, d_mu, d_logits,
                )  # fmt: skip
                lam, state = self._refine(tensors, state)
        return self._outputs(record, total_loss, keep_chain)

    @staticmethod
    def _outputs(record: dict, total_loss: torch.Tensor, keep_chain: bool) -> dict:
        """Stack the per-step records (dim 1) and add the per-step batch means."""
        out = {name: torch.stack(vals, dim=1) for name, vals in record.items()}
        out["nll_per_image"] = out.pop("nll")  # (B, T+1)
        out["kl_per_image"] = out.pop("kl")  # (B, T+1, K)
        out["nll"] = out["nll_per_image"].mean(dim=0)  # (T+1,)
        out["kl"] = out["kl_per_image"].sum(dim=2).mean(dim=0)  # (T+1,)
        out["loss"] = total_loss if keep_chain else total_loss.detach()
        return out

    def _step_losses(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        mask_logits: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The likelihood and losses of one step (no parameters: compiled, its backward
        computes only the gradients the refinement inputs need).

        Args:
            x: (B, 1, 3, H, W) images; mu: (B, K, 3, H, W); mask_logits: (B, K, H, W);
            loc, scale: (B, K, D) posterior parameters.

        Returns:
            comp_lp, log_masks (B, K, H, W); log_px (B, H, W); nll (B,); kl (B, K); the
            step loss L_t (scalar) and the loss whose gradients are refinement inputs (scalar).
        """
        comp_lp = dist.pixel_log_prob(x, mu, self.pixel_scale, self.likelihood)  # (B,K,H,W)
        log_masks = F.log_softmax(mask_logits, dim=1)
        log_px = dist.mixture_log_prob(log_masks, comp_lp)  # (B, H, W)
        nll = -log_px.sum(dim=(1, 2))  # (B,)
        kl = self.latent_kl(loc, scale).sum(dim=-1)  # (B, K)
        step_loss = nll.mean() + kl.sum(dim=1).mean()
        if self.grad_input_reduction == "sum":
            grad_loss = nll.sum() + kl.sum()
        elif self.training:
            grad_loss = step_loss  # released: the batch mean over this process's batch
        else:
            # A fixed divisor in place of B keeps evaluation independent of the batch.
            grad_loss = (nll.sum() + kl.sum()) / self.eval_grad_divisor
        return comp_lp, log_masks, log_px, nll, kl, step_loss, grad_loss

    def _refine(self, s: StepTensors, state) -> tuple[torch.Tensor, object]:
        """Assemble the refinement inputs and update lambda.

        Args:
            s: the step's tensors (``StepTensors``); state: the LSTM state.

        Returns:
            new lambda (B, K, 2D) and the new LSTM state.
        """
        b, k = s.mu.shape[:2]
        image_in, vector_in = assemble_inputs(
            s, self.image_inputs, self.vector_inputs, self.input_norms
        )  # (B*K, C_in, H, W), (B*K, V)
        new_lam, state = self.refinement(image_in, vector_in, s.flat_lam, state)
        return new_lam.view(b, k, -1), state
