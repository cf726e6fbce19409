"""The multi-head default handler (handlers.multihead) on a real, untrained
Bengali-style model: three heads, grayscale input."""
import io
import json

import numpy as np
import pytest
import torch

from byoc.artifact import build_model, write
from support.serving import npy, run_batch, service_for

HEADS = [
    {"name": "grapheme_root", "num_classes": 6, "classes": [f"g{i}" for i in range(6)], "weight": 2.0},
    {"name": "vowel_diacritic", "num_classes": 3, "classes": ["a", "e", "i"], "weight": 1.0},
    {"name": "consonant_diacritic", "num_classes": 2, "classes": ["none", "ra"], "weight": 1.0},
]


@pytest.fixture(scope="module")
def multihead_dir(tmp_path_factory):
    spec = {
        "format_version": 1, "task": "image-classification", "arch": "resnet18", "library": "torchvision",
        "num_classes": None, "classes": None, "heads": HEADS, "input_size": [3, 32, 56],
        "mean": [0.5] * 3, "std": [0.25] * 3, "eval_crop_ratio": 1.0, "weights": "model.pt",
    }
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("multihead")
    write(build_model(spec).eval(), spec, d)
    return d


@pytest.fixture(scope="module")
def service(multihead_dir):
    return service_for(multihead_dir)


def test_multihead_model_json_selects_the_multihead_handler(service, multihead_dir, tmp_path):
    import handlers.multihead as multihead

    # the trainer's code/inference.py shim brings the multi-head functions
    assert service.fns.predict_fn is multihead.predict_fn and service.fns.output_fn is multihead.output_fn
    assert service.fns.batched
    # with no code/ at all, model.json's heads select the same default handler
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.pt", "model.json"):
        (bare / name).write_bytes((multihead_dir / name).read_bytes())
    assert set(service_for(bare).fns.origin.values()) == {"handlers.multihead"}


def test_per_head_topk_and_probabilities(service, multihead_dir, jpeg_bytes):
    res = run_batch(service, multihead_dir, [
        (jpeg_bytes, {"Content-Type": "image/jpeg"}),
        (jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": "application/json; topk=2"}),
        (jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": "application/x-npy"}),
    ])
    assert [r[0] for r in res] == [200, 200, 200]
    full = json.loads(res[0][2])["predictions"]
    assert list(full) == [h["name"] for h in HEADS]
    for head in HEADS:
        ranked = full[head["name"]]
        assert len(ranked) == min(5, head["num_classes"])
        assert {p["label"] for p in ranked} <= set(head["classes"])
        assert ranked == sorted(ranked, key=lambda p: -p["probability"])
    two = json.loads(res[1][2])["predictions"]
    assert {name: len(v) for name, v in two.items()} == {"grapheme_root": 2, "vowel_diacritic": 2,
                                                         "consonant_diacritic": 2}
    assert all(two[n][0] == full[n][0] for n in two)
    probs = np.load(io.BytesIO(res[2][2]))
    assert probs.shape == (1, 11)
    # a softmax per head: each head's probabilities sum to 1
    assert np.allclose([probs[0, :6].sum(), probs[0, 6:9].sum(), probs[0, 9:].sum()], 1, atol=1e-5)


def test_batch_of_arrays_and_a_bad_request_in_one_batch(service, multihead_dir, jpeg_bytes):
    pixels = np.random.default_rng(0).integers(0, 255, (2, 32, 56, 3), dtype=np.uint8)
    res = run_batch(service, multihead_dir, [
        (npy(pixels), {"Content-Type": "application/x-npy"}),
        (jpeg_bytes[:200], {"Content-Type": "image/jpeg"}),
        (jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": "application/json; topk=-1"}),
        (jpeg_bytes, {"Content-Type": "image/jpeg"}),
    ])
    assert [r[0] for r in res] == [200, 400, 400, 200]
    rows = json.loads(res[0][2])["predictions"]
    assert isinstance(rows, list) and len(rows) == 2 and set(rows[0]) == {h["name"] for h in HEADS}
