# Bench only (bench/engine_candidates.py): our serving image plus LitServe, to weigh LitServe
# as the default engine (issue 21). Build context: bench/candidates/.
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt \
#     --build-arg LITSERVE_VERSION=0.2.19 -f bench/candidates/litserve.Dockerfile \
#     -t byoc-bench-litserve:cpu bench/candidates
ARG BASE=pytorch-byoc-serve:cpu
FROM ${BASE}
ARG LITSERVE_VERSION
USER root
# Wheels fetched first, so that the build date of each one pulled in can be read (pip shows no
# release dates); the install then reports what it added, with versions.
RUN --mount=type=secret,id=ca --mount=type=bind,source=pip_added.py,target=/tmp/pip_added.py \
    . /opt/byoc/pip-env.sh \
    && pip download -q -d /tmp/wheels "litserve==${LITSERVE_VERSION}" \
    && pip install -q --no-index --find-links /tmp/wheels --report /opt/byoc/bench-litserve-report.json \
       "litserve==${LITSERVE_VERSION}" \
    && python /tmp/pip_added.py /opt/byoc/bench-litserve-report.json /tmp/wheels /opt/byoc/bench-litserve-deps.txt \
    && rm -rf /tmp/wheels /root/.cache/pip
COPY litserve_server.py /opt/byoc/litserve_server.py
USER 1000:1000
CMD ["python", "/opt/byoc/litserve_server.py"]
