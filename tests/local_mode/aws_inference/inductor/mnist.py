"""The MNIST-style classifier compiled with torch.compile (inductor, the default backend) in
model_fn, as AWS's inductor test model: DataParallel, weights from torch_model.pth, no eval(),
moved to the GPU when there is one, then compiled. Compiling happens at the first forward, so
the first request is where a missing compiler shows."""
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.Dropout2d(), nn.MaxPool2d(2), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(320, 50), nn.ReLU(), nn.Dropout(), nn.Linear(50, 10))

    def forward(self, x):
        return F.log_softmax(self.head(self.features(x).reshape(-1, 320)), dim=1)


def model_fn(model_dir):
    model = nn.DataParallel(Net())
    with open(os.path.join(model_dir, "torch_model.pth"), "rb") as f:
        model.load_state_dict(torch.load(f))
    model = model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model = torch.compile(model)
    logger.info("model_fn: compiled with torch.compile (inductor)")
    return model
