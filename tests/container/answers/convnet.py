"""(j) Per-sample conv net (conv, batch norm with running statistics, ReLU,
pooling): each image's answer depends on that image alone, so its model calls
may run merged in one batch (and the server should merge them)."""
import os

import torch
from torch import nn


def block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*block(3, 8), *block(8, 16), nn.MaxPool2d(2), *block(16, 16),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def model_fn(model_dir):
    model = Net()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True))
    return model.eval()


def predict_fn(input_data, model):
    with torch.no_grad():
        return model(input_data)
