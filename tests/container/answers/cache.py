"""(g) Stateful: the model memoises the features of its body by input (the
bytes of the tensor it is called with) and runs its head on them. A cached
answer must equal the uncached one: a server that traces the forward bakes the
first input's features in as a constant and answers every later input with
them."""
import os

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(4):
            layers += [nn.Linear(64, 64), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.memo = {}

    def forward(self, x):
        key = x.numpy().tobytes()
        if key not in self.memo:
            self.memo[key] = self.body(x)
        return self.head(self.memo[key])


def model_fn(model_dir):
    model = Net()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True))
    return model.eval()


def predict_fn(input_data, model):
    with torch.no_grad():
        return model(input_data)
