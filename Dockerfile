# One image for the operator and the per-pod sensor: `trainguard operator ...`, `trainguard sensor ...`.
#
# - python:3.11-slim pinned by version (pin the digest too when publishing: python:3.11.11-slim-bookworm@sha256:...).
# - The project and its pinned dependency ranges are installed from pyproject.toml with pip, in a
#   builder stage, into a virtualenv that is copied over; no compiler or pip cache in the final image.
# - Runs as a numeric non-root user (65532), so `runAsNonRoot: true` can verify it.
# - Read-only root filesystem friendly: nothing is written at run time (no .pyc: PYTHONDONTWRITEBYTECODE;
#   the bytecode is compiled at build time), HOME and TMPDIR point at /tmp for an emptyDir if anything
#   ever needs one. The sensor writes only with --record, to a path you mount.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/trainguard
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/trainguard/bin/pip install --no-compile "pip==24.3.1" \
 && /opt/trainguard/bin/pip install --no-compile . \
 && /opt/trainguard/bin/python -m compileall -q /opt/trainguard

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="trainguard" \
      org.opencontainers.image.description="Operator and per-pod sensor keeping AI-agent training jobs inside their declared GPU and network behaviour" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/trainguard /opt/trainguard
ENV PATH=/opt/trainguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 65532:65532
EXPOSE 9400
ENTRYPOINT ["trainguard"]
CMD ["--help"]
