"""(l) A per-sample MLP whose predict_fn holds a lock around its model call, the
usual way to make a predict_fn thread-safe. Merged calls wait for every call of
the batch to reach the model, and the lock keeps all but one out: the server
must not wait for ever (each request would end in a 504); every answer must
still be the model's own."""
import os
import threading

import torch
from torch import nn

LOCK = threading.Lock()


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
    with LOCK, torch.no_grad():
        return model(input_data)
