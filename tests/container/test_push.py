"""./build.sh push to a real registry on localhost (Debian's docker-registry),
then the pushed image pulled back by digest-free tag and run."""
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from containers import free_port

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_BIN = "/usr/bin/docker-registry"


@pytest.fixture
def registry(tmp_path):
    if not os.path.exists(REGISTRY_BIN):
        message = f"{REGISTRY_BIN} missing (apt-get install docker-registry; ./build.sh test installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("docker-registry did not start")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_push_both_images_then_pull_and_run(docker, train_image, serve_image, flavor, registry):
    tag = train_image.split(":", 1)[1]
    assert serve_image.endswith(":" + tag)
    env = dict(os.environ, DOCKER=docker)
    push = subprocess.run([str(ROOT / "build.sh"), "push", "all", "--flavor", flavor, "--tag", tag,
                           "--registry", registry], capture_output=True, text=True, env=env, timeout=1800)
    assert push.returncode == 0, push.stderr[-2000:]
    # the serve image reuses the runtime layers that the train push uploaded
    assert "Layer already exists" in push.stdout

    tags = subprocess.run([str(ROOT / "build.sh"), "tags", "serve", "--flavor", flavor],
                          capture_output=True, text=True, check=True).stdout.split()
    remote = f"{registry}/{tags[-1]}"                      # ...:latest[-cpu]
    subprocess.run([docker, "rmi", remote], capture_output=True, check=True)
    pulled = subprocess.run([docker, "pull", remote], capture_output=True, text=True, timeout=600)
    assert pulled.returncode == 0, pulled.stderr
    ran = subprocess.run([docker, "run", "--rm", remote, "torchserve", "--version"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "0.12.0" in ran.stdout

    # clean up the registry tags from the local image store
    refs = subprocess.run([docker, "images", "--format", "{{.Repository}}:{{.Tag}}"],
                          capture_output=True, text=True).stdout.split()
    mine = [r for r in refs if r.startswith(registry + "/")]
    if mine:
        subprocess.run([docker, "rmi", *mine], capture_output=True)
