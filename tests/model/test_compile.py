"""torch.compile (backend aot_eager: the graph capture and autograd of inductor, eager kernels)
gives the eager model's loss, gradients and eval outputs, with and without channels-last."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lib.model import build_model
from lib.model.compile import compile_model
from tests.model.conftest import tiny_cfg


def _pair(channels_last: bool, mode: str):
    cfg = tiny_cfg(
        **{
            "INPUT.IMAGE_SIZE": 8,
            "MODEL.CHANNELS_LAST": channels_last,
            "MODEL.REFINEMENT.CONV_CHANNELS": (4, 4),
            "MODEL.DECODER.CONV_CHANNELS": (4, 4),
        }
    )
    torch.manual_seed(0)
    eager = build_model(cfg).double()
    compiled = build_model(cfg).double()
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled, mode, backend="aot_eager")
    return eager, compiled


def _train(model, images):
    torch.manual_seed(1)  # the same training noise for both models
    model.zero_grad()
    out = model(images)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out["loss"].detach(), grads


def _plain_names(grads):
    # modules mode wraps the decoder and refinement: their names gain "_orig_mod."
    return {n.replace("_orig_mod.", ""): g for n, g in grads.items()}


def _check(channels_last: bool, mode: str):
    eager, compiled = _pair(channels_last, mode)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    loss_e, grads_e = _train(eager, images)
    loss_c, grads_c = _train(compiled, images)
    torch.testing.assert_close(loss_c, loss_e)
    grads_c = _plain_names(grads_c)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], msg=name)

    eager.eval()
    compiled.eval()
    with torch.no_grad():
        out_e = eager(images)
        out_c = compiled(images)
    for key in ("masks", "recon", "nll", "kl", "posterior_loc"):
        torch.testing.assert_close(out_c[key], out_e[key], msg=key)


@pytest.mark.slow
def test_compiled_step_equals_eager_channels_last():
    # The quickstart's layout; it crashed the compiled decoder's backward before.
    _check(True, "step")


@pytest.mark.slow
def test_compiled_step_equals_eager():
    _check(False, "step")


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_modules_equal_eager(channels_last):
    _check(channels_last, "modules")


def test_compile_mode_is_checked():
    eager, _ = _pair(False, "none")
    with pytest.raises(ValueError, match="compile mode"):
        compile_model(eager, "everything")


class _ConvBackwardMasks(TorchDispatchMode):
    """Record which gradients each convolution backward computes, and whether it ran inside
    the forward (the gradient inputs' ``autograd.grad``) or after it (the loss's backward)."""

    def __init__(self):
        super().__init__()
        self.where = "forward"
        self.masks: list[tuple[str, tuple[bool, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            # output_mask: (input, weight, bias) gradients wanted
            self.masks.append((self.where, tuple(args[-1])))
        return func(*args, **(kwargs or {}))


def test_gradient_inputs_compute_no_weight_gradients():
    cfg = tiny_cfg(**{"INPUT.IMAGE_SIZE": 8, "MODEL.DECODER.FACTORIZED_FIRST_LAYER": False})
    model = build_model(cfg)
    recorder = _ConvBackwardMasks()
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with recorder:
        loss = model(images)["loss"]
        recorder.where = "backward"
        loss.backward()
    inner = [mask for where, mask in recorder.masks if where == "forward"]
    outer = [mask for where, mask in recorder.masks if where == "backward"]
    # T = 2 inner gradients through 3 decoder convs: input gradients only.
    assert inner == [(True, False, False)] * (2 * 3)
    # The final backward does compute the weight gradients (the recorder can see them).
    assert any(m[1] for m in outer)
