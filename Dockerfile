# syntax=docker/dockerfile:1
#
# One image, three roles chosen by the command:
#   docker run IMAGE                                  # the daemon: oa-exporter run --rules /etc/oa-exporter/rules/
#   docker run IMAGE worker --queue training          # a Celery training worker (OA_DISPATCHER=celery)
#   docker run IMAGE worker --queue inference         # a Celery inference worker
#   docker run -p 10100:10100 IMAGE demo              # the demo, no infrastructure needed
#
# Base image: statsforecast engines, Celery (Redis and SQLAlchemy transports), S3 and remote write; no torch.
# With torch (neuralforecast, darts, mlforecast, sklearn): --build-arg EXTRAS=all. torch's CPU wheel is fetched
# first from PyTorch's index, so pip never pulls the multi-GB CUDA build; for GPU inference workers pick a CUDA
# build instead, e.g. --build-arg TORCH_VARIANT=cu126 (x86_64).
#
# HEALTHCHECK: the daemon must answer GET /-/healthy; a worker serves no HTTP and passes (see
# deploy/docker/healthcheck.py). Runs as uid/gid 10001; /var/lib/oa-exporter is its writable home (models,
# remote-write queue).

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: every wheel the image needs, built once --------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=""
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY oa_exporter/ oa_exporter/
RUN if [ -n "$EXTRAS" ]; then \
        pip wheel --no-deps --wheel-dir /wheels --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" \
        && echo "torch==${TORCH_VERSION}+${TORCH_VARIANT}" > /tmp/constraints.txt \
        && spec=".[${EXTRAS}]"; \
    else \
        : > /tmp/constraints.txt && spec="."; \
    fi \
    && pip wheel --wheel-dir /wheels --find-links /wheels --constraint /tmp/constraints.txt "$spec"

# -- runtime: the wheels installed on a clean slim image, no build tools -------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="oa-exporter" \
      org.opencontainers.image.description="OpenAnomaly: forecasting and anomaly detection for Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    OA_ARTIFACT_DIR=/var/lib/oa-exporter/models \
    OA_REMOTE_WRITE_QUEUE_DIR=/var/lib/oa-exporter/remote-write \
    NUMBA_CACHE_DIR=/tmp/numba-cache
RUN groupadd --system --gid 10001 oa \
    && useradd --system --uid 10001 --gid oa --home-dir /var/lib/oa-exporter --shell /usr/sbin/nologin oa \
    && mkdir -p /var/lib/oa-exporter /etc/oa-exporter/rules \
    && chown oa:oa /var/lib/oa-exporter
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl \
    && pip check
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/oa-healthcheck
COPY rules/anomaly/ /usr/share/oa-exporter/rules/
WORKDIR /var/lib/oa-exporter
USER 10001:10001
EXPOSE 10100
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["oa-healthcheck"]
ENTRYPOINT ["oa-exporter"]
CMD ["run", "--rules", "/etc/oa-exporter/rules/"]
