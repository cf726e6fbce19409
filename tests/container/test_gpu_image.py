"""The GPU flavour's images, checked on a machine without a GPU (marker gpu_image).

They come from BYOC_GPU_TRAIN_IMAGE / BYOC_GPU_SERVE_IMAGE (default the `gpu` tags that
`./build.sh build all --flavor gpu` gives). .ci/run builds them; elsewhere a missing GPU
image skips these tests (in CI it fails them). What needs a GPU is in README's "What only
a GPU machine can verify" and bench/gpu_check.sh.
"""
import subprocess

import pytest

from support.containers import run_in

pytestmark = pytest.mark.gpu_image

# The devel stage's toolchain stays there. g++ (with the Python headers) is in both flavours
# on purpose: torch.compile's inductor needs it at run time (docker/runtime/install.sh).
COMPILERS = ("nvcc", "javac")


def test_gpu_train_image_has_horovod_with_nccl_and_a_cuda_torch(docker, gpu_train_image):
    # nccl_built() is the NCCL version Horovod was compiled against: torch's own NCCL
    code = ("import torch, horovod.torch as hvd, sagemaker_training;"
            "major, minor, patch = torch.cuda.nccl.version();"
            "print(torch.version.cuda, hvd.nccl_built(), major * 10000 + minor * 100 + patch,"
            " hvd.cuda_built(), hvd.mpi_built(), hvd.gloo_built())")
    out = run_in(docker, gpu_train_image, "python", "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    cuda, hvd_nccl, torch_nccl, *built = out.stdout.split()
    assert cuda.startswith("13."), cuda
    assert int(hvd_nccl) > 0 and hvd_nccl == torch_nccl, (hvd_nccl, torch_nccl)
    assert built == ["True", "True", "True"]


def test_horovod_links_the_nccl_that_torch_brings(docker, gpu_train_image):
    # one NCCL in the image: Horovod's extension resolves libnccl.so.2 to the nvidia-nccl wheel
    out = run_in(docker, gpu_train_image, "bash", "-c",
                 "ldd $(python -c 'import horovod.torch.mpi_lib_v2 as m; print(m.__file__)') | grep nccl;"
                 " find / -xdev -name 'libnccl.so*' 2>/dev/null")
    assert out.returncode == 0, out.stderr
    found = out.stdout.split()
    assert any(p.endswith("/nvidia/nccl/lib/libnccl.so.2") for p in found), out.stdout
    assert not any(p.endswith("libnccl.so") for p in found), out.stdout   # the devel stage's link stays there


@pytest.mark.parametrize("which", ["train", "serve"])
def test_gpu_images_labelled_gpu_and_free_of_the_cuda_toolchain(docker, which, gpu_train_image, gpu_serve_image):
    image = gpu_train_image if which == "train" else gpu_serve_image
    flavor = subprocess.run([docker, "image", "inspect", "-f", '{{index .Config.Labels "io.pytorch-byoc.flavor"}}',
                             image], capture_output=True, text=True, check=True).stdout.strip()
    assert flavor == "gpu"
    probe = " ".join(f"command -v {c};" for c in COMPILERS)
    out = run_in(docker, image, "bash", "-c",
                 f"{probe} find / -xdev \\( -name nvcc -o -name cicc \\) 2>/dev/null; true",
                 entrypoint="")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"compiler left in {image}:\n{out.stdout}"
