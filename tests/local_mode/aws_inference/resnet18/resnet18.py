"""transform_fn only: the server's default model_fn loads the model (a TorchScript file in the
model directory), this function does the rest, as AWS's default-inference test script does.

A JPEG or PNG as application/octet-stream in; the 1,000 ImageNet class probabilities out, as a
JSON list. Served as SAGEMAKER_PROGRAM=resnet18.py, and as code/inference.py on a multi-model
endpoint.
"""
import io
import json
import logging

import torch
from PIL import Image
from torchvision import transforms

logger = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREPROCESS = transforms.Compose([
    transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
])


def transform_fn(model, payload, content_type, accept):
    logger.info("transform_fn: %d bytes of %s", len(payload), content_type)
    if content_type and content_type != "application/octet-stream":
        raise ValueError(f"send the image as application/octet-stream, not {content_type}")
    image = Image.open(io.BytesIO(payload)).convert("RGB")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.no_grad():
        logits = model(PREPROCESS(image).unsqueeze(0).to(device))
    probabilities = torch.softmax(logits[0].float(), dim=0).cpu()
    return json.dumps(probabilities.tolist()), "application/json"
