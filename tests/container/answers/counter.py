"""(f) Stateful: the model counts its forward calls, and each answer carries
the count and the worker's pid after the logits: [logits..., count, pid].
One request is one forward call, so each worker's counts must be exactly
1..N: a merged batch repeats a count, a hidden extra call (tracing, timing,
a check run) skips one."""
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
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        tag = torch.tensor([[float(self.calls), float(os.getpid())]]).expand(x.shape[0], 2)
        return torch.cat([self.body(x), tag], dim=1)


def model_fn(model_dir):
    model = Net()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True))
    return model.eval()


def predict_fn(input_data, model):
    with torch.no_grad():
        return model(input_data)
