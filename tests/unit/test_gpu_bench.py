"""Smoke run of issue 10's GPU benchmarks on the CPU in tiny sizes: bench/gpu_data_check.sh with SMOKE=1
runs bench/gpu_agree.py, gpu_serve.py and gpu_train.py end to end, so the one command that a
machine with a GPU runs is known to work up to the device. The figures here mean nothing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_gpu_data_check_runs_every_part_on_the_cpu(tmp_path):
    pytest.importorskip("timm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"  # the script calls python3, as on the GPU machine: this venv's
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"), "SMOKE": "1"}
    proc = subprocess.run(["bash", "bench/gpu_data_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = {p.stem: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert set(out) == {"env", "agree", "serve", "train"}
    assert "nvidia-dali installed: False" in out["env"] or "nvidia-dali installed: True" in out["env"]
    assert "0 check(s) failed" in out["agree"] and "FAIL" not in out["agree"]
    assert "| handler, cpu decode (fp32) | 4 |" in out["serve"]
    assert "| handler, tensor path (BYOC_GPU_DECODE=on) (fp32) | 4 |" in out["serve"]
    assert "| trainer --data-pipeline gpu |" in out["train"] and "gpu (--data-pipeline gpu)" in out["train"]
    assert "| trainer --data-pipeline cpu |" in out["train"]
