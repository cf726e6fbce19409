import io
import json
import struct
import zlib

import numpy as np
import pytest

from serve import codecs
from serve.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


# ---------------------------------------------------------------- images
def test_real_jpeg_and_png_decode(jpeg_bytes, png_bytes):
    img = codecs.decode_image(jpeg_bytes, "image/jpeg")
    assert img.mode == "RGB" and img.size[0] > 100
    assert codecs.decode_image(png_bytes, "image/png").size == img.size
    assert codecs.decode_image(png_bytes, "application/x-image").size == img.size


def test_draft_decodes_jpeg_smaller_but_not_below_target(jpeg_bytes):
    img = codecs.decode_image(jpeg_bytes, "image/jpeg", draft=(64, 64))
    assert 64 <= min(img.size) < 512


def test_truncated_jpeg_is_400(jpeg_bytes):
    with pytest.raises(BadRequest):
        codecs.decode_image(jpeg_bytes[: len(jpeg_bytes) // 3], "image/jpeg")


def test_garbage_and_empty_are_400():
    with pytest.raises(BadRequest):
        codecs.decode_image(b"not an image at all", "image/jpeg")
    with pytest.raises(BadRequest, match="empty"):
        codecs.decode_image(b"", "image/png")


def test_png_sent_as_jpeg_is_400(png_bytes):
    with pytest.raises(BadRequest):
        codecs.decode_image(png_bytes, "image/jpeg")


def test_decompression_bomb_is_413_before_decoding():
    bomb = png_header(12000, 12000)
    assert len(bomb) < 200
    with pytest.raises(PayloadTooLarge, match="12000x12000"):
        codecs.decode_image(bomb, "image/png")


def test_pixel_limit_from_env(monkeypatch, jpeg_bytes):
    monkeypatch.setenv("BYOC_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(PayloadTooLarge):
        codecs.decode_image(jpeg_bytes, "image/jpeg")


def test_unsupported_content_type_is_415(jpeg_bytes):
    with pytest.raises(UnsupportedMediaType):
        codecs.decode_image(jpeg_bytes, "image/gif")
    with pytest.raises(UnsupportedMediaType):
        codecs.decode_array(b"[1]", "application/xml")
    with pytest.raises(UnsupportedMediaType, match="none"):
        codecs.decode_array(b"[1]", "")


# ---------------------------------------------------------------- arrays
def test_npy_round_trip():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = codecs.decode_array(codecs.encode(arr, "application/x-npy"), "application/x-npy")
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.float32


def test_npy_object_dtype_is_400_and_never_unpickled():
    with pytest.raises(BadRequest):
        codecs.decode_array(npy(np.array([{"a": 1}], dtype=object)), "application/x-npy")


def test_npy_pickle_payload_is_400():
    import pickle

    with pytest.raises(BadRequest):
        codecs.decode_array(pickle.dumps({"x": 1}), "application/x-npy")


def test_npy_strings_and_truncation_are_400():
    with pytest.raises(BadRequest, match="numeric"):
        codecs.decode_array(npy(np.array(["a", "b"])), "application/x-npy")
    with pytest.raises(BadRequest):
        codecs.decode_array(npy(np.zeros((100, 100)))[:500], "application/x-npy")


def test_npy_nan_is_400():
    with pytest.raises(BadRequest, match="NaN"):
        codecs.decode_array(npy(np.array([1.0, np.nan])), "application/x-npy")


@pytest.mark.parametrize(
    "body",
    [b"[1, NaN]", b"[Infinity]", b"[[1, 2], [3]]", b'{"x": 1}', b'"text"', b"[\"a\"]", b"{", b"[]", b"[1, null]"],
)
def test_bad_json_is_400(body):
    with pytest.raises(BadRequest):
        codecs.decode_array(body, "application/json")


def test_json_forms():
    np.testing.assert_array_equal(codecs.decode_array(b"[[1,2],[3,4]]", "application/json"), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(codecs.decode_array(b'{"instances": [1, 2]}', "application/json"), [1, 2])
    np.testing.assert_array_equal(
        codecs.decode_array(b"[1, 2]", "application/json; charset=utf-8"), [1, 2]
    )


def test_csv_round_trip_and_errors():
    arr = np.array([[1.5, 2.0], [3.0, 4.0]])
    out = codecs.decode_array(codecs.encode(arr, "text/csv"), "text/csv")
    np.testing.assert_allclose(out, arr)
    with pytest.raises(BadRequest):
        codecs.decode_array(b"1,2\n3", "text/csv")
    with pytest.raises(BadRequest):
        codecs.decode_array(b"a,b", "text/csv")


def test_json_encode_handles_tensors_numpy_and_nan():
    import torch

    body = codecs.encode({"t": torch.tensor([1.0, float("nan")]), "n": np.float32(2)}, "application/json")
    assert json.loads(body) == {"t": [1.0, None], "n": 2.0}


def test_encode_unknown_accept_is_406():
    with pytest.raises(NotAcceptable):
        codecs.encode([1], "application/xml")
    with pytest.raises(NotAcceptable):
        codecs.encode(np.zeros((2, 2, 2)), "text/csv")


# ---------------------------------------------------------------- negotiation
@pytest.mark.parametrize(
    "accept,expected",
    [
        ("", ["application/json"]),
        ("*/*", ["application/json"]),
        ("text/csv", ["text/csv"]),
        ("application/x-npy;q=0.5, text/csv", ["text/csv", "application/x-npy"]),
        ("image/png, application/*", ["image/png", "application/json", "application/x-npy"]),
        ("text/*", ["text/csv"]),
        ("text/html, application/json;q=0.9", ["text/html", "application/json"]),
        ("application/json;q=0.2, text/csv;q=0.8, */*;q=0.1", ["text/csv", "application/json"]),
        ("application/*, application/json;q=0", ["application/x-npy"]),
        ("image/*", []),                                          # nothing known under it: 406
        ("text/csv;q=x, application/json", ["text/csv", "application/json"]),  # a bad q counts as 1
        ("application/json, application/json;topk=2", ["application/json"]),
    ],
)
def test_accept_choices_in_preference_order(accept, expected):
    assert [t for t, _ in codecs.accept_choices(accept)] == expected


def test_accept_choices_keep_parameters_other_than_q():
    assert codecs.accept_choices("application/json; topk=3; q=0.5") == [("application/json", {"topk": "3"})]


def test_error_body_is_json_without_paths():
    from serve.errors import client_message

    err = BadRequest(client_message(FileNotFoundError("[Errno 2] No such file: '/opt/ml/model/x.pt'")))
    body = json.loads(err.body())
    assert body["code"] == 400 and "/opt/ml" not in body["message"]


# ---------------------------------------------------------------- a review's findings (2026-12-07)
def test_a_nan_numpy_scalar_and_a_bfloat16_tensor_encode_as_json():
    import torch
    assert json.loads(codecs.encode({"s": np.float64("inf"), "t": np.float32("nan")}, codecs.JSON)) == \
        {"s": None, "t": None}
    out = torch.tensor([[0.5, -2.0]], dtype=torch.bfloat16)
    assert json.loads(codecs.encode(out, codecs.JSON)) == [[0.5, -2.0]]
    assert np.load(io.BytesIO(codecs.encode(out, codecs.NPY))).tolist() == [[0.5, -2.0]]


def test_a_utf8_bom_is_taken_as_json_loads_takes_it():
    assert codecs.decode_array(b"\xef\xbb\xbf[[1, 2]]", codecs.JSON).tolist() == [[1, 2]]
    assert codecs.decode_array(b"\xef\xbb\xbf1,2\n3,4\n", codecs.CSV).tolist() == [[1, 2], [3, 4]]


def test_json_lines_records_may_be_numbers():
    assert codecs.decode_array(b"1\n2.5\n", codecs.JSONLINES).tolist() == [1.0, 2.5]
    with pytest.raises(BadRequest):
        codecs.decode_array(b"true\nfalse\n", codecs.JSONLINES)


def test_server_paths_are_cut_also_inside_other_text():
    from serve.errors import client_message
    for text in ("path=/opt/ml/model/x.pt", "{'/opt/ml/model/x.pt': 1}", "file:///opt/ml/model/x.pt"):
        assert "opt" not in client_message(ValueError(text)), text
    assert client_message(ValueError("a/b ratio 1/2, expected 3")) == "a/b ratio 1/2, expected 3"
