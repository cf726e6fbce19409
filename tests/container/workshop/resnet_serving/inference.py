"""A workshop-style code/inference.py (as in the SageMaker PyTorch examples): a
torchvision ResNet-18 state_dict, PIL decoding with torchvision transforms, JSON
arrays taken as tensors, predict under no_grad, and an output_fn that does JSON only.

Served by tests/container/test_serve_fuzz.py against the bad-request set: none of
its errors may become a 5xx. Sized for the tests' 64 px, 3-class model."""
import io
import json
import os

import torch
import torchvision
from PIL import Image
from torchvision import transforms

PREPROCESS = transforms.Compose([
    transforms.Resize(72),
    transforms.CenterCrop(64),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])


def model_fn(model_dir):
    model = torchvision.models.resnet18(num_classes=3)
    state = torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def input_fn(request_body, content_type):
    if content_type == "application/json":
        return torch.tensor(json.loads(request_body))
    if content_type in ("image/jpeg", "image/png", "application/x-image"):
        image = Image.open(io.BytesIO(request_body)).convert("RGB")
        return PREPROCESS(image).unsqueeze(0)
    raise ValueError(f"unsupported content type {content_type}")


def predict_fn(input_data, model):
    with torch.no_grad():
        return model(input_data)


def output_fn(prediction, accept):
    if accept != "application/json":
        raise ValueError(f"unsupported accept type {accept}")
    probs = torch.softmax(prediction[0], dim=0)
    return json.dumps([{"class": int(i), "probability": float(p)} for i, p in enumerate(probs)])
