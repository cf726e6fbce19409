"""Decode request bodies and encode responses, per content type.

Content-type names and the response encoders come from sagemaker-inference
(its ``content_types`` and ``encoder`` modules). The decoders are written here
because the toolkit's are unsafe or too loose for a public endpoint:
its npy decoder calls ``np.load(allow_pickle=True)`` (code execution from a
request body), its JSON decoder accepts NaN/Infinity and ragged lists, and it
has no image decoder at all (so no guard against decompression bombs).

Every failure raises a :mod:`serve.errors` type: 400 undecodable or wrongly
shaped, 413 too large, 415 unsupported Content-Type, 406 unsupported Accept.
"""
from __future__ import annotations

import io
import json
import math
import warnings
from typing import Iterable, Sequence

import numpy as np
from sagemaker_inference import content_types, encoder

from serve import config
from serve.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType

JSON = content_types.JSON
CSV = content_types.CSV
NPY = content_types.NPY
JSONLINES = "application/jsonlines"   # Batch Transform's line-per-record JSON
JPEG = "image/jpeg"
PNG = "image/png"
X_IMAGE = "application/x-image"

IMAGE_TYPES = (JPEG, PNG, X_IMAGE)
ARRAY_TYPES = (NPY, JSON, CSV, JSONLINES)
ENCODE_TYPES = (JSON, CSV, NPY, JSONLINES)
WILDCARD_TYPES = (JSON, CSV, NPY)   # what application/* and text/* stand for

# Pillow decoders allowed per content type: a JPEG claimed as PNG is refused,
# and exotic decoders (a larger attack surface) are never reached.
_IMAGE_FORMATS = {
    JPEG: ("JPEG",),
    PNG: ("PNG",),
    X_IMAGE: ("JPEG", "PNG", "WEBP", "BMP", "GIF"),
}

# ---------------------------------------------------------------- media types
def parse_media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """'Application/JSON; charset=utf-8' -> ('application/json', {'charset': 'utf-8'})."""
    if not value:
        return "", {}
    main, *rest = value.split(";")
    params = {}
    for item in rest:
        if "=" in item:
            k, v = item.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    return main.strip().lower(), params


def accept_choices(accept: str | None, default: str = JSON,
                   known: Sequence[str] = WILDCARD_TYPES) -> list[tuple[str, dict[str, str]]]:
    """The media types to try for a response, most preferred first, each with
    its parameters other than q (``application/json; topk=3`` keeps topk).

    Order: q-value (RFC 9110 12.5.1), then the client's order; q=0 excludes a
    type. No Accept, or ``*/*``, means ``default``; ``type/*`` means the types of
    ``known`` under it (``default`` first). A list with nothing to try is empty:
    the caller answers 406."""
    if not accept or not accept.strip():
        return [(default, {})]
    ranked, excluded = [], set()
    for pos, item in enumerate(accept.split(",")):
        mtype, params = parse_media_type(item)
        if not mtype:
            continue
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0:
            excluded.add(mtype)
        else:
            ranked.append((-q, pos, mtype, params))
    out, seen = [], set()
    for _, _, mtype, params in sorted(ranked, key=lambda item: item[:2]):
        if mtype == "*/*":
            candidates = [default]
        elif mtype.endswith("/*"):
            candidates = [t for t in (default, *known) if t.startswith(mtype[:-1])]
        else:
            candidates = [mtype]
        for candidate in candidates:
            if candidate not in seen and candidate not in excluded:
                seen.add(candidate)
                out.append((candidate, params))
    return out


def require_type(content_type: str | None, supported: Iterable[str]) -> str:
    """The request's media type if supported, else 415."""
    mtype, _ = parse_media_type(content_type)
    supported = tuple(supported)
    if mtype not in supported:
        shown = mtype or "(none)"
        raise UnsupportedMediaType(
            f"Content-Type {shown} not supported; use one of: {', '.join(supported)}"
        )
    return mtype


def as_bytes(body) -> bytes:
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    raise BadRequest("request body is not bytes")


def _non_empty(body) -> bytes:
    data = as_bytes(body)
    if not data:
        raise BadRequest("empty request body")
    return data


# ---------------------------------------------------------------- images
def decode_image(body, content_type: str, max_pixels: int | None = None, draft=None):
    """Bytes -> RGB PIL image, checking the pixel count before any decoding.

    ``draft=(w, h)``: let the JPEG decoder scale down by 2/4/8 while decoding
    (much faster) as long as the result stays at least that size."""
    img, mtype = open_image(body, content_type, max_pixels)
    try:
        if draft and img.format == "JPEG":
            img.draft("RGB", draft)
        img.load()
        return img.convert("RGB")
    except Exception:
        raise BadRequest(f"image data is truncated or corrupt ({mtype})") from None


def open_image(body, content_type: str, max_pixels: int | None = None):
    """``(PIL image, media type)`` with only the header read: the type, the format and the
    pixel limit are checked, nothing is decoded (the GPU path hands the bytes to nvjpeg)."""
    from PIL import Image

    mtype = require_type(content_type, IMAGE_TYPES)
    data = _non_empty(body)
    limit = max_pixels or config.worker_settings().max_image_pixels
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns/raises on its global limit; ours
            # below is the one that applies, so silence the duplicate.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS[mtype])
    except Image.DecompressionBombError:
        raise PayloadTooLarge("image is too large to decode") from None
    except Exception:  # PIL raises many types for garbage input
        raise BadRequest(f"body is not a valid {mtype} image") from None
    width, height = img.size
    # Image.open read only the header: refuse before allocating the pixels.
    if width * height > limit:
        raise PayloadTooLarge(
            f"image is {width}x{height} pixels; the limit is {limit} pixels"
        )
    return img, mtype


# ---------------------------------------------------------------- arrays
_NUMERIC_KINDS = "biuf"  # bool, int, unsigned, float


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def decode_array(body, content_type: str, allow_nonfinite: bool = False) -> np.ndarray:
    """npy / json / csv bytes -> numeric ndarray; 400 for anything else."""
    mtype = require_type(content_type, ARRAY_TYPES)
    data = _non_empty(body)
    if mtype == NPY:
        arr = _decode_npy(data)
    elif mtype == JSON:
        arr = _decode_json(data)
    elif mtype == JSONLINES:
        arr = _decode_jsonlines(data)
    else:
        arr = _decode_csv(data)
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise BadRequest(f"array must be numeric, got dtype {arr.dtype}")
    if arr.size == 0:
        raise BadRequest("array is empty")
    if not allow_nonfinite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BadRequest("array contains NaN or infinity")
    return arr


def _decode_npy(data: bytes) -> np.ndarray:
    try:
        # allow_pickle=False: object arrays would unpickle attacker data.
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise BadRequest(f"body is not a valid .npy array: {_short(exc)}") from None
    if not isinstance(arr, np.ndarray):
        raise BadRequest("body is an .npz archive, not a single .npy array")
    return arr


def _decode_json(data: bytes, record: bool = False) -> np.ndarray:
    """``record``: a line of JSON lines, which may also be one number."""
    try:
        obj = json.loads(data.decode("utf-8-sig"), parse_constant=_reject_constant)   # a BOM, as json.loads(bytes) takes
    except Exception as exc:
        raise BadRequest(f"body is not valid JSON: {_short(exc)}") from None
    if isinstance(obj, dict):
        # The shapes SageMaker clients commonly send.
        for key in ("instances", "inputs", "data"):
            if key in obj:
                obj = obj[key]
                break
        else:
            raise BadRequest('JSON object must hold "instances", "inputs" or "data"')
    if record and isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return np.array(obj)
    if not isinstance(obj, list):
        raise BadRequest("JSON body must be a (nested) list of numbers")
    try:
        arr = np.array(obj)
    except ValueError:
        raise BadRequest("JSON array is ragged: all rows must have the same length") from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise BadRequest("JSON array must hold only numbers")
    return arr


def _decode_jsonlines(data: bytes) -> np.ndarray:
    """One record per line, each a JSON array (or a number) of the same shape: stacked, the
    records along the first axis, in order (as text/csv's rows)."""
    records = []
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(_decode_json(line, record=True))
        except BadRequest as exc:
            raise BadRequest(f"application/jsonlines line {n}: {exc.message}") from None
    if not records:
        raise BadRequest("application/jsonlines body has no records")
    if len({r.shape for r in records}) != 1:
        raise BadRequest("application/jsonlines records must all have the same shape")
    return np.stack(records)


def _decode_csv(data: bytes) -> np.ndarray:
    try:
        text = data.decode("utf-8-sig")
        rows = [line for line in text.splitlines() if line.strip()]
        arr = np.array([[float(x) for x in line.split(",")] for line in rows])
    except Exception:
        raise BadRequest("text/csv body must be rows of comma-separated numbers") from None
    if arr.ndim != 2:
        raise BadRequest("CSV rows must all have the same number of columns")
    return arr


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ---------------------------------------------------------------- encoding
def _numpy(tensor) -> np.ndarray:
    """A torch.Tensor as an ndarray, without importing torch here: bfloat16 (no numpy
    type) as float32, which holds every bfloat16 value exactly."""
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":
        tensor = tensor.float()
    return tensor.numpy()


def to_plain(obj):
    """Tensors/ndarrays (nested in dicts/lists) -> JSON-able Python values."""
    if hasattr(obj, "detach"):  # torch.Tensor
        obj = _numpy(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and not np.isfinite(obj).all():
            return to_plain(obj.tolist())  # slow path only when NaN/inf present
        return obj.tolist()
    if isinstance(obj, np.generic):
        return to_plain(obj.item())   # a NaN scalar too becomes null
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN; null is what clients can parse
    return obj


def encode_lines(records) -> str:
    """One JSON line per record: the first axis of an array, or the items of a list."""
    if hasattr(records, "detach"):
        records = _numpy(records)
    if isinstance(records, np.ndarray) and records.ndim == 0:
        records = records.reshape(1)
    if not isinstance(records, (list, tuple, np.ndarray)):
        records = [records]
    # no newline after the last line: Batch Transform's AssembleWith Line adds one per answer
    return "\n".join(json.dumps(to_plain(r), allow_nan=False) for r in records)


def encode(obj, accept: str) -> bytes:
    """Encode a prediction as JSON, CSV or NPY (406 for anything else)."""
    mtype, _ = parse_media_type(accept)
    if mtype not in ENCODE_TYPES:
        raise NotAcceptable(f"cannot encode as {mtype or '(none)'}")
    if mtype == JSON:
        out = json.dumps(to_plain(obj), allow_nan=False)
    elif mtype == JSONLINES:
        out = encode_lines(obj)
    else:
        if hasattr(obj, "detach"):
            obj = _numpy(obj)
        arr = np.asarray(obj)
        if arr.dtype.kind not in _NUMERIC_KINDS:
            raise NotAcceptable(f"{mtype} needs a numeric array; ask for application/json")
        if mtype == CSV and arr.ndim > 2:
            raise NotAcceptable("text/csv holds at most 2 dimensions; ask for application/x-npy")
        out = encoder.encode(arr, mtype)
    return out.encode("utf-8") if isinstance(out, str) else out
