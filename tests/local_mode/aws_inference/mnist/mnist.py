"""An MNIST-style classifier as a SageMaker PyTorch serving script that defines only model_fn
(the server's default input_fn, predict_fn and output_fn do the rest), the way the AWS serving
toolkit's own test model does:

- model_fn wraps the network in torch.nn.DataParallel, loads torch_model.pth into it, and
  returns it WITHOUT calling eval(): the server's default predict_fn must put it in eval mode;
- the script imports einops, which only code/requirements.txt provides (AWS's asks for
  transformers; einops is a smaller real package): it loads only when the server installed them.
"""
import logging
import os

import einops  # installed by the server from code/requirements.txt
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class Net(nn.Module):
    """Two convolutions and two linear layers, with dropout, over 1x28x28 images; log-probabilities out."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.Dropout2d(), nn.MaxPool2d(2), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(320, 50), nn.ReLU(), nn.Dropout(), nn.Linear(50, 10))

    def forward(self, x):
        x = einops.rearrange(self.features(x), "b c h w -> b (c h w)")
        return F.log_softmax(self.head(x), dim=1)


def model_fn(model_dir):
    logger.info("model_fn: loading torch_model.pth")
    model = nn.DataParallel(Net())
    with open(os.path.join(model_dir, "torch_model.pth"), "rb") as f:
        model.load_state_dict(torch.load(f))   # weights_only by default: a plain state_dict
    return model   # in training mode, on purpose
