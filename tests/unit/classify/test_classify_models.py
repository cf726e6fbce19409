import json

import pytest
import torch

from byoc import artifact
from byoc.artifact import build_model, resolve_arch
from train.classify.models import load_pretrained, read_state_dict


def spec(arch, library="torchvision", n=5, size=32):
    return artifact.model_spec(arch=arch, library=library, classes=[f"c{i}" for i in range(n)], image_size=size,
                             mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.mark.parametrize("arch, size", [("resnet18", 32), ("mobilenet_v3_small", 32), ("efficientnet_b0", 32),
                                        ("vit_b_16", 32)])
def test_torchvision_archs_get_the_head_and_size(arch, size):
    model = build_model(spec(arch, size=size)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_timm_arch():
    pytest.importorskip("timm")
    assert resolve_arch("test_efficientnet") == "timm"
    model = build_model(spec("test_efficientnet", "timm", n=7, size=16)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_rebuild_from_model_json_alone(tmp_path):
    s = spec("resnet18", n=4)
    model = build_model(s).eval()
    artifact.write(model, s, tmp_path)
    loaded = json.loads((tmp_path / "model.json").read_text())
    assert list(loaded) == ["format_version", "task", "arch", "library", "num_classes", "classes", "heads",
                            "input_size", "mean", "std", "eval_crop_ratio", "weights", "versions"]
    twin = build_model(loaded).eval()
    twin.load_state_dict(torch.load(tmp_path / loaded["weights"], weights_only=True))
    x = torch.randn(2, *loaded["input_size"])
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
    assert (tmp_path / "code/inference.py").read_text().count("\n") == 2


def test_unknown_arch_and_library():
    with pytest.raises(ValueError, match="unknown architecture"):
        resolve_arch("resnet_nonexistent")
    with pytest.raises(ValueError, match="unknown model library"):
        build_model({"arch": "resnet18", "library": "keras", "num_classes": 2})


def test_pretrained_skips_the_mismatched_head(tmp_path):
    source = build_model(spec("resnet18", n=1000))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    target = build_model(spec("resnet18", n=3))
    report = load_pretrained(target, read_state_dict(path))
    assert set(report["mismatched"]) == {"fc.weight", "fc.bias"}
    assert report["loaded"] == report["total"] - 2
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match="no tensor"):
        load_pretrained(target, {"foo": torch.zeros(1)})
