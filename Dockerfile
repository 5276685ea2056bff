# celery-exporter: multi-stage build. The first stage builds a virtual environment with the
# exporter and its dependencies; the runtime stage copies only that venv onto the same base,
# so no compiler, pip cache or source tree ends up in the final image.
#
#   docker build -t celery-exporter --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm -p 9808:9808 -e CELERY_BROKER_URL=redis://redis:6379/0 celery-exporter
#
# The dependencies are those of requirements.lock (every version pinned, every file's sha256
# listed; `bash .ci/lock` writes it), installed with pip's hash checking; the exporter itself
# is this source tree. BASE_IMAGE must provide python3 with the venv module (python:3.X-slim,
# or a locally built Debian base). For builds without access to a package index, put the
# exporter's wheel and the files of every locked dependency in .wheels/ in the build context
# (.ci/build-image does): they are then used instead of an index, with the same hash checking.
ARG BASE_IMAGE=python:3.12-slim
# A copy of celery_exporter.__version__, for the labels (`python .ci/version.py X.Y.Z` writes
# it); the build stops if the installed exporter says otherwise.
ARG VERSION=1.0.0
# The source revision, for the labels and celery_exporter_build_info's revision label.
ARG REVISION=unknown

FROM ${BASE_IMAGE} AS build
ARG VERSION
ARG REVISION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . /src
# With .wheels/ the exporter's wheel was built beside the revision the build passes; without
# it, the package records REVISION (the context has no .git), so labels and metric agree.
RUN python3 -m venv /opt/venv \
    && if [ -d /src/.wheels ]; then \
         /opt/venv/bin/pip install --require-hashes --no-index --find-links /src/.wheels -r /src/requirements.lock \
         && /opt/venv/bin/pip install --no-deps --no-index --find-links /src/.wheels "celery-events-exporter==${VERSION}"; \
       else \
         /opt/venv/bin/pip install --require-hashes -r /src/requirements.lock \
         && CELERY_EXPORTER_BUILD_REVISION="${REVISION}" /opt/venv/bin/pip install --no-deps /src; \
       fi \
    && /opt/venv/bin/pip check \
    && said="$(/opt/venv/bin/celery-exporter --version)" \
    && if [ "$said" != "celery-exporter, version ${VERSION} (revision ${REVISION})" ]; then \
         echo "the installed exporter says '$said', not version ${VERSION} (revision ${REVISION})"; exit 1; \
       fi

FROM ${BASE_IMAGE}
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="celery-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Celery: task and worker metrics from Celery events" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.authors="The celery-exporter authors" \
      org.opencontainers.image.source="https://github.com/celery-exporter/celery-exporter" \
      org.opencontainers.image.url="https://github.com/celery-exporter/celery-exporter" \
      org.opencontainers.image.documentation="https://celery-exporter.github.io/celery-exporter/"
COPY --from=build /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CELERY_EXPORTER_LISTEN_ADDRESS=0.0.0.0 \
    CELERY_EXPORTER_PORT=9808
# numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup; nothing is
# written at run time, so the root filesystem may be read-only (docker run --read-only)
USER 65534:65534
EXPOSE 9808
# The exporter's own check: it reads the same CELERY_EXPORTER_* variables as the exporter,
# so it asks over HTTPS when the web config turns TLS on (and expects its certificate).
# Configure the container with those variables rather than with flags for it to follow.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["celery-exporter", "healthcheck", "--timeout", "4s"]
ENTRYPOINT ["celery-exporter"]
