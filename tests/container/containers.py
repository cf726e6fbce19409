"""Helpers for the container tests (imported by them; fixtures live in conftest.py)."""
import subprocess


def run_in(docker, image, *cmd, user=None, entrypoint=None, env=None, timeout=300):
    """docker run --rm IMAGE CMD...; returns the CompletedProcess (text)."""
    args = [docker, "run", "--rm"]
    if user:
        args += ["--user", user]
    if entrypoint is not None:
        args += ["--entrypoint", entrypoint]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    return subprocess.run(args + [image, *cmd], capture_output=True, text=True, timeout=timeout)
