"""The one engine interface behind the front door (serve/app.py).

An engine runs the models: it starts, loads and unloads a model, answers a request with
that request's own result (batching is its business, and so is keeping one bad request
from sinking the others), says whether it is healthy, and drains. Two engines implement it:

- ``python`` (default, serve/pool.py): our own worker processes under the front door's
  event loop, a dynamic batcher per model, no JVM;
- ``torchserve`` (serve/torchserve/): TorchServe 0.12 behind the front door, archived
  upstream since 2025-08, kept because users ask for it (real-time hosting only).

``BYOC_SERVING_ENGINE`` chooses (serve/config.py). The front door owns the HTTP contract
(routes, limits, the JSON error shape), so it is the same whichever engine runs.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field

from serve.errors import HTTPError


@dataclass
class InferRequest:
    """One request as the front door read it: the body in memory, or spooled to a file
    when it is large (the engine reads it from there; the front door deletes it)."""

    content_type: str = ""
    accept: str = ""
    custom_attributes: str = ""
    body: bytes = b""
    body_path: str | None = None
    size: int = 0

    def read(self) -> bytes:
        if self.body_path is None:
            return self.body
        with open(self.body_path, "rb") as f:
            return f.read()


@dataclass
class InferResponse:
    """A request's own answer: 2xx with the model's output, or an error in our JSON shape.
    A large body may come as a file (``body_path``) that the front door sends and deletes."""

    status: int
    content_type: str
    body: bytes = b""
    body_path: str | None = None
    headers: dict = field(default_factory=dict)

    @classmethod
    def error(cls, exc: HTTPError) -> "InferResponse":
        return cls(exc.status, "application/json", exc.body())

    def discard(self) -> None:
        if self.body_path:
            try:
                os.unlink(self.body_path)
            except OSError:
                pass


@dataclass(frozen=True)
class ModelInfo:
    name: str
    url: str
    workers: int
    ready: bool


class Engine(abc.ABC):
    """What serve/app.py and serve/__main__.py need from an engine."""

    name: str = ""
    multi_model: bool = False   # whether load/unload serve SageMaker's multi-model contract
    stop_margin_s: float = 3.0  # the grace period's last seconds, kept for stop() after the drain

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin: the engine's processes start; models may still be loading after this."""

    @abc.abstractmethod
    async def load(self, name: str, model_dir: str, url: str) -> ModelInfo:
        """Load a model under ``name`` and return once it can answer; raises ModelExists (409),
        InsufficientMemory (507), or the reason it cannot load (an HTTPError)."""

    @abc.abstractmethod
    async def unload(self, name: str) -> None:
        """Stop serving ``name`` and free what it held; NotFound when it is not loaded."""

    @abc.abstractmethod
    def models(self) -> list[ModelInfo]:
        """The models loaded (or loading), in the order they were loaded."""

    @abc.abstractmethod
    async def infer(self, name: str, request: InferRequest) -> InferResponse:
        """The request's own answer (never raises for what the request or the model did)."""

    @abc.abstractmethod
    def health(self) -> tuple[bool, str]:
        """(healthy, why not): healthy once every model has a worker that can answer."""

    @abc.abstractmethod
    async def failed(self) -> str:
        """Returns (with the reason) only when the engine cannot go on: the model of a
        real-time endpoint cannot load, or the engine's own process died."""

    @abc.abstractmethod
    async def drain(self, deadline: float) -> None:
        """Wait (until ``deadline``, loop time) for every request received to be answered."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every process the engine started."""

    def execution_parameters(self) -> dict:
        """What Batch Transform reads from GET /execution-parameters."""
        return {}
