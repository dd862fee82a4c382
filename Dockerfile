# syntax=docker/dockerfile:1
# fastc1k in a container: the wheel built from the sdist, installed offline into a venv,
# tini as PID 1, a non-root user. Built by `make image` (scripts/image.sh), which prepares
# the build context build/image/ (wheelhouse/: the wheel and its dependencies' wheels,
# made by the host's Python; sysctl/) and picks BASE: the public Python image when a
# registry answers, else a Debian base made by mmdebstrap. By hand:
#
#   make image                                    # podman; prints the image id and size
#   docker build --build-arg BASE=python:3.11-slim-bookworm -t fastc1k -f Dockerfile build/image
#   podman run --rm -p 127.0.0.1:8080:8080 --ulimit nofile=19000:19000 \
#       --sysctl net.core.somaxconn=8192 fastc1k
#
# BASE's Python must be the wheelhouse's (the C extension is built for one CPython).
# The fd limit: every connection is a file descriptor, and a Dockerfile cannot raise
# RLIMIT_NOFILE: pass `--ulimit nofile=N:N` (docker-compose.yml: `ulimits: nofile`), at
# most the host's hard limit. `python -m fastc1k.doctor` inside prints what it allows.

ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
# tini: the local base has it; the public image gets it from Debian
# hadolint ignore=DL3008
RUN (command -v tini >/dev/null \
     || (apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*)) \
    && groupadd --system --gid 10001 fastc1k \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fastc1k
COPY wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/fastc1k \
    && /opt/fastc1k/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse /tmp/wheelhouse/fastc1k-*.whl \
    && rm -rf /tmp/wheelhouse \
    && /opt/fastc1k/bin/python -c "import fastc1k; assert fastc1k.c_available(), 'C engine missing from the wheel'"
COPY sysctl /opt/fastc1k/sysctl
ENV PATH=/opt/fastc1k/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
# no curl in either base: the health check is Python's own HTTP client
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/api/health', timeout=2).status != 200)"]
# tini reaps children and forwards SIGTERM to the master, which drains its workers
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "fastc1k.serve", "--host", "0.0.0.0", "--port", "8080"]
