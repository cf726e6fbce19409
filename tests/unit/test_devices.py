"""byoc.devices: `train` and `serve` count GPUs without importing torch themselves."""
import subprocess
import types

import pytest

from byoc import devices


def test_gpu_count_needs_no_torch_in_the_caller(monkeypatch):
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no device node: nothing to ask torch"))
    assert devices.gpu_count() == 0
    # with a device node, torch counts in a child process (CUDA_VISIBLE_DEVICES applies there)
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidia1"])
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: calls.append(cmd) or types.SimpleNamespace(stdout="1\n"))
    assert devices.gpu_count() == 1
    assert "torch.cuda.device_count()" in calls[0][-1]


def test_gpu_count_is_0_when_the_child_cannot_count(monkeypatch):
    # e.g. torch missing: the child prints nothing
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: ["/dev/nvidia0"])
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: types.SimpleNamespace(stdout=""))
    assert devices.gpu_count() == 0


def test_the_supervisors_count_with_it():
    from serve import config
    from train import contract

    assert config.gpu_count is devices.gpu_count and contract.gpu_count is devices.gpu_count
