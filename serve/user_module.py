"""Find the functions that serve a model: the user's code/inference.py first,
the default handler (chosen from model.json) for whatever it leaves out.

SageMaker contract: ``model_fn(model_dir[, context])``, ``input_fn(body,
content_type[, context])``, ``predict_fn(data, model[, context])``,
``output_fn(prediction, accept[, context])`` or ``transform_fn(model, body,
content_type, accept[, context])``.

A default handler may define ``deferred_input_fn``: it replaces its ``input_fn`` when its own
``predict_fn`` serves too (handlers/gpu_batch.py: JPEGs decoded as a batch on the GPU).

Batching: a ``predict_fn`` whose attribute ``batched`` is true is called once
with a list of decoded inputs and must return a list of the same length (the
default handlers do this; users opt in with :func:`batched`). Any other
predict_fn is called once per request, as SageMaker's toolkit does.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional

from byoc import artifact

logger = logging.getLogger(__name__)

FUNCTIONS = ("model_fn", "input_fn", "predict_fn", "output_fn")


def batched(fn: Callable) -> Callable:
    """Mark a predict_fn as taking a list of inputs and returning a list."""
    fn.batched = True
    return fn


@dataclass(frozen=True)
class Functions:
    model_fn: Callable
    input_fn: Optional[Callable]
    predict_fn: Optional[Callable]
    output_fn: Optional[Callable]
    transform_fn: Optional[Callable]
    origin: dict  # function name -> module it came from (for the log)

    @property
    def batched(self) -> bool:
        return bool(getattr(self.predict_fn, "batched", False))


def load_user_module(model_dir: str, program: str) -> ModuleType | None:
    """Import <model_dir>/code/<program> (None if absent), with code/ on sys.path
    so it can import its sibling modules, as SageMaker does."""
    code_dir = artifact.code_dir(model_dir)
    path = os.path.join(code_dir, program)
    if not os.path.isfile(path):
        return None
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    name = os.path.splitext(program)[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # lets the user's code pickle/import itself
    spec.loader.exec_module(module)
    return module


def resolve(model_dir: str, program: str = "inference.py") -> Functions:
    user = load_user_module(model_dir, program)
    default_name = artifact.default_handler(artifact.read_spec(model_dir))
    chosen, origin = {}, {}
    for name in FUNCTIONS:
        fn = getattr(user, name, None) if user else None
        if fn is not None:
            chosen[name], origin[name] = fn, program
    transform_fn = getattr(user, "transform_fn", None) if user else None
    if transform_fn is not None:
        origin["transform_fn"] = program
        overlap = [n for n in FUNCTIONS[1:] if n in chosen]
        if overlap:
            logger.warning("%s defines transform_fn and %s: transform_fn is used", program, overlap)
    missing = [n for n in FUNCTIONS if n not in chosen and not (transform_fn and n != "model_fn")]
    if missing:
        try:
            default = importlib.import_module(default_name)
        except ModuleNotFoundError as exc:
            if exc.name != default_name:
                raise
            raise RuntimeError(
                f"model.json needs the default handler {default_name}, which this image "
                f"does not have yet; provide code/{program} with {', '.join(missing)}"
            ) from None
        for name in missing:
            chosen[name], origin[name] = getattr(default, name), default_name
    paired = None if transform_fn else _paired_input_fn(chosen["input_fn"], chosen["predict_fn"])
    if paired is not None:
        chosen["input_fn"] = paired
    return Functions(
        model_fn=chosen["model_fn"],
        input_fn=None if transform_fn else chosen["input_fn"],
        predict_fn=None if transform_fn else chosen["predict_fn"],
        output_fn=None if transform_fn else chosen["output_fn"],
        transform_fn=transform_fn,
        origin=origin,
    )


def _paired_input_fn(input_fn: Callable, predict_fn: Callable) -> Callable | None:
    """A default handler's ``deferred_input_fn`` when both its ``input_fn`` and its
    ``predict_fn`` serve (taken from it, or imported by code/inference.py as the trainer's
    exported shim does); else None."""
    module = sys.modules.get(getattr(predict_fn, "__module__", None) or "")
    paired = getattr(module, "deferred_input_fn", None)
    if paired is not None and module.__name__.startswith("handlers.") and \
            getattr(module, "predict_fn", None) is predict_fn and getattr(module, "input_fn", None) is input_fn:
        return paired
    return None


def call(fn: Callable, *args, context=None):
    """Call a contract function, adding ``context`` only if it takes one more
    positional parameter (the toolkit's optional trailing context)."""
    if context is not None and _n_positional(fn) > len(args):
        return fn(*args, context)
    return fn(*args)


def _n_positional(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
