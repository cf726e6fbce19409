"""Per-request parameters that the default handlers read while a request's output_fn runs.

A client asks for them in its Accept header (``Accept: application/json; topk=3``) or in
SageMaker's CustomAttributes header (``X-Amzn-SageMaker-Custom-Attributes: topk=3``), which
``invoke_endpoint(CustomAttributes=...)`` sends. Accept parameters win. output_fn keeps the
toolkit's signature ``output_fn(prediction, accept)`` with the plain media type, so user
code that compares ``accept == "application/json"`` works; the parameters travel beside it
in a context variable that serve.handler sets for each request of a batch.
"""
from __future__ import annotations

import contextlib
import contextvars

_PARAMS: contextvars.ContextVar[dict] = contextvars.ContextVar("byoc_request_params", default={})


def parse_custom_attributes(value: str) -> dict[str, str]:
    """'topk=3; trace=abc' -> {'topk': '3', 'trace': 'abc'} (pairs split on ; or ,)."""
    out = {}
    for item in value.replace(",", ";").split(";"):
        if "=" in item:
            key, val = item.split("=", 1)
            out[key.strip().lower()] = val.strip()
    return out


def current() -> dict[str, str]:
    """The parameters of the request whose output_fn is running ({} outside one)."""
    return _PARAMS.get()


@contextlib.contextmanager
def scoped(params: dict[str, str]):
    token = _PARAMS.set(dict(params))
    try:
        yield
    finally:
        _PARAMS.reset(token)
