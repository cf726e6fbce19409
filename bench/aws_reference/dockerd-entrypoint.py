"""Entrypoint of AWS's PyTorch inference DLC: `serve` starts the SageMaker
toolkit (TorchServe behind it); anything else runs as a command."""
import shlex
import subprocess
import sys

if sys.argv[1:2] == ["serve"]:
    from sagemaker_pytorch_serving_container import serving

    serving.main()
else:
    subprocess.check_call(shlex.split(" ".join(sys.argv[1:])))

# As in the DLC: serving.main() returns once TorchServe is up; keep PID 1 alive.
subprocess.call(["tail", "-f", "/dev/null"])
