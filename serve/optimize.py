"""A cheaper forward for the user's model, same results: torch.jit's freeze +
optimize_for_inference (conv-bn folding, oneDNN convolutions), used only where
it gives the user's own outputs back.

The model object model_fn returned stays the one predict_fn gets (its attributes,
eval(), to() all work); only its ``forward`` is wrapped. The first call with a single
tensor, outside autograd, runs the user's forward as is and answers with its
output; that input is also traced, frozen and checked against it. After that, a
call with the same input shape and dtype, outside autograd, runs the frozen
graph; anything else (other shapes, other arguments, autograd or autocast on, a
model in train mode, a tensor not on the CPU) runs the user's forward. The model
is served untouched when tracing warns (data-dependent Python control flow),
fails, or the frozen graph's output differs from the user's beyond
ATOL + RTOL * |out|. The frozen graph holds its own copy of the weights: a model
whose weights predict_fn changes later should run with BYOC_OPTIMIZE_MODEL=false.

Measured (bench/README.md, "Issue 11: a frozen forward"): 1 thread, batch 1,
ResNet-18 1.27x and EfficientNet-Lite0 1.41x per image; channels_last, fx
conv-bn fusion and inference_mode (already the handler's) gave less.
"""
from __future__ import annotations

import logging
import warnings

logger = logging.getLogger(__name__)

ATOL = 1e-4
RTOL = 1e-3


def optimize(model) -> bool:
    """Wrap ``model.forward`` to freeze on first use; False (and the model
    untouched) when it is not an eval-mode torch.nn.Module."""
    import torch

    if not isinstance(model, torch.nn.Module):
        logger.info("model not optimised: model_fn returned a %s, not a torch.nn.Module",
                    type(model).__name__)
        return False
    if isinstance(model, torch.jit.ScriptModule):
        logger.info("model not optimised: already a TorchScript module")
        return False
    if "forward" in vars(model):
        logger.info("model not optimised: its forward is set on the instance")
        return False
    model.forward = _FrozenForward(model)
    logger.info("model optimisation armed: the first tensor input freezes it (torch.jit.freeze)")
    return True


class _FrozenForward:
    """The model's forward: the frozen graph for inputs like the one it was
    traced and checked on, the user's forward for everything else."""

    def __init__(self, model):
        self.model = model
        self.user_forward = type(model).forward.__get__(model)
        self.frozen = None
        self.signature = None  # (shape, dtype, device) the frozen graph was checked on
        self.tried = False

    def __call__(self, *args, **kwargs):
        import torch

        eligible = (len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
                    and args[0].device.type == "cpu"  # measured on CPU only
                    and not torch.is_grad_enabled() and not self.model.training
                    and not torch.is_autocast_enabled("cpu"))
        if not eligible:
            return self.user_forward(*args, **kwargs)
        x = args[0]
        if self.frozen is not None and _signature(x) == self.signature:
            return self.frozen(x)
        out = self.user_forward(x)
        if not self.tried:
            self.tried = True
            self._freeze(x, out)
        return out

    def _trace(self, probe):
        """torch.jit.trace of the model's own forward: this wrapper steps aside
        while it runs (a worker runs one request at a time)."""
        import torch

        del self.model.forward
        try:
            return torch.jit.trace(self.model, probe, check_trace=False)
        finally:
            self.model.forward = self

    def _freeze(self, x, expected) -> None:
        import torch

        if not isinstance(expected, torch.Tensor) or not expected.is_floating_point():
            logger.info("model not optimised: forward returns a %s, not a float tensor",
                        type(expected).__name__)
            return
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("error", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                probe = x.clone()
                traced = self._trace(probe)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                got = frozen(probe)
        except Exception as exc:  # any failure: the user's forward stays
            logger.info("model not optimised: freezing failed (%s: %s)", type(exc).__name__, exc)
            return
        if not (isinstance(got, torch.Tensor) and got.shape == expected.shape
                and torch.allclose(got, expected, atol=ATOL, rtol=RTOL)):
            logger.warning("model not optimised: the frozen graph's output differs from the model's")
            return
        self.frozen, self.signature = frozen, _signature(x)
        logger.info("model optimised: frozen (torch.jit.freeze + optimize_for_inference) for "
                    "input %s %s; max abs diff %.2g", list(x.shape), x.dtype,
                    float((got - expected).abs().max()))


def _signature(x) -> tuple:
    return tuple(x.shape), x.dtype, x.device
