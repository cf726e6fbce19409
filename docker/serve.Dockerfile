# pytorch-byoc serving image: `docker run IMAGE serve` answers SageMaker's
# GET /ping and POST /invocations on port 8080 (or SAGEMAKER_BIND_TO_PORT), and the
# multi-model API with SAGEMAKER_MULTI_MODEL=true, with our python engine (TorchServe
# 0.12 with BYOC_SERVING_ENGINE=torchserve). Build it with ./build.sh build serve (see README).
#
# No "# syntax=" line on purpose: it would pull a frontend image from a registry.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---- runtime: the same instructions and inputs as in train.Dockerfile, so
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

# ---- java: the Java runtime for the torchserve engine, linked from a JDK that
# stays in this stage (no compiler, no tools).
FROM runtime AS java
RUN --mount=type=bind,source=docker/serve/java-runtime.sh,target=/tmp/java-runtime.sh \
    bash /tmp/java-runtime.sh /opt/java

# ---- the serving image
FROM runtime
ARG FLAVOR=gpu
COPY --from=java /opt/java /opt/java
ENV JAVA_HOME=/opt/java \
    PATH=/opt/java/bin:$PATH
RUN --mount=type=bind,source=docker/serve,target=/tmp/serve \
    --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,id=byoc-pip \
    bash /tmp/serve/install.sh
# The project without train/: serving rebuilds the network from byoc.artifact.
# The project's `train` command goes too (its package is not here).
COPY pyproject.toml /tmp/src/
COPY serve /tmp/src/serve
COPY handlers /tmp/src/handlers
COPY byoc /tmp/src/byoc
RUN --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,id=byoc-pip \
    . /opt/byoc/pip-env.sh && pip install -q --no-deps /tmp/src && rm -rf /tmp/src \
    && rm /opt/venv/bin/train
ENV TEMP=/home/model-server/tmp
USER 1000:1000
WORKDIR /home/model-server
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["serve"]

# Last: the version and git sha change with every commit, and a build argument
# invalidates every step after it; here they only touch the metadata.
ARG VERSION=dev
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="pytorch-byoc-serve" \
      org.opencontainers.image.description="PyTorch serving image for Amazon SageMaker endpoints, multi-model endpoints, batch transform, serverless and asynchronous inference" \
      org.opencontainers.image.source="https://github.com/pytorch-byoc/pytorch-byoc" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      io.pytorch-byoc.flavor="${FLAVOR}" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.multi-models=true
