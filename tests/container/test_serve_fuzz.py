"""Fuzz the serving image: a generated set of bad or odd requests, each answered
with the right 4xx and a JSON reason (never a traceback or a server path), sent
partly at once so that they share TorchServe batches (batch size 4) with good
requests, which must still get their answer. After the set the server is healthy
and predicts a photo exactly as before.

The cases are built from the sample photos by rule (cut points, header patches,
dtypes, shapes), not listed by hand; the figures by status go to bench/README.md.
"""
import asyncio
import io
import json
import struct
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from support.containers import classifier_model_dir, logs_of, serving, wait_healthy

pytestmark = pytest.mark.both_engines  # the same contract whichever engine serves

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "samples" / "photos").glob("*.jpg"))
MAX_PAYLOAD_MB = 1
LEAKS = ("Traceback", 'File "', "/opt/", "/usr/", "site-packages")


class Case:
    def __init__(self, kind, body, content_type, expect, accept=None, method="POST", path="/invocations"):
        self.kind, self.body, self.content_type, self.expect = kind, body, content_type, expect
        self.accept, self.method, self.path = accept, method, path

    def __repr__(self):
        return f"{self.kind}[{self.method} {self.path} {self.content_type!r} accept={self.accept!r} {len(self.body)} B]"


# ---------------------------------------------------------------- the corpus
def _png(jpeg: bytes) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(out, "PNG")
    return out.getvalue()


def _cuts(n, count, tail):
    """count cut points in [1, n - tail): never so close to the end that only
    the end marker is missing (a decoder may then rightly accept the image)."""
    return sorted(set(int(c) for c in np.linspace(1, n - tail, count)))


def _sof_offset(jpeg: bytes) -> int:
    """Offset of the height field in the JPEG's first SOF0/SOF2 segment."""
    i = 2
    while i < len(jpeg) - 4:
        marker, length = jpeg[i + 1], struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return i + 5
        i += 2 + length
    raise ValueError("no SOF segment")


def _patch_jpeg_size(jpeg: bytes, height: int, width: int) -> bytes:
    at = _sof_offset(jpeg)
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4:]


def _patch_png_ihdr(png: bytes, **fields) -> bytes:
    """Rewrite IHDR fields (width, height, depth, color) with a valid CRC."""
    width, height, depth, color, comp, filt, inter = struct.unpack(">IIBBBBB", png[16:29])
    values = dict(width=width, height=height, depth=depth, color=color)
    values.update(fields)
    ihdr = struct.pack(">IIBBBBB", values["width"], values["height"], values["depth"], values["color"],
                       comp, filt, inter)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return png[:16] + ihdr + crc + png[33:]


def _npy(arr, allow_pickle=False) -> bytes:
    out = io.BytesIO()
    np.save(out, arr, allow_pickle=allow_pickle)
    return out.getvalue()


def _npy_header(descr: str, shape, fortran=False) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")


def image_cases(rng):
    cases = []
    for photo in PHOTOS:
        jpeg = photo.read_bytes()
        png = _png(jpeg)
        for cut in _cuts(len(jpeg), 16, 64):
            cases.append(Case("truncated-jpeg", jpeg[:cut], "image/jpeg", 400))
        for cut in _cuts(len(png), 12, 64):
            cases.append(Case("truncated-png", png[:cut], "image/png", 400))
        for cut in _cuts(len(jpeg), 3, 64):
            cases.append(Case("truncated-x-image", jpeg[:cut], "application/x-image", 400))
        sof = _sof_offset(jpeg)
        corrupt = [
            b"\x00\x00" + jpeg[2:],                                    # no SOI marker
            _patch_jpeg_size(jpeg, 0, 0),                              # zero-sized frame
            jpeg[:sof - 5] + b"\xff\xfe" + jpeg[sof - 3:],             # SOF turned into a comment: no frame
            b"\xff\xd8\xff" + rng.bytes(600),                          # JPEG magic, then noise
            b"\xff\xd8\xff" + rng.bytes(64),
            jpeg[:2] + rng.bytes(len(jpeg) - 2),                       # SOI, then noise
        ]
        cases += [Case("corrupt-jpeg", body, "image/jpeg", 400) for body in corrupt]
        bad_crc = bytearray(png)
        bad_crc[29] ^= 0xFF
        corrupt_png = [
            bytes(bad_crc),                                            # IHDR checksum wrong
            b"\x89PNX" + png[4:],                                      # broken signature
            _patch_png_ihdr(png, color=9),                             # no such colour type
            _patch_png_ihdr(png, depth=3),                             # no such bit depth
            _patch_png_ihdr(png, width=0),
            png[:8] + rng.bytes(400),                                  # signature, then noise
        ]
        cases += [Case("corrupt-png", body, "image/png", 400) for body in corrupt_png]
        # a PNG sent as JPEG and a JPEG sent as PNG: the declared type is the one decoded
        cases += [Case("mislabelled-image", png, "image/jpeg", 400), Case("mislabelled-image", jpeg, "image/png", 400)]
    # decompression bombs: a small file whose header claims a huge picture
    jpeg, png = PHOTOS[0].read_bytes(), _png(PHOTOS[0].read_bytes())
    for height, width in ((12000, 12000), (65535, 65535), (40000, 1001), (7000, 7000)):
        for ctype in ("image/jpeg", "application/x-image"):
            cases.append(Case("bomb-jpeg", _patch_jpeg_size(jpeg, height, width), ctype, 413))
        for ctype in ("image/png", "application/x-image"):
            cases.append(Case("bomb-png", _patch_png_ihdr(png, width=width, height=height), ctype, 413))
    return cases


def _nested(shape, leaf):
    if not shape:
        return leaf
    return [_nested(shape[1:], leaf) for _ in range(shape[0])]


def json_cases():
    ragged = _nested((3, 4, 4), 0.5)
    ragged[1][2] = ragged[1][2][:3]
    strings = _nested((3, 4, 4), 0.5)
    strings[2][0][1] = "0.5"
    nested_wrong = _nested((3, 4, 4), 0.5)
    nested_wrong[0][0][0] = [0.5]
    dicts = _nested((3, 4), {"r": 1})
    bodies = [
        json.dumps(ragged), json.dumps(strings), json.dumps(nested_wrong), json.dumps(dicts),
        "[[1, 2], [3]]", '["a", "b"]', '[[1, 2], [3, "x"]]', "[null]", "[[null, 1]]", '[{"a": 1}]',
        "42", "3.5", "true", "null", '"pixels"', "[]", "[[]]", "[[[]]]", "{}", '{"instances": []}',
        '{"instances": "x"}', '{"data": {"x": 1}}', '{"pixels": [1, 2]}', '{"inputs": 7}',
        "[1, 2, 3]", json.dumps(_nested((4, 4), 1)), json.dumps(_nested((5, 4, 4), 1)),
        json.dumps(_nested((1, 1, 3, 4, 4), 1)), json.dumps(_nested((65, 3, 2, 2), 1)),
        "[1, 2", "not json", "[1,,2]", "[1 2]", "[0x10]", "[1.2.3]", "{'a': 1}",
        "[" * 50000 + "]" * 50000,                                     # nesting deeper than any parser stack
    ]
    cases = [Case("json-shape", b.encode(), "application/json", 400) for b in bodies]
    cases.append(Case("json-bytes", b"\xff\xfe[\x001\x00]", "application/json", 400))   # not UTF-8
    for token in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        for where in (0, -1):
            flat = ["0.5"] * 48
            flat[where] = token
            # 48 numbers as a 3 x 4 x 4 nested list, one of them not finite
            body = "[" + ",".join("[" + ",".join("[" + ",".join(flat[c * 16 + r * 4:c * 16 + r * 4 + 4]) + "]"
                                                  for r in range(4)) + "]" for c in range(3)) + "]"
            cases.append(Case("json-nonfinite", body.encode(), "application/json", 400))
    return cases


def npy_cases(rng):
    shape = (3, 8, 8)
    cases = []
    for dtype in (np.float16, np.float32, np.float64):
        for bad in (np.nan, np.inf, -np.inf):
            arr = rng.random(shape).astype(dtype)
            arr[1, 2, 3] = bad
            cases.append(Case("npy-nonfinite", _npy(arr), "application/x-npy", 400))
    wrong_dtypes = [
        (rng.random(shape) + 1j).astype(np.complex64),
        (rng.random(shape) + 1j).astype(np.complex128),
        np.full(shape, "px", dtype="<U2"),
        np.full(shape, b"px", dtype="S2"),
        np.full(shape, np.datetime64("2026-01-01")),
        np.full(shape, np.timedelta64(5, "s")),
        np.zeros(shape, dtype=[("r", "f4"), ("g", "f4")]),
        np.zeros(shape, dtype="V4"),
    ]
    cases += [Case("npy-dtype", _npy(a), "application/x-npy", 400) for a in wrong_dtypes]
    objects = np.empty(shape, dtype=object)
    objects[...] = 1.0
    cases.append(Case("npy-dtype", _npy(objects, allow_pickle=True), "application/x-npy", 400))   # pickled
    wrong_shapes = [(), (8,), (8, 8), (5, 8, 8), (1, 1, 3, 8, 8), (2, 4, 8, 8), (0, 3, 8, 8), (3, 0, 8),
                    (65, 3, 2, 2), (1, 3, 8, 0)]
    cases += [Case("npy-shape", _npy(rng.random(s).astype(np.float32)), "application/x-npy", 400)
              for s in wrong_shapes]
    good = _npy(rng.random(shape).astype(np.float32))
    malformed = [
        b"NUMPY" + good[6:],                                           # bad magic
        good[:8],                                                      # magic only
        good[:40],                                                     # header cut
        b"\x93NUMPY\x09\x00" + good[8:],                               # unknown format version
        _npy_header("<f4", shape).replace(b"'descr'", b"'desc'") + good[128:],
        _npy_header("<f4", shape)[:-2] + b"(\n" + good[128:],          # header not a Python literal
        _npy_header("<f4", (1 << 26, 3)) + good[128:],                 # claims far more data than sent
        _npy_header("<f4", (-3, 8, 8)) + good[128:],
        _npy_header("|O", shape) + good[128:],                         # object header, no pickle allowed
    ]
    malformed += [good[:cut] for cut in _cuts(len(good), 6, 8)[1:]]   # data cut short
    npz = io.BytesIO()
    np.savez(npz, a=rng.random(shape))
    malformed.append(npz.getvalue())
    cases += [Case("npy-malformed", b, "application/x-npy", 400) for b in malformed]
    return cases


def header_cases():
    jpeg = PHOTOS[0].read_bytes()
    npy = _npy(np.zeros((3, 8, 8), np.float32))
    cases = []
    for ctype in ("", "image/jpeg", "image/png", "application/x-image", "application/x-npy",
                  "application/json", "text/plain"):
        cases.append(Case("empty-body", b"", ctype or None, 400))
    unknown = ["text/plain", "application/octet-stream", "image/gif", "image/webp", "text/csv", "application/xml",
               "video/mp4", "application/jsonx", "image/jpegx", "image/", "/jpeg", "image jpeg", ";;;==",
               "image/jpeg, image/png", "application/json/extra", "multipart/form-data", "*/*", "image/*"]
    for ctype in unknown:
        cases.append(Case("content-type", jpeg, ctype, 415))
    for ctype in ("text/csv", "application/octet-stream", "application/x-numpy"):
        cases.append(Case("content-type", npy, ctype, 415))
    for accept in ("text/html", "image/png", "application/xml", "text/plain", "application/jsonx", "foo",
                   "image/*", "text/html, image/png", "application/protobuf"):
        cases.append(Case("accept", jpeg, "image/jpeg", 406, accept=accept))
        cases.append(Case("accept", npy, "application/x-npy", 406, accept=accept))
    big = MAX_PAYLOAD_MB * 1024 * 1024
    for size, ctype in ((big + 1024, "image/jpeg"), (2 * big, "application/json"), (4 * big, "application/x-npy")):
        cases.append(Case("too-large", b"\xff\xd8\xff" + bytes(size), ctype, 413))
    return cases


def corpus():
    rng = np.random.default_rng(20261124)
    return image_cases(rng) + json_cases() + npy_cases(rng) + header_cases()


# ---------------------------------------------------------------- the server
def _fuzz_server(docker, serve_image, model, name, port):
    """The serving image on ``model`` with a 1 MB payload limit and batches of up to 4."""
    env = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": str(MAX_PAYLOAD_MB), "SAGEMAKER_TS_BATCH_SIZE": "4",
           "SAGEMAKER_TS_MAX_BATCH_DELAY": "30"}
    with serving(docker, serve_image, model, port, name, env=env) as url:
        yield name, url


@pytest.fixture(scope="module")
def fuzz_server(docker, serve_image, tmp_path_factory, free_port):
    model = classifier_model_dir(tmp_path_factory.mktemp("fuzz-model"))
    port = free_port()
    yield from _fuzz_server(docker, serve_image, model, f"byoc-test-fuzz-{port}", port)


async def _send(session, url, case):
    headers = {}
    skip = ["Content-Type"] if case.content_type is None else []
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    if case.accept is not None:
        headers["Accept"] = case.accept
    async with session.request(case.method, url + case.path, data=case.body or None, headers=headers,
                               skip_auto_headers=skip) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def _send_all(url, cases, photos, concurrency):
    """Send the cases `concurrency` at a time, a real photo after every 4th, so
    that good and bad requests share batches; return answers in order."""
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def one(case):
            async with gate:
                return await _send(session, url, case)

        mixed = []
        for i, case in enumerate(cases):
            mixed.append(case)
            if i % 4 == 3:
                mixed.append(photos[i % len(photos)])
        answers = await asyncio.gather(*(one(c) for c in mixed))
    return list(zip(mixed, answers))


def _predict(url, photo):
    request = urllib.request.Request(url + "/invocations", data=photo.read_bytes(),
                                     headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())["predictions"]


def _same_answer(a, b):
    return [p["label"] for p in a] == [p["label"] for p in b] and all(
        abs(p["probability"] - q["probability"]) < 1e-4 for p, q in zip(a, b))


def _problem(case, status, ctype, body):
    """Why an answer breaks the contract, or None."""
    if status != case.expect:
        return f"status {status}, expected {case.expect}"
    text = body.decode("utf-8", "replace")
    leaked = [word for word in LEAKS if word in text]
    if leaked:
        return f"the answer shows {leaked}: {text[:300]}"
    if not ctype.startswith("application/json"):
        return f"Content-Type {ctype!r}, expected JSON: {text[:200]}"
    try:
        reason = json.loads(body)
    except ValueError:
        return f"not JSON: {text[:200]}"
    if not (isinstance(reason, dict) and reason.get("code") == status and str(reason.get("message", "")).strip()):
        return f"no reason in {text[:200]}"
    return None


def test_fuzz_set_gets_the_right_4xx_and_the_server_stays_healthy(fuzz_server, docker):
    name, url = fuzz_server
    before = {photo: _predict(url, photo) for photo in PHOTOS}
    cases = corpus()
    assert len(cases) >= 200
    good = [Case("photo", photo.read_bytes(), "image/jpeg", 200) for photo in PHOTOS]
    # the first 40 alone (one request per batch), the rest 8 at a time with photos in between
    answers = asyncio.run(_send_all(url, cases[:40], good, concurrency=1))
    answers += asyncio.run(_send_all(url, cases[40:], good, concurrency=8))

    problems, by_status = [], Counter()
    for case, (status, ctype, body) in answers:
        if case.kind == "photo":
            photo = PHOTOS[[g.body for g in good].index(case.body)]
            if status != 200 or not _same_answer(json.loads(body)["predictions"], before[photo]):
                problems.append(f"{photo.name} sent among the bad ones: {status} {body[:200]!r}")
            continue
        by_status[status] += 1
        why = _problem(case, status, ctype, body)
        if why:
            problems.append(f"{case!r}: {why}")
    expected = Counter(c.expect for c in cases)
    print(f"\nfuzz: {len(cases)} cases, by status {dict(sorted(by_status.items()))}, "
          f"by kind {dict(Counter(c.kind for c in cases))}")
    assert not problems, f"{len(problems)} of {len(answers)} answers break the contract:\n" + "\n".join(problems[:40])
    assert by_status == expected
    # TorchServe's worker logs this line once per batch: fewer batches than
    # requests means that bad and good requests did share batches.
    batches = logs_of(docker, name).count("Backend received inference at")
    print(f"fuzz: {len(answers) + len(PHOTOS)} requests in {batches} batches")
    assert batches < len(answers), "no batch held more than one request"

    # still healthy, and the same answers as before the fuzz
    wait_healthy(docker, name, url, timeout=30)
    after = {photo: _predict(url, photo) for photo in PHOTOS}
    for photo in PHOTOS:
        assert _same_answer(after[photo], before[photo]), (photo.name, before[photo], after[photo])


# ---------------------------------------------------------------- methods, forms, routes
# TorchServe's Java frontend would answer all of these before our handler sees
# them (any method on /invocations ran the model, form bodies were decoded by it,
# a 500 echoed the body, a 413 had no body, its own routes shared the port).
# Our front door (serve/front.py) answers them now; each was a strict xfail until then.
def _odd_cases():
    jpeg = PHOTOS[0].read_bytes()
    cases = []
    for method in ("GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        body = jpeg if method in ("PUT", "PATCH") else b""
        cases.append((f"{method} /invocations", Case("method", body, "image/jpeg" if body else None, 405,
                                                     method=method)))
    for method in ("POST", "PUT", "DELETE"):
        cases.append((f"{method} /ping", Case("method", b"", None, 405, method=method, path="/ping")))
    cases.append(("form jpeg", Case("form", jpeg, "application/x-www-form-urlencoded", 415)))
    cases.append(("form json", Case("form", b"[1]", "application/x-www-form-urlencoded", 415)))
    cases.append(("multipart jpeg", Case("form", b"--x\r\n\r\n" + jpeg + b"\r\n--x--\r\n",
                                         "multipart/form-data; boundary=x", 415)))
    # TorchServe's own inference routes are not reachable from outside
    for path in ("/predictions/model", "/api-description", "/v2/models/model/infer", "/v1/models/model:predict"):
        cases.append((f"POST {path}", Case("route", jpeg, "image/jpeg", 404, path=path)))
    cases.append(("too large", Case("too-large-body", bytes(2 * MAX_PAYLOAD_MB * 1024 * 1024), "image/jpeg", 413)))
    cases.append(("bool npy", Case("npy-dtype", _npy(np.ones((3, 8, 8), bool)), "application/x-npy", 400)))
    return [pytest.param(case, id=key) for key, case in cases]


@pytest.mark.parametrize("case", _odd_cases())
def test_methods_forms_and_oversize_get_a_json_4xx(fuzz_server, case):
    _, url = fuzz_server

    async def send():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            return await _send(session, url, case)

    status, ctype, body = asyncio.run(send())
    if case.method == "HEAD":
        assert status == case.expect
        return
    why = _problem(Case("odd", case.body, case.content_type, case.expect), status, ctype, body)
    assert why is None, f"{case!r}: {why}"


# ---------------------------------------------------------------- the same set through user code
WORKSHOP_CODE = ROOT / "tests" / "container" / "workshop" / "resnet_serving" / "inference.py"


def user_code_cases():
    """Issue 11's cases for a workshop inference.py, with the answer each must get."""
    jpeg = PHOTOS[0].read_bytes()
    cases = [Case("accept-not-produced", jpeg, "image/jpeg", 406, accept=accept)
             for accept in ("text/csv", "application/xml", "image/png", "text/html", "application/x-npy",
                            "application/jsonx")]
    cases.append(Case("accept-in-order", jpeg, "image/jpeg", 200, accept="text/html, application/json;q=0.9"))
    cases.append(Case("bool-array", json.dumps(np.ones((1, 3, 64, 64), bool).tolist()).encode(),
                      "application/json", 400))
    cases += [Case("bomb-in-user-code", _patch_jpeg_size(jpeg, size, size), "image/jpeg", 413)
              for size in (12000, 7000)]
    return cases


@pytest.fixture(scope="module")
def user_code_server(docker, serve_image, tmp_path_factory, free_port):
    model = classifier_model_dir(tmp_path_factory.mktemp("fuzz-user-code"))
    (model / "model.json").unlink()  # a workshop's model: model.pt and code/ only
    (model / "code" / "inference.py").write_bytes(WORKSHOP_CODE.read_bytes())
    port = free_port()
    yield from _fuzz_server(docker, serve_image, model, f"byoc-test-fuzz-user-{port}", port)


def test_fuzz_set_through_user_code_gets_no_5xx(user_code_server, docker):
    """The 291 cases and issue 11's through a workshop inference.py: the user's
    code decides what it accepts, so the 4xx may differ from the default handler's,
    but no answer is a 5xx, each non-2xx is a JSON reason, and the issue's cases get
    exactly their answer. The photos among them answer as before."""
    name, url = user_code_server

    def predict(photo):
        request = urllib.request.Request(url + "/invocations", data=photo.read_bytes(),
                                         headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    before = {photo: predict(photo) for photo in PHOTOS}
    special = user_code_cases()
    cases = corpus() + special
    good = [Case("photo", photo.read_bytes(), "image/jpeg", 200) for photo in PHOTOS]
    answers = asyncio.run(_send_all(url, cases, good, concurrency=8))
    problems, by_status = [], Counter()
    for case, (status, ctype, body) in answers:
        if case.kind == "photo":
            photo = PHOTOS[[g.body for g in good].index(case.body)]
            probs = [p["probability"] for p in json.loads(body)] if status == 200 else None
            if probs is None or not np.allclose(probs, [p["probability"] for p in before[photo]], atol=1e-4):
                problems.append(f"{photo.name} sent among the bad ones: {status} {body[:200]!r}")
            continue
        by_status[status] += 1
        if case in special:
            why = _problem(case, status, ctype, body) if status != 200 else (
                None if ctype.startswith("application/json") and len(json.loads(body)) == 3 else f"{ctype} {body[:100]!r}")
        elif status >= 500:
            why = f"status {status}: {body[:300]!r}"
        elif status >= 400:
            why = _problem(Case(case.kind, b"", None, status), status, ctype, body)
        else:
            why = None
        if why:
            problems.append(f"{case!r}: {why}")
    print(f"\nfuzz through user code: {len(cases)} cases ({len(special)} of issue 11), by status "
          f"{dict(sorted(by_status.items()))}")
    assert not problems, f"{len(problems)} of {len(answers)} answers:\n" + "\n".join(problems[:40])
    wait_healthy(docker, name, url, timeout=30)
    assert all(np.allclose([p["probability"] for p in predict(photo)],
                           [p["probability"] for p in before[photo]], atol=1e-4) for photo in PHOTOS)
