# celery-exporter: multi-stage build. The first stage builds a virtual environment with the
# exporter and its dependencies; the runtime stage copies only that venv onto the same base,
# so no compiler, pip cache or source tree ends up in the final image.
#
#   docker build -t celery-exporter .
#   docker run --rm -p 9808:9808 -e CELERY_BROKER_URL=redis://redis:6379/0 celery-exporter
#
# BASE_IMAGE must provide python3 with the venv module (python:3.X-slim, or a locally built
# Debian base). For builds without access to a package index, put the wheels of every
# dependency in .wheels/ in the build context: they are then used instead of an index.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG VERSION=0.1.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . /src
# with .wheels/ (the project's wheel and its dependencies): offline, from those wheels only
RUN python3 -m venv /opt/venv \
    && if [ -d /src/.wheels ]; then \
         /opt/venv/bin/pip install --no-index --find-links /src/.wheels "celery-exporter==${VERSION}"; \
       else \
         /opt/venv/bin/pip install /src; \
       fi \
    && /opt/venv/bin/celery-exporter --version

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="celery-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Celery: task and worker metrics from Celery events" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.documentation="README.md in the source repository"
COPY --from=build /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CELERY_EXPORTER_LISTEN_ADDRESS=0.0.0.0 \
    CELERY_EXPORTER_PORT=9808
# numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup
USER 65534:65534
EXPOSE 9808
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/-/healthy' % os.environ.get('CELERY_EXPORTER_PORT', '9808'), timeout=4)"]
ENTRYPOINT ["celery-exporter"]
