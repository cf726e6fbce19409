# pytorch-byoc training image: `docker run IMAGE train` runs a SageMaker
# training job (script mode or the built-in trainer). Build it with
# ./build.sh build train (see README); every version is pinned.
#
# No "# syntax=" line on purpose: it would pull a frontend image from a registry.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---- runtime: the same instructions and inputs as in serve.Dockerfile, so
# both images share these (heavy) layers on disk and in ECR pulls.
FROM ${BASE_IMAGE} AS runtime
ARG TORCH_INDEX_URL=
ENV PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,source=docker/runtime,target=/tmp/runtime \
    --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,id=byoc-pip \
    bash /tmp/runtime/install.sh

# ---- devel: compilers and headers; builds the wheels that need them
# (Horovod, sagemaker-training's C extension, apex) so that none of the
# toolchain reaches the final image.
FROM runtime AS devel
ARG FLAVOR=gpu
ARG WITH_APEX=0
RUN --mount=type=bind,source=docker/train,target=/tmp/train \
    --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,id=byoc-pip \
    bash /tmp/train/build-wheels.sh /wheels
# mpi4py for SageMaker SDK v3's MPI driver, which runs `python -m mpi4py <script>`
# (sagemaker-train's mpi_utils.get_mpirun_command); built against this OpenMPI.
RUN --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,id=byoc-pip \
    . /opt/byoc/pip-env.sh && pip wheel -q --no-deps -w /wheels "mpi4py==4.1.2"

# ---- the training image
FROM runtime
ARG FLAVOR=gpu
RUN --mount=type=bind,source=docker/train,target=/tmp/train \
    --mount=type=bind,from=devel,source=/wheels,target=/tmp/wheels \
    --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,id=byoc-pip \
    bash /tmp/train/install.sh /tmp/wheels
COPY pyproject.toml /tmp/src/
COPY train /tmp/src/train
COPY serve /tmp/src/serve
COPY handlers /tmp/src/handlers
COPY byoc /tmp/src/byoc
RUN --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,id=byoc-pip \
    . /opt/byoc/pip-env.sh && pip install -q --no-deps /tmp/src && rm -rf /tmp/src
ENV OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORKDIR /opt/ml/code
# tini reaps zombies; `train` itself relays SIGTERM to its ranks.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["train"]

# Last: the version and git sha change with every commit, and a build argument
# invalidates every step after it; here they only touch the metadata.
ARG VERSION=dev
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="pytorch-byoc-train" \
      org.opencontainers.image.description="PyTorch training image for Amazon SageMaker: script mode, built-in image classifier, torchrun/MPI/Horovod" \
      org.opencontainers.image.source="https://github.com/pytorch-byoc/pytorch-byoc" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      io.pytorch-byoc.flavor="${FLAVOR}"
