"""./build.sh push to a real registry on localhost (Debian's docker-registry),
then the pushed image pulled back by tag and run."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_BIN = "/usr/bin/docker-registry"


@pytest.fixture
def registry(tmp_path, local_server):
    if not os.path.exists(REGISTRY_BIN):
        message = f"{REGISTRY_BIN} missing (apt-get install docker-registry; ./build.sh test installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    config = tmp_path / "config.yml"

    def argv(port):
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
            f"http: {{addr: 127.0.0.1:{port}}}\n"
        )
        return [REGISTRY_BIN, "serve", str(config)]

    return local_server(argv, "docker-registry")


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
