# syntax=docker/dockerfile:1
# One image for every fmhl-ops process; the entrypoint is the `fmhl-ops` CLI:
#   docker run --rm -p 8000:8000 --env-file .env fmhl-ops serve --host 0.0.0.0 --port 8000
#   docker run --rm --env-file .env -e WORKER_METRICS_PORT=9100 fmhl-ops worker distribute_lead
#   docker run --rm --env-file .env fmhl-ops migrate
# Build: docker build -t fmhl-ops:dev .
# PYTHON_BASE: the official image by default; tests/e2e/test_image.py builds on a Debian 12 stand-in
# made with debootstrap (python3 3.11.2 at /usr/bin, `python` linked in /usr/local/bin) where no
# registry is reachable. Any base must be Debian-like: python with venv, groupadd/useradd.
# No HEALTHCHECK: Kubernetes probes check each role on its own port (see k8s/).

ARG PYTHON_BASE=python:3.11.10-slim-bookworm

# ---- build: dependencies and the package into a virtualenv ------------------------------------
FROM ${PYTHON_BASE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Runtime dependencies first, cached until a lock file changes. Every file pip downloads is checked
# against the sha256 in the lock (--require-hashes), the build tools included: setuptools and
# wheel come from requirements-build.lock and builds run without isolation, so no unpinned build
# backend is fetched (for our package and quantile-python, aioprometheus' one sdist-only
# dependency). Both locks are universal (uv pip compile --universal: every Python >=3.11, markers
# where a dependency applies to some Pythons only), so a rebuilt base never misses one.
# Regenerate them with uv (README, "Container image ...").
COPY requirements.lock requirements-build.lock ./
RUN pip install --require-hashes --only-binary :all: -r requirements-build.lock \
    && pip install --require-hashes --no-build-isolation -r requirements.lock

# The package itself: its dependencies are all in place, so --no-deps; then the build tools go.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY service ./service
COPY worker ./worker
COPY cli ./cli
RUN pip install --no-deps --no-build-isolation . \
    && pip uninstall -y setuptools wheel \
    && python -m compileall -q /opt/venv/lib

# ---- runtime: the virtualenv and the migrations, nothing else ---------------------------------
FROM ${PYTHON_BASE} AS runtime

LABEL org.opencontainers.image.title="fmhl-ops" \
      org.opencontainers.image.description="fmhl-ops service, workers and migrations" \
      org.opencontainers.image.source="https://github.com/fmhl/fmhl-ops"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SQL_DIR=/app/sql \
    LOG_FORMAT=json

RUN groupadd --system --gid 10001 fmhl \
    && useradd --system --uid 10001 --gid fmhl --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fmhl

COPY --from=build /opt/venv /opt/venv
COPY sql/ /app/sql/
WORKDIR /app

# Numeric, so Kubernetes can verify runAsNonRoot without resolving a name.
USER 10001:10001
EXPOSE 8000 9090 9100
ENTRYPOINT ["fmhl-ops"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
