"""(i) predict_fn changes the weights: after its 3rd call it doubles the last
layer's weight in place, for good. Each answer carries [logits..., call, pid]
(call: this predict_fn call's number in its worker), so the test knows which
weights it must reflect: the seeded ones for calls 1-3, the doubled ones from
call 4 on. A server that answers from a copy of the weights it made earlier
keeps answering with the old ones."""
import itertools
import os

import torch
from torch import nn

CHANGE_AFTER = 3


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(4):
            layers += [nn.Linear(64, 64), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x))


def double_head(model):
    with torch.no_grad():
        model.head.weight.mul_(2)


def model_fn(model_dir):
    model = Net()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True))
    model.calls = itertools.count(1)
    return model.eval()


def predict_fn(input_data, model):
    call = next(model.calls)
    with torch.no_grad():
        out = model(input_data)
    if call == CHANGE_AFTER:
        double_head(model)
    tag = torch.tensor([[float(call), float(os.getpid())]])
    return torch.cat([out, tag], dim=1)
