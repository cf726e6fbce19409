"""What accelerators this container has, without importing torch in the caller.

`train` and `serve` stay alive for the whole job or endpoint while their children
do the work; importing torch in them only to count GPUs kept ~500 MB resident.
"""
from __future__ import annotations

import glob
import subprocess
import sys


def gpu_count() -> int:
    """GPUs torch would see (CUDA_VISIBLE_DEVICES applies); 0 without torch or CUDA.

    Without an NVIDIA device node there are none and torch is not asked (it takes
    seconds to import); with one, torch counts them in a child process."""
    if not glob.glob("/dev/nvidia[0-9]*"):
        return 0
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0
