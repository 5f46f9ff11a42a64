# Two images from one file, both unbuilt here (no Docker engine on these machines; every command below was run
# by hand in a python:3.11 environment: the venv, the pip installs with the constraints, compileall):
#
#   docker build --target sensor   -t ghcr.io/trainguard/trainguard-sensor:0.1.0 .   # trainguard sensor ...
#   docker build --target operator -t ghcr.io/trainguard/trainguard:0.1.0 .          # trainguard run ...
#
# - The sensor image carries neither kopf nor the Kubernetes client (the base install); the operator image adds
#   the `operator` extra. Both install the exact versions of constraints.txt, the ones CI tests.
# - python:3.11-slim pinned by version (pin the digest too when publishing: python:3.11.11-slim-bookworm@sha256:...).
# - Each venv is built at its final path (/opt/trainguard) in its own stage and copied over whole: its scripts'
#   shebangs stay right; no compiler or pip cache in the final image.
# - Runs as a numeric non-root user (65532, the sensor's default uid), so that `runAsNonRoot: true` can verify it.
# - Read-only root filesystem friendly: nothing is written at run time (no .pyc: PYTHONDONTWRITEBYTECODE; the
#   bytecode is compiled at build time); HOME and TMPDIR point at /tmp for an emptyDir if anything needs one.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build-sensor
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY operator ./operator
RUN python -m venv /opt/trainguard \
 && /opt/trainguard/bin/pip install --no-compile -c constraints.txt . \
 && /opt/trainguard/bin/python -m compileall -q /opt/trainguard

FROM ${PYTHON_IMAGE} AS build-operator
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY operator ./operator
RUN python -m venv /opt/trainguard \
 && /opt/trainguard/bin/pip install --no-compile -c constraints.txt '.[operator]' \
 && /opt/trainguard/bin/python -m compileall -q /opt/trainguard

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/trainguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 65532:65532
ENTRYPOINT ["trainguard"]

FROM runtime AS sensor
LABEL org.opencontainers.image.title="trainguard-sensor" \
      org.opencontainers.image.description="The per-pod sensor of trainguard (native sidecar)"
COPY --from=build-sensor /opt/trainguard /opt/trainguard
EXPOSE 9400
CMD ["sensor"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="trainguard" \
      org.opencontainers.image.description="The trainguard operator: AgentTrainingJobs in, guarded Jobs out"
COPY --from=build-operator /opt/trainguard /opt/trainguard
EXPOSE 8080
CMD ["run"]
