"""The MNIST-style classifier taking flat rows of 784 pixels (one image per row), reshaped to
1x28x28 inside the network: model_fn only, DataParallel, no eval(), as AWS's 1-d test model.
Needs nothing but torch (the compatibility test also builds its weights from this file)."""
import os

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.Dropout2d(), nn.MaxPool2d(2), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(320, 50), nn.ReLU(), nn.Dropout(), nn.Linear(50, 10))

    def forward(self, x):
        x = self.features(x.reshape(x.shape[0], 1, 28, 28))
        return F.log_softmax(self.head(x.flatten(1)), dim=1)


def model_fn(model_dir):
    model = nn.DataParallel(Net())
    with open(os.path.join(model_dir, "torch_model.pth"), "rb") as f:
        model.load_state_dict(torch.load(f))
    return model
