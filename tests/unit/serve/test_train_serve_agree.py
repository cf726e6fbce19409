"""The serving handler sees a photo the way the trainer's evaluation did."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from byoc.artifact import eval_transform
from handlers import common, image_classifier


@pytest.mark.parametrize("ratio", [0.875, 1.0])   # 1.0: center crop of a non-square photo, not a squeeze
def test_input_fn_repeats_the_trainers_eval_transform(tmp_path, monkeypatch, ratio):
    size = 64
    (tmp_path / "model.json").write_text(json.dumps({"input_size": [3, size, size], "eval_crop_ratio": ratio}))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path))
    common.read_spec.cache_clear()
    rng = np.random.default_rng(0)
    # smooth content, so that resampling filters differ little
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    photo = Image.fromarray(base).resize((160, 120), Image.BICUBIC)
    body = io.BytesIO()
    photo.save(body, format="PNG")

    served = image_classifier.input_fn(body.getvalue(), "image/png")[0]
    trained = eval_transform(size, ratio)(photo).float() / 255
    assert served.shape == trained.shape == (3, size, size)
    assert (served - trained).abs().mean() < 0.02
    common.read_spec.cache_clear()


def test_center_crop_takes_the_same_pixels_as_torchvision(tmp_path, monkeypatch):
    """Sharp-edged images (digits upscaled 4x) at sizes where the crop offset is x.5:
    torchvision rounds it half to even, and so must the handler (a one-pixel shift
    once cost a served Parquet model 9 points of accuracy)."""
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path))
    from sklearn.datasets import load_digits

    digits = (load_digits().images[:20] * 255 / 16).astype(np.uint8)
    digits = np.kron(digits, np.ones((4, 4), dtype=np.uint8))          # 32 x 32, sharp edges
    for size, ratio in [(24, 0.875), (20, 0.8), (32, 0.875), (32, 1.0)]:
        (tmp_path / "model.json").write_text(json.dumps({"input_size": [3, size, size], "eval_crop_ratio": ratio}))
        common.read_spec.cache_clear()
        for im in digits:
            body = io.BytesIO()
            Image.fromarray(im).save(body, format="PNG")
            served = image_classifier.input_fn(body.getvalue(), "image/png")[0]
            trained = eval_transform(size, ratio)(Image.fromarray(im).convert("RGB")).float() / 255
            assert (served - trained).abs().max() <= 2 / 255, (size, ratio)
    common.read_spec.cache_clear()
