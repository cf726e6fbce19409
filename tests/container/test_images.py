"""Smoke tests of the built images: what SageMaker and a user rely on."""
import json
import subprocess

import pytest

from support.containers import run_in


def inspect(docker, image):
    out = subprocess.run([docker, "image", "inspect", image], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


# ---------------------------------------------------------------- train image

def test_train_is_the_sagemaker_entry(docker, train_image):
    out = run_in(docker, train_image, "train", "--help")
    assert out.returncode == 0, out.stderr
    assert "SAGEMAKER_PROGRAM" in out.stdout


def test_train_image_has_torch_horovod_and_the_toolkits(docker, train_image, flavor):
    code = (
        "import torch, torchvision, timm, sagemaker_training, horovod.torch as hvd;"
        "print(torch.__version__, torchvision.__version__, bool(hvd.mpi_built()), bool(hvd.gloo_built()), bool(hvd.nccl_built()))"
    )
    out = run_in(docker, train_image, "python", "-c", code)
    assert out.returncode == 0, out.stderr
    torch_v, tv_v, mpi, gloo, nccl = out.stdout.split()
    assert torch_v.startswith("2.14.1") and tv_v.startswith("0.29.1")
    assert (mpi, gloo) == ("True", "True")
    assert nccl == ("True" if flavor == "gpu" else "False")


def test_train_image_keeps_sagemaker_training_usable_without_its_unused_dependencies(docker, train_image):
    # user scripts import these modules; scipy (only its encoders import it) and gevent
    # (nothing does) are left out to keep the image small
    code = ("import importlib.util as u, sagemaker_training.environment, sagemaker_training.entry_point,"
            " sagemaker_training.modules, sagemaker_training.mpi;"
            "print(sagemaker_training.environment.Environment is not None,"
            " [m for m in ('scipy', 'gevent') if u.find_spec(m)])")
    out = run_in(docker, train_image, "python", "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "[]"], out.stdout


def test_horovod_allreduce_over_mpi_and_gloo(docker, train_image):
    # two ranks in one container: the collective really runs, over each controller.
    # Each rank writes its own file: mpirun forwards the ranks' stdout in chunks that
    # can interleave mid-line, so stdout is no place to read per-rank results.
    script = ("import torch, horovod.torch as hvd; hvd.init();"
              "t = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum);"
              "open(f'/tmp/rank-{hvd.rank()}', 'w').write(f'rank {hvd.rank()} of {hvd.size()} sum {int(t.item())}\\n')")
    want = ["rank 0 of 2 sum 3", "rank 1 of 2 sum 3"]
    for launcher in ("mpirun -np 2 --oversubscribe", "horovodrun --gloo -np 2 -H localhost:2"):
        out = run_in(docker, train_image, "bash", "-c",
                     f"{launcher} python -c \"{script}\" && cat /tmp/rank-0 /tmp/rank-1", timeout=180)
        assert out.returncode == 0, f"{launcher}: {out.stderr[-2000:]}"
        assert [l for l in out.stdout.splitlines() if l.startswith("rank ")][-2:] == want, out.stdout[-2000:]


def test_train_image_has_mpi_and_ssh_without_baked_keys(docker, train_image):
    out = run_in(docker, train_image, "mpirun", "--version")
    assert out.returncode == 0 and "Open MPI" in out.stdout
    # no host keys and no user keys in the image: each container makes its own
    keys = run_in(docker, train_image, "bash", "-c",
                  "ls /etc/ssh/ssh_host_* /root/.ssh/id_* 2>/dev/null; "
                  "grep -rl 'PRIVATE KEY' /etc /root /opt/ml /home 2>/dev/null | grep -v '^/etc/ssl/' || true")
    assert keys.stdout.strip() == ""
    sshd = run_in(docker, train_image, "bash", "-c", "ssh-keygen -A >/dev/null && /usr/sbin/sshd -t && echo ok")
    assert sshd.stdout.strip() == "ok", sshd.stderr


# ---------------------------------------------------------------- serve image

def test_serve_image_has_java_17_and_torchserve_0_12(docker, serve_image):
    java = run_in(docker, serve_image, "java", "-version")
    assert java.returncode == 0 and 'version "17' in java.stderr
    ts = run_in(docker, serve_image, "torchserve", "--version")
    assert ts.returncode == 0 and "0.12.0" in ts.stdout
    imports = run_in(docker, serve_image, "python", "-c",
                     "import torch, yaml, sagemaker_inference, serve.handler, handlers.image_classifier")
    assert imports.returncode == 0, imports.stderr


def test_serve_image_has_no_trainer(docker, serve_image):
    """Serving needs byoc (the model artifact), serve and handlers; not the trainer's package."""
    ours = run_in(docker, serve_image, "python", "-c", "import byoc.artifact, serve, handlers.multihead")
    assert ours.returncode == 0, ours.stderr
    trainer = run_in(docker, serve_image, "python", "-c", "import train")
    assert trainer.returncode != 0 and "No module named 'train'" in trainer.stderr, trainer.stdout + trainer.stderr
    assert run_in(docker, serve_image, "sh", "-c", "command -v train").returncode != 0


def test_serve_java_is_a_runtime_without_compiler_or_tools(docker, serve_image):
    # linked in the java stage without javac, the Graal JIT, jshell, jlink, jdb, headers
    out = run_in(docker, serve_image, "bash", "-c",
                 "java --list-modules; for p in /opt/java/include /usr/lib/jvm; do [ -e $p ] && echo present: $p; done;"
                 " command -v javac jshell jlink jdb || true", entrypoint="")
    modules = {line.split("@")[0] for line in out.stdout.splitlines() if "@" in line}
    assert {"java.base", "java.management", "jdk.unsupported", "java.naming"} <= modules, modules
    assert not modules & {"jdk.compiler", "java.compiler", "jdk.internal.vm.compiler", "jdk.jshell", "jdk.jlink"}
    assert "present:" not in out.stdout and "bin/" not in out.stdout, out.stdout[-1000:]


def test_serve_runs_as_non_root(docker, serve_image):
    out = run_in(docker, serve_image, "id")
    assert out.returncode == 0
    assert "uid=0(" not in out.stdout and "model-server" in out.stdout


def test_serve_image_contract_in_its_config(docker, serve_image):
    config = inspect(docker, serve_image)["Config"]
    labels = config["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert list(config["ExposedPorts"]) == ["8080/tcp"]
    assert config["Cmd"] == ["serve"]


# ---------------------------------------------------------------- both

@pytest.mark.parametrize("which", ["train", "serve"])
def test_oci_labels_and_environment(docker, which, train_image, serve_image, flavor):
    config = inspect(docker, train_image if which == "train" else serve_image)["Config"]
    labels = config["Labels"]
    for key in ("title", "version", "revision", "source", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["io.pytorch-byoc.flavor"] == flavor
    assert "PYTHONUNBUFFERED=1" in config["Env"]


def test_the_images_share_the_runtime_layers(docker, train_image, serve_image):
    train_layers = inspect(docker, train_image)["RootFS"]["Layers"]
    serve_layers = inspect(docker, serve_image)["RootFS"]["Layers"]
    shared = 0
    for a, b in zip(train_layers, serve_layers):
        if a != b:
            break
        shared += 1
    # base + the runtime step (python, torch) at least
    assert shared >= 2
    sizes = subprocess.run([docker, "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", serve_image],
                           capture_output=True, text=True, check=True).stdout
    assert "runtime/install.sh" in sizes


@pytest.mark.parametrize("which", ["train", "serve"])
def test_no_secret_in_any_layer(docker, which, train_image, serve_image):
    image = train_image if which == "train" else serve_image
    history = subprocess.run([docker, "history", "--no-trunc", image],
                             capture_output=True, text=True, check=True).stdout
    assert "BEGIN CERTIFICATE" not in history and "PIP_CERT=/" not in history
    out = run_in(docker, image, "bash", "-c",
                 "ls /run/secrets 2>/dev/null; env | grep -iE 'aws_secret|aws_access|token|password' || true",
                 entrypoint="")
    assert out.stdout.strip() == ""
