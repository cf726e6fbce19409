"""Typed HTTP errors: what the client may see when a request cannot be served.

Every error carries a status code and a short message meant for the client.
Nothing here holds a traceback or a server path: the handler logs those
server-side and sends only ``body()``.
"""
from __future__ import annotations

import json
import re


class HTTPError(Exception):
    """An error with an HTTP status; the message is shown to the client."""

    status = 500
    phrase = "Internal Server Error"

    def __init__(self, message: str | None = None):
        super().__init__(message or self.phrase)
        self.message = message or self.phrase

    def body(self) -> bytes:
        return json.dumps(
            {"error": self.phrase, "code": self.status, "message": self.message}
        ).encode("utf-8")


class BadRequest(HTTPError):
    status, phrase = 400, "Bad Request"


class NotFound(HTTPError):
    status, phrase = 404, "Not Found"


class MethodNotAllowed(HTTPError):
    status, phrase = 405, "Method Not Allowed"


class NotAcceptable(HTTPError):
    status, phrase = 406, "Not Acceptable"


class ModelExists(HTTPError):
    """A multi-model load of a name already loaded."""

    status, phrase = 409, "Conflict"


class PayloadTooLarge(HTTPError):
    status, phrase = 413, "Payload Too Large"


class UnsupportedMediaType(HTTPError):
    status, phrase = 415, "Unsupported Media Type"


class InternalError(HTTPError):
    status, phrase = 500, "Internal Server Error"


class ServiceUnavailable(HTTPError):
    status, phrase = 503, "Service Unavailable"


class GatewayTimeout(HTTPError):
    status, phrase = 504, "Gateway Timeout"


class InsufficientStorage(HTTPError):
    """A large body that cannot be spooled to disk (disk full, spool folder gone)."""

    status, phrase = 507, "Insufficient Storage"


class InsufficientMemory(HTTPError):
    """A multi-model load that would not fit in the memory left (SageMaker then unloads others)."""

    status, phrase = 507, "Insufficient Storage"


def client_message(exc: BaseException, limit: int = 300) -> str:
    """A one-line, bounded message from an exception raised by request decoding.

    Used for errors that are the request's fault (e.g. in a user's input_fn):
    the message helps the caller; server paths are cut so none leak.
    """
    text = str(exc)
    if "Traceback of TorchScript" in text:
        # a TorchScript model's error starts with its own traceback (code and paths);
        # the reason is the last line
        text = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    text = " ".join(text.split()) or type(exc).__name__
    text = _strip_paths(text)
    return text[:limit]


# An absolute path or file URL, also inside other text (path=/opt/..., {'/opt/...': 1}): a file
# that failed to open or a module's location says nothing useful to a client and describes the server.
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z][A-Za-z0-9+.-]*://)?/[^\s'\"(),\]}]+")


def _strip_paths(text: str) -> str:
    return _PATH.sub("<path>", text)
