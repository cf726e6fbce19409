"""(k) Per-sample MLP: each row's answer depends on that row alone, so its model
calls may run merged in one batch (and the server should merge them)."""
import os

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(4):
            layers += [nn.Linear(64, 64), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Linear(64, 10))

    def forward(self, x):
        return self.body(x)


def model_fn(model_dir):
    model = Net()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True))
    return model.eval()


def predict_fn(input_data, model):
    with torch.no_grad():
        return model(input_data)
