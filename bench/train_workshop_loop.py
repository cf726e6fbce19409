"""The plain training loop of the SageMaker workshops, as a baseline for bench/train_throughput.py.

Runs inside the training image: torchvision ImageFolder + the usual transforms, a default
DataLoader (num_workers=0), fp32, SGD; or, with --synthetic, the same model and step on tensors
already in memory (no decode, no augmentation: the ceiling for this model on these cores).
Prints one line: `images_per_sec=<float>` over the epochs after the first (the first warms up).
"""
import argparse
import time

import torch
import torchvision
from torchvision import transforms


def loader(args):
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.images, 3, args.image_size, args.image_size, generator=g)
        y = torch.randint(0, args.classes, (args.images,), generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch_size,
                                           shuffle=True)
    tf = transforms.Compose([
        transforms.RandomResizedCrop(args.image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    data = torchvision.datasets.ImageFolder(args.data, transform=tf)
    return torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/opt/ml/input/data/train")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--images", type=int, default=600, help="synthetic set size")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=args.classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = loader(args)
    seen, seconds = 0, 0.0
    for epoch in range(args.epochs):
        start, n = time.perf_counter(), 0
        model.train()
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            n += len(y)
        if epoch > 0:
            seen, seconds = seen + n, seconds + time.perf_counter() - start
    print(f"images_per_sec={seen / seconds:.1f}", flush=True)


if __name__ == "__main__":
    main()
