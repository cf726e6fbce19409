"""(c) Batch-dependent: batch statistics in eval mode. A hand-written batch
norm (no running statistics) normalises each call's activations by their own
mean and variance over the batch and the pixels: alone those are one image's,
merged, the batch's. (F.batch_norm(training=True) does the same, but the
tracer refuses it today, so it would not reach a frozen graph.)"""
import os

import torch
import torch.nn.functional as F
from torch import nn


def batch_norm(h, eps=1e-5):
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = h.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (h - mean) / torch.sqrt(var + eps)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(batch_norm(self.conv1(x)))
        h = F.relu(batch_norm(self.conv2(h)))
        h = F.relu(self.conv3(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def model_fn(model_dir):
    model = Net()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True))
    return model.eval()


def predict_fn(input_data, model):
    with torch.no_grad():
        return model(input_data)
