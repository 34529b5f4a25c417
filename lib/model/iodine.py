"""IODINE: iterative amortised inference of K object slots, as DeepMind released it.

Shapes: B images, T refinement steps (T+1 decodes), K slots, D latent size, C = 3 channels,
H x W pixels. Slots are folded into the batch (B*K) for the decoder and refinement network.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lib.model import distributions as dist
from lib.model.decoder import SpatialBroadcastDecoder
from lib.model.layers import (
    LSTM_INITS,
    SlotLayerNorm,
    autocast_enabled,
    cosine_coordinates,
    linear_coordinates,
    released_init_,
)
from lib.model.refinement import RefinementNetwork

# Channels of each image-sized refinement input (coordinates depend on the coordinate type).
IMAGE_INPUT_CHANNELS = {
    "capacity": 1,
    "components": 3,
    "counterfactual": 1,
    "dcomponents": 3,
    "dmask": 1,
    "image": 3,
    "log_prob": 1,
    "mask": 1,
    "posterior": 1,
    "pred_mask": 1,
}
# Inputs that are LayerNorm-ed and stop-gradient (released DEFAULT_PREPROCESSING/STOP_GRADIENT).
NORMALISED_INPUTS = ("counterfactual", "dcomponents", "dmask", "dzp", "log_prob")
LEGACY_INPUTS = ("capacity", "flat_capacity")


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


def _keep_saved_buffers() -> contextlib.AbstractContextManager:
    """AOTAutograd's donated buffers off while a compiled model computes gradients.

    The gradient-input ``autograd.grad`` retains the graph for the final backward, and a
    compiled backward that donates (frees) its saved buffers refuses ``retain_graph=True``.
    The setting is read when a graph is compiled: on the forward's first call and every
    recompilation, and on the backward's first call (it is compiled lazily).
    """
    return torch._functorch.config.patch(donated_buffer=False)


def _keep_buffers(fn):
    """``fn`` called under ``_keep_saved_buffers``."""

    def call(*args):
        with _keep_saved_buffers():
            return fn(*args)

    return call


class IODINE(nn.Module):
    """The IODINE model: decoder, refinement network, learned initial posterior, loss.

    Args:
        num_slots: K used when forward() is not told otherwise.
        num_iters: T used when forward() is not told otherwise.
        latent_dim: D.
        image_inputs: names of the image-sized refinement inputs (any order; used sorted).
        vector_inputs: names of the vector inputs among dzp, flat_capacity, zp.
        coord_type: "linear" or "cosine" refinement coordinate channels.
        refine_conv_channels, refine_kernel_size, refine_stride, refine_padding,
        refine_mlp_sizes, refine_lstm_size, refine_pool: the refinement network (see
            RefinementNetwork).
        refine_lstm_init: "sonnet" (released: Sonnet 1.35's LSTM, ``bias_hh`` frozen at zero)
            or "zero_bias" (zero gate biases, trainable ``bias_hh``); see
            ``layers.released_init_``. Used with ``init="released"`` only.
        refine_lstm_forget_bias: constant added to the LSTM forget gate (folded into
            ``bias_ih`` at initialisation).
        image_size: side of the square input (used only by refine_pool="flatten").
        decoder_conv_channels, decoder_kernel_size, decoder_output_kernel_size,
        decoder_factorized_first_layer: the decoder.
        decoder_blob_init_gain: if > 0, start the decoder's mask logit as -gain times the
            distance from (z_0, z_1) (``SpatialBroadcastDecoder.blob_init_``); 0 = released.
        likelihood: "logistic" or "gaussian"; pixel_scale its fixed scale.
        prior_scale: std of the latent prior N(0, prior_scale).
        loss_weights: "linspace", "uniform" or "last": weights w_t of the T+1 step losses.
        eval_sample: sample z in eval mode from a reseeded generator (else use the mean).
        eval_seed: seed of that generator.
        init: "released" or "pytorch" (PyTorch module defaults everywhere, the LSTM included)
            weight initialisation.
        init_posterior_scale: if > 0, the initial posterior std of every latent (its raw
            scale set to softplus^-1(std^2)); 0 keeps the released Glorot-uniform init.
        legacy_constants: keep the capacity inputs and the decoder's constant 5.0.
        grad_input_reduction: the loss whose gradients are refinement inputs: "mean"
            (released: in training the batch mean L_t, so each image's gradients are divided by
            B; in eval mode the per-image sum divided by ``eval_grad_divisor``, so an image's
            result does not depend on its batch) or "sum" (per-image sum of L_t in both modes).
            The LayerNorm's eps makes the two differ for low-variance slots.
        eval_grad_divisor: the fixed B of "mean" in eval mode (> 0); ``build_model`` sets the
            per-process training micro-batch.

    Attributes:
        phase_hook: None, or a callable(phase name) returning a context manager that is
            entered around each decoder call ("decoder"), gradient-input ``autograd.grad``
            call ("grad_inputs") and refinement-network call ("refinement"); set by
            ``lib.analysis.profiling.instrument``. While a torch profiler runs, the same calls
            are marked as ``torch.profiler.record_function("iodine.<phase>")`` ranges.
        compiled: which per-step parts run compiled (``compile_``): "none", "modules" or
            "step".
    """

    def __init__(
        self,
        *,
        num_slots: int = 7,
        num_iters: int = 5,
        latent_dim: int = 64,
        image_inputs: tuple[str, ...] = tuple(sorted([*IMAGE_INPUT_CHANNELS, "coordinates"])),
        vector_inputs: tuple[str, ...] = ("dzp", "flat_capacity", "zp"),
        coord_type: str = "linear",
        refine_conv_channels: tuple[int, ...] = (64, 64, 64, 64),
        refine_kernel_size: int = 3,
        refine_stride: int = 2,
        refine_padding: str = "tf_same",
        refine_mlp_sizes: tuple[int, ...] = (256, 256),
        refine_lstm_size: int = 256,
        refine_pool: str = "avg",
        image_size: int | None = None,
        decoder_conv_channels: tuple[int, ...] = (64, 64, 64, 64),
        decoder_kernel_size: int = 3,
        decoder_output_kernel_size: int = 3,
        decoder_factorized_first_layer: bool = True,
        decoder_blob_init_gain: float = 0.0,
        likelihood: str = "logistic",
        pixel_scale: float = 0.03,
        prior_scale: float = math.sqrt(math.log(2.0)),
        loss_weights: str = "linspace",
        eval_sample: bool = True,
        eval_seed: int = 0,
        init: str = "released",
        init_posterior_scale: float = 0.0,
        legacy_constants: bool = True,
        grad_input_reduction: str = "mean",
        eval_grad_divisor: float = 32.0,
        refine_lstm_init: str = "sonnet",
        refine_lstm_forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        if likelihood not in ("logistic", "gaussian"):
            raise ValueError(f"likelihood must be 'logistic' or 'gaussian', got {likelihood!r}")
        if grad_input_reduction not in ("sum", "mean"):
            raise ValueError(f"grad_input_reduction must be sum or mean: {grad_input_reduction!r}")
        if refine_lstm_init not in LSTM_INITS:
            raise ValueError(f"refine_lstm_init must be one of {LSTM_INITS}: {refine_lstm_init!r}")
        if not eval_grad_divisor > 0:
            raise ValueError(f"eval_grad_divisor must be > 0, got {eval_grad_divisor!r}")
        if loss_weights not in ("linspace", "uniform", "last"):
            raise ValueError(f"unknown loss_weights {loss_weights!r}")
        if not legacy_constants:
            image_inputs = tuple(n for n in image_inputs if n not in LEGACY_INPUTS)
            vector_inputs = tuple(n for n in vector_inputs if n not in LEGACY_INPUTS)
        self.num_slots = num_slots
        self.num_iters = num_iters
        self.latent_dim = latent_dim
        self.image_inputs = tuple(sorted(image_inputs))
        self.vector_inputs = tuple(sorted(vector_inputs))
        self.coord_type = coord_type
        self.likelihood = likelihood
        self.pixel_scale = pixel_scale
        self.prior_scale = prior_scale
        self.loss_weights = loss_weights
        self.eval_sample = eval_sample
        self.eval_seed = eval_seed
        self.grad_input_reduction = grad_input_reduction
        self.phase_hook = None  # see Attributes; a plain attribute, not saved in state_dict
        # Set by build_model when the dataset has factors (lib.model.factor_regressor); its
        # parameter names contain "factor" and are not part of IODINE's count.
        self.factor_regressor: nn.Module | None = None
        self.compiled = "none"
        # The per-step functions the loop calls; compile_ swaps in compiled versions.
        self._step_losses_fn = self._step_losses
        self._refine_fn = self._refine
        self.eval_grad_divisor = float(eval_grad_divisor)

        channels = dict(IMAGE_INPUT_CHANNELS, coordinates=2 if coord_type == "linear" else 8)
        in_channels = sum(channels[name] for name in self.image_inputs)
        vector_sizes = {"dzp": 2 * latent_dim, "flat_capacity": 1, "zp": 2 * latent_dim}
        vector_dim = sum(vector_sizes[name] for name in self.vector_inputs)

        self.decoder = SpatialBroadcastDecoder(
            latent_dim,
            conv_channels=tuple(decoder_conv_channels),
            kernel_size=decoder_kernel_size,
            output_kernel_size=decoder_output_kernel_size,
            legacy_constant=legacy_constants,
            factorized_first_layer=decoder_factorized_first_layer,
        )
        self.refinement = RefinementNetwork(
            in_channels,
            vector_dim,
            2 * latent_dim,
            conv_channels=tuple(refine_conv_channels),
            kernel_size=refine_kernel_size,
            stride=refine_stride,
            padding=refine_padding,
            mlp_sizes=tuple(refine_mlp_sizes),
            lstm_size=refine_lstm_size,
            pool=refine_pool,
            image_size=image_size,
        )
        norm_channels = {"counterfactual": 1, "dcomponents": 3, "dmask": 1, "log_prob": 1}
        norm_channels["dzp"] = 2 * latent_dim
        used = set(self.image_inputs) | set(self.vector_inputs)
        self.input_norms = nn.ModuleDict(
            {n: SlotLayerNorm(norm_channels[n]) for n in NORMALISED_INPUTS if n in used}
        )
        # Learned initial lambda = (loc, raw scale), shared by every slot and image.
        self.init_posterior = nn.Parameter(torch.empty(2 * latent_dim))
        # TF's Glorot-uniform on a 1-D [2D] variable: fan_in = fan_out = 2D.
        limit = math.sqrt(6.0 / (4 * latent_dim))
        nn.init.uniform_(self.init_posterior, -limit, limit)
        if init_posterior_scale > 0:
            with torch.no_grad():
                # scale = sqrt(softplus(raw)) -> raw = log(expm1(scale^2))
                raw = math.log(math.expm1(init_posterior_scale**2))
                self.init_posterior[latent_dim:] = raw
        if init == "released":
            lstm = {"lstm_init": refine_lstm_init, "lstm_forget_bias": refine_lstm_forget_bias}
            released_init_(self.decoder, **lstm)
            released_init_(self.refinement, **lstm)
        elif init != "pytorch":
            raise ValueError(f"init must be 'released' or 'pytorch', got {init!r}")
        if decoder_blob_init_gain > 0:
            self.decoder.blob_init_(decoder_blob_init_gain)

    def compile_(self, mode: str, backend: str = "inductor") -> IODINE:
        """Run parts of each refinement step under ``torch.compile`` (a speed switch).

        "modules" compiles the decoder and the refinement network. Their compiled backward is
        one opaque node that computes every input's gradient, so each inner
        ``autograd.grad`` for the gradient inputs also computes the decoder's weight gradients
        (eager autograd skips them). "step" keeps the decoder eager for that reason and
        compiles the parameter-free likelihood and losses of a step (whose backward yields only
        what the gradient inputs need) and the refinement-input assembly with the refinement
        network (whose backward runs only in the final ``loss.backward()``).

        Args:
            mode: "none", "modules" or "step".
            backend: the ``torch.compile`` backend ("inductor"; "aot_eager" in tests).

        Returns:
            self.
        """
        if mode not in ("none", "modules", "step"):
            raise ValueError(f"compile mode must be 'none', 'modules' or 'step', got {mode!r}")
        if self.compiled != "none":
            raise RuntimeError(f"model already compiled ({self.compiled!r})")
        if mode == "modules":
            self.decoder = torch.compile(self.decoder, backend=backend)
            self.refinement = torch.compile(self.refinement, backend=backend)
        elif mode == "step":
            # dynamic=False: K and T change only between runs; a shape change recompiles.
            losses = torch.compile(self._step_losses, backend=backend, dynamic=False)
            refine = torch.compile(self._refine, backend=backend, dynamic=False)
            self._step_losses_fn, self._refine_fn = _keep_buffers(losses), _keep_buffers(refine)
        self.compiled = mode
        return self

    # ------------------------------------------------------------------------------------------
    def step_weights(self, num_iters: int) -> list[float]:
        """Weights w_t of the T+1 per-step losses."""
        if self.loss_weights == "linspace":
            return torch.linspace(0.0, 1.0, num_iters + 1).tolist()
        if self.loss_weights == "uniform":
            return [1.0] * (num_iters + 1)
        return [0.0] * num_iters + [1.0]

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Mark one phase of the forward (see ``phase_hook``): a profiler range while a
        profiler runs, and the hook's context when one is set."""
        if torch.compiler.is_compiling():
            # Inside a compiled step the whole compiled call is the phase.
            yield
            return
        # The range costs several microseconds even with no profiler; the check costs 0.1.
        profiling = torch.autograd._profiler_enabled()
        mark = torch.profiler.record_function if profiling else contextlib.nullcontext
        with mark(f"iodine.{name}"):
            if self.phase_hook is None:
                yield
            else:
                with self.phase_hook(name):
                    yield

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
        with self._phase("decoder"):
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
        k = num_slots or self.num_slots
        t_max = self.num_iters if num_iters is None else num_iters
        keep_chain = torch.is_grad_enabled()
        with torch.enable_grad():
            out = self._infer(images, k, t_max, keep_chain)
        if self.factor_regressor is not None:
            if factors is not None and labels is not None:
                self._add_factor_loss(out, labels, factors, keep_chain)
            elif keep_chain:
                # Not fed this batch: a zero term gives its parameters a (zero) gradient, as
                # DistributedDataParallel needs every parameter to take part in backward.
                unused = sum(p.sum() for p in self.factor_regressor.parameters())
                out["loss"] = out["loss"] + 0.0 * unused
        return out

    def _add_factor_loss(
        self, out: dict, labels: torch.Tensor, factors: dict[str, torch.Tensor], keep_chain: bool
    ) -> None:
        """Run the factor regressor on the final z and masks; add its loss to ``out``."""
        visibility = factors["visibility"].to(labels.device)
        entities = torch.arange(visibility.shape[1], device=labels.device)
        true_masks = (labels[:, None] == entities[None, :, None, None]).float()  # (B, L, H, W)
        with torch.enable_grad() if keep_chain else torch.no_grad():
            res = self.factor_regressor(
                out["z"][:, -1], out["masks"][:, -1], true_masks, factors, visibility
            )
        out["loss"] = out["loss"] + self.factor_regressor.loss_weight * res["loss"]
        out["factor_loss"] = res["loss"].detach()
        out["factor_scores"] = res["scores"]
        out["factor_assignment"] = res["assignment"]
        out["factor_targets"] = res["targets"]
        out["factor_matched"] = {
            name: torch.einsum("blk,bks->bls", res["assignment"], pred)
            for name, pred in res["predictions"].items()
        }

    def _infer(self, images: torch.Tensor, k: int, t_max: int, keep_chain: bool) -> dict:
        b, _, h, w = images.shape
        d = self.latent_dim
        device = images.device
        if not images.is_floating_point():
            raise TypeError(f"IODINE expects float images in [0, 1], got dtype {images.dtype}")
        x = images[:, None]  # (B, 1, 3, H, W)
        weights = self.step_weights(t_max)
        noise = self._noise(b, k, t_max, device, self.init_posterior.dtype)
        coords = self._coordinates(h, w, device).to(images.dtype)  # (2 or 8, H, W)
        maybe_no_grad = contextlib.nullcontext if keep_chain else torch.no_grad

        lam = self.init_posterior.expand(b, k, 2 * d)  # (B, K, 2D)
        state = self.refinement.initial_state(b * k, device, self.init_posterior.dtype)
        total_loss = images.new_zeros(())
        record: dict[str, list[torch.Tensor]] = {
            name: []
            for name in (
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
        }
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
                losses = self._step_losses_fn(x, mu, mask_logits, loc, scale)
            comp_lp, log_masks, log_px, nll, kl, step_loss, grad_loss = losses
            if weights[t] != 0.0:
                total_loss = total_loss + weights[t] * step_loss

            record["nll"].append(nll.detach())
            record["kl"].append(kl.detach())
            record["masks"].append(dec["masks"].detach())
            record["mask_logits"].append(mask_logits.detach())
            record["recon"].append(dec["recon"].detach())
            record["components"].append(mu.detach())
            record["z"].append(z.detach())
            record["posterior_loc"].append(loc.detach())
            record["posterior_scale"].append(scale.detach())
            if t == t_max:
                break

            # Gradient inputs: one backward through this step's decoder, no second-order graph.
            keep = _keep_saved_buffers() if self.compiled != "none" else contextlib.nullcontext()
            with self._phase("grad_inputs"), keep:
                d_lam, d_mu, d_logits = torch.autograd.grad(
                    grad_loss, [lam, mu, mask_logits], retain_graph=keep_chain
                )
            # Compiled, the phase marks can only wrap the whole call (assembly included).
            step_compiled = self.compiled == "step"
            outer = self._phase("refinement") if step_compiled else contextlib.nullcontext()
            with maybe_no_grad(), outer:
                lam, state = self._refine_fn(
                    images, coords, lam, state, mu, mask_logits, log_masks, comp_lp, log_px,
                    d_lam, d_mu, d_logits,
                )  # fmt: skip

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

    def _refine(
        self,
        images: torch.Tensor,
        coords: torch.Tensor,
        lam: torch.Tensor,
        state,
        mu: torch.Tensor,
        mask_logits: torch.Tensor,
        log_masks: torch.Tensor,
        comp_lp: torch.Tensor,
        log_px: torch.Tensor,
        d_lam: torch.Tensor,
        d_mu: torch.Tensor,
        d_logits: torch.Tensor,
    ):
        """Assemble the refinement inputs and update lambda.

        Args:
            images: (B, 3, H, W); coords: (c, H, W); lam: (B, K, 2D); state: LSTM state.
            mu: (B, K, 3, H, W); mask_logits, log_masks, comp_lp: (B, K, H, W);
            log_px: (B, H, W); d_lam: (B, K, 2D); d_mu: (B, K, 3, H, W); d_logits: (B, K, H, W).

        Returns:
            new lambda (B, K, 2D) and the new LSTM state.
        """
        b, k, _, h, w = mu.shape
        used = self.image_inputs
        norms = self.input_norms

        def per_slot(name: str, value: torch.Tensor) -> torch.Tensor:
            # LayerNorm each slot's (C, H, W) jointly; value (B, K, C, H, W).
            flat = value.reshape(b * k, *value.shape[2:])
            return norms[name](flat).view(b, k, *value.shape[2:])

        spatial: dict[str, torch.Tensor] = {}
        if "capacity" in used:
            spatial["capacity"] = mu.new_full((1, 1, 1, 1, 1), 0.5).expand(b, k, 1, h, w)
        if "components" in used:
            spatial["components"] = mu
        if "coordinates" in used:
            spatial["coordinates"] = coords[None, None].expand(b, k, -1, -1, -1)
        if "counterfactual" in used:
            with torch.no_grad():
                loo = dist.leave_one_out_log_prob(mask_logits.detach(), comp_lp.detach())
                cf = log_px.detach()[:, None] - loo  # (B, K, H, W)
            spatial["counterfactual"] = per_slot("counterfactual", cf[:, :, None])
        if "dcomponents" in used:
            spatial["dcomponents"] = per_slot("dcomponents", d_mu)
        if "dmask" in used:
            spatial["dmask"] = per_slot("dmask", d_logits[:, :, None])
        if "image" in used:
            spatial["image"] = images[:, None].expand(b, k, -1, -1, -1)
        if "log_prob" in used:
            # Normalised per image, then broadcast over slots (expand, never repeat+view).
            lp = norms["log_prob"](log_px.detach()[:, None])  # (B, 1, H, W)
            spatial["log_prob"] = lp[:, None].expand(b, k, 1, h, w)
        if "mask" in used:
            spatial["mask"] = mask_logits[:, :, None]
        if "posterior" in used:
            spatial["posterior"] = dist.component_posterior(comp_lp)[:, :, None]
        if "pred_mask" in used:
            spatial["pred_mask"] = log_masks.exp()[:, :, None]
        image_in = torch.cat([spatial[n] for n in used], dim=2)  # (B, K, C_in, H, W)
        image_in = image_in.reshape(b * k, -1, h, w)

        flat_lam = lam.reshape(b * k, -1)  # (B*K, 2D)
        vector: dict[str, torch.Tensor] = {}
        if "dzp" in self.vector_inputs:
            vector["dzp"] = norms["dzp"](d_lam.reshape(b * k, -1))
        if "flat_capacity" in self.vector_inputs:
            vector["flat_capacity"] = flat_lam.new_full((b * k, 1), 0.5)
        if "zp" in self.vector_inputs:
            vector["zp"] = flat_lam
        vector_in = torch.cat([vector[n] for n in self.vector_inputs], dim=1)  # (B*K, V)

        with self._phase("refinement"):
            new_lam, state = self.refinement(image_in, vector_in, flat_lam, state)
        return new_lam.view(b, k, -1), state
