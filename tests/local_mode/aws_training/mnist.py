"""A small MNIST classifier written the way AWS's toolkit test script is: the job's facts come
from sagemaker_training's Environment, and with more than one host and a --backend it joins one
process group per host by calling init_process_group(backend, rank=, world_size=) itself, with
the env:// default (MASTER_ADDR and MASTER_PORT are the container's to set), and averages the
gradients with all_reduce. Saves model.pth.
"""
import argparse
import json

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from sagemaker_training import environment
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from torchvision import datasets, transforms


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(16 * 5 * 5, 10))

    def forward(self, x):
        return F.log_softmax(self.head(self.features(x)), dim=1)


def mnist(root, train):
    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    return datasets.MNIST(root, train=train, transform=normalise)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--processor", default="cpu")
    args = parser.parse_args()

    env = environment.Environment()
    rank, world = env.hosts.index(env.current_host), len(env.hosts)
    distributed = world > 1 and args.backend is not None
    if distributed:
        dist.init_process_group(backend=args.backend, rank=rank, world_size=world)
        print(f"joined {args.backend} group: rank {dist.get_rank()} of {dist.get_world_size()}", flush=True)

    torch.manual_seed(0)
    data_dir = env.channel_input_dirs["training"]
    train_set = mnist(data_dir, train=True)
    sampler = DistributedSampler(train_set) if distributed else None
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler)
    model = SmallNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.5)
    for epoch in range(args.epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            F.nll_loss(model(images), labels).backward()
            if distributed:
                for p in model.parameters():
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad /= world
            optimizer.step()
        print(f"epoch {epoch + 1}: {len(loader.sampler)} of {len(train_set)} samples on host {env.current_host}",
              flush=True)

    model.eval()
    test_set = mnist(data_dir, train=False)
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(test_set, batch_size=256))
    print(json.dumps({"host": env.current_host, "test_accuracy": correct / len(test_set)}), flush=True)
    if rank == 0:
        torch.save(model.state_dict(), f"{env.model_dir}/model.pth")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
