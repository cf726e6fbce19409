# The CIFAR-10 `train.py` of SageMaker's PyTorch workshops (amazon-sagemaker-examples,
# sagemaker-python-sdk/pytorch_cnn_cifar10/source/cifar10.py), kept to its shape: argparse with
# defaults from sagemaker-training's Environment, torchvision's CIFAR10 on the "training"
# channel, the tutorial's small CNN, the state_dict saved to the model dir as model.pth.
# Added for the test: a stdout log handler, the hosts and image counts in the log, a loss line
# per epoch and the test-set accuracy at the end.
#
# One change, on purpose: the workshop calls torchvision.datasets.CIFAR10(download=False),
# which checks the MD5 of every real cifar-10-batches-py file. Test data generated in the
# same on-disk format (pickled dicts of uint8 rows + labels) has other MD5s, so this
# variant lists the same files with no MD5 (torchvision then checks only that they exist)
# and keeps torchvision's own reader of the files.
import argparse
import logging
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import torch.utils.data
import torchvision
import torchvision.transforms as transforms

try:
    from sagemaker_inference import environment
except ImportError:
    from sagemaker_training import environment

logger = logging.getLogger(__name__)
logger.setLevel(logging.DEBUG)
logger.addHandler(logging.StreamHandler(sys.stdout))


class CIFAR10(torchvision.datasets.CIFAR10):
    # generated files: the published names and format, not the published MD5s
    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _train(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logger.info("Device Type: {}".format(device))
    logger.info("Hosts: {} current host: {} gpus: {}".format(args.hosts, args.current_host, args.num_gpus))

    logger.info("Loading Cifar10 dataset")
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )
    trainset = CIFAR10(root=args.data_dir, train=True, download=False, transform=transform)
    train_loader = torch.utils.data.DataLoader(
        trainset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers
    )
    testset = CIFAR10(root=args.data_dir, train=False, download=False, transform=transform)
    test_loader = torch.utils.data.DataLoader(
        testset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers
    )
    logger.info("train images: {} test images: {}".format(len(trainset), len(testset)))

    logger.info("Model loaded")
    model = Net().to(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)

    for epoch in range(0, args.epochs):
        running_loss = 0.0
        for i, data in enumerate(train_loader):
            inputs, labels = data
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        print("[epoch %d] loss: %.3f" % (epoch + 1, running_loss / (i + 1)))
    print("Finished Training")
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in test_loader:
            correct += (model(inputs.to(device)).argmax(1).cpu() == labels).sum().item()
            total += labels.numel()
    print("test accuracy: %.4f" % (correct / total))
    return _save_model(model, args.model_dir)


def _save_model(model, model_dir):
    logger.info("Saving the model.")
    path = os.path.join(model_dir, "model.pth")
    # recommended way from http://pytorch.org/docs/master/notes/serialization.html
    torch.save(model.cpu().state_dict(), path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2, metavar="W", help="number of data loading workers (default: 2)")
    parser.add_argument("--epochs", type=int, default=2, metavar="E", help="number of total epochs to run (default: 2)")
    parser.add_argument("--batch_size", type=int, default=4, metavar="BS", help="batch size (default: 4)")
    parser.add_argument("--lr", type=float, default=0.001, metavar="LR", help="initial learning rate (default: 0.001)")
    parser.add_argument("--momentum", type=float, default=0.9, metavar="M", help="momentum (default: 0.9)")
    parser.add_argument("--dist_backend", type=str, default="gloo", help="distributed backend (default: gloo)")

    # as the workshop: defaults from sagemaker-training's Environment (resourceconfig.json,
    # inputdataconfig.json, SM_* variables), so the same script runs in the image unchanged
    env = environment.Environment()
    parser.add_argument("--hosts", type=list, default=env.hosts)
    parser.add_argument("--current-host", type=str, default=env.current_host)
    parser.add_argument("--model-dir", type=str, default=env.model_dir)
    parser.add_argument("--data-dir", type=str, default=env.channel_input_dirs.get("training"))
    parser.add_argument("--num-gpus", type=int, default=env.num_gpus)

    _train(parser.parse_args())
