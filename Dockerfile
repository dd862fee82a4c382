# syntax=docker/dockerfile:1
# fastc1k in a container: the wheel is built from the sdist in a builder stage, then
# installed into a slim runtime with tini as PID 1 and a non-root user.
# Not exercised on the development machines (no Docker engine there): hadolint and
# tests/test_packaging.py check it statically.
#
#   docker build -t fastc1k .
#   docker run --rm -p 8080:8080 --ulimit nofile=1048576:1048576 \
#       --sysctl net.core.somaxconn=65535 fastc1k
#
# The fd limit: every connection is a file descriptor, and a Dockerfile cannot raise
# RLIMIT_NOFILE: pass `--ulimit nofile=N:N` (docker-compose.yml: `ulimits: nofile`), at
# most the host's fs.nr_open. `python -m fastc1k.doctor` inside the container prints
# what the limits it got allow.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md MANIFEST.in Makefile ./
COPY src ./src
COPY tests ./tests
COPY bench ./bench
COPY scripts ./scripts
COPY sysctl ./sysctl
# The sdist, then the wheel built from it; then wheels of the dependencies, so that
# the runtime stage installs offline and needs no compiler.
RUN pip install --no-cache-dir build==1.6.1 \
    && python -m build --outdir /dist . \
    && pip wheel --no-cache-dir --wheel-dir /dist /dist/fastc1k-*.whl

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fastc1k \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fastc1k
COPY --from=builder /dist /tmp/dist
RUN pip install --no-cache-dir --no-index --find-links /tmp/dist /tmp/dist/fastc1k-*.whl \
    && rm -rf /tmp/dist \
    && python -c "import fastc1k; assert fastc1k.c_available(), 'C engine missing from the wheel'"
COPY sysctl /opt/fastc1k/sysctl
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
# slim has no curl: the health check is Python's own HTTP client
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/api/health', timeout=2).status != 200)"]
# tini reaps children and forwards SIGTERM to the master, which drains its workers
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "fastc1k.serve", "--host", "0.0.0.0", "--port", "8080"]
