#!/usr/bin/env bash
# make image: the fastc1k container image, built offline by podman.
#   1. a wheelhouse on the host: the sdist, the wheel built from it, and the wheels of its
#      runtime dependencies (the build has no package index inside the container);
#   2. the base: BASE if given; else the public python:X.Y-slim-bookworm when a registry
#      answers; else a local Debian base made from Debian's packages by mmdebstrap
#      (python3, python3-venv, tini), imported once as localhost/fastc1k-base:bookworm;
#   3. podman build of Dockerfile with --build-arg BASE, pip install --no-index inside.
# The wheel is built by the host's Python: the base's Python must be the same X.Y.
# A failed build prints its last lines and exits 2, leaving no image under IMAGE.
# Env: PY, IMAGE (fastc1k:latest), BASE, PODMAN ("podman --runtime runc"), DOCKERFILE,
# WORK (the build context, build/image), WHEELHOUSE (an existing one: step 1 skipped).
set -euo pipefail
PY="${PY:-python3}"
IMAGE="${IMAGE:-fastc1k:latest}"
BASE="${BASE:-}"
read -r -a PODMAN <<<"${PODMAN:-podman --runtime runc}"
src="$(cd "$(dirname "$0")/.." && pwd)"
work="${WORK:-$src/build/image}"
dockerfile="${DOCKERFILE:-$src/Dockerfile}"
LOCAL_BASE="localhost/fastc1k-base:bookworm"

step() { echo "== [$(($(date +%s) - t0)) s] $*"; }

fail() {  # fail WHAT LOGFILE: the log's last lines, then exit 2
  echo "make image: $1 failed; its last lines:" >&2
  tail -n 25 "$2" >&2
  exit 2
}

command -v podman >/dev/null || { echo "make image: podman is not installed (apt-get install podman runc)" >&2; exit 2; }
pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
rm -rf "$work" && mkdir -p "$work/wheelhouse"
log="$work/build.log"
t0=$(date +%s)

if [ -n "${WHEELHOUSE:-}" ]; then
  cp -r "$WHEELHOUSE"/. "$work/wheelhouse/" && : >"$log"
else
  step "wheelhouse: sdist, its wheel, the runtime dependencies (Python $pyver)"
  "$PY" -m build --sdist --outdir "$work/dist" "$src" >"$log" 2>&1 || fail "python -m build --sdist" "$log"
  "$PY" -m pip wheel -q --wheel-dir "$work/wheelhouse" "$work"/dist/fastc1k-*.tar.gz >>"$log" 2>&1 \
    || fail "pip wheel" "$log"
fi
cp -r "$src/sysctl" "$work/sysctl"

if [ -z "$BASE" ]; then
  public="docker.io/library/python:$pyver-slim-bookworm"
  if "${PODMAN[@]}" image exists "$public" || timeout 30 "${PODMAN[@]}" pull -q "$public" >/dev/null 2>&1; then
    BASE="$public"
  else
    BASE="$LOCAL_BASE"
    if ! "${PODMAN[@]}" image exists "$BASE"; then
      step "no registry answered: a local base from Debian's packages (mmdebstrap)"
      command -v mmdebstrap >/dev/null || { echo "make image: no registry and no mmdebstrap (apt-get install mmdebstrap)" >&2; exit 2; }
      mmdebstrap --variant=minbase --include=python3,python3-venv,tini \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' bookworm "$work/rootfs.tar" >>"$log" 2>&1 \
        || fail "mmdebstrap" "$log"
      "${PODMAN[@]}" import -q --change 'CMD ["python3"]' "$work/rootfs.tar" "$BASE" >>"$log" 2>&1 \
        || fail "podman import" "$log"
      rm -f "$work/rootfs.tar"
    fi
  fi
fi
basever="$("${PODMAN[@]}" run --rm --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 "$BASE" \
  python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>>"$log")" || fail "python3 in $BASE" "$log"
if [ "$basever" != "$pyver" ]; then
  echo "make image: $BASE has Python $basever, the wheel is for $pyver: set PY=python$basever" >&2
  exit 2
fi
step "base: $BASE (Python $basever)"

old="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
step "podman build -t $IMAGE"
# --layers=false --force-rm: a failed build leaves no intermediate images or containers.
# --format docker: the OCI format has no HEALTHCHECK.
"${PODMAN[@]}" build --format docker --layers=false --force-rm --pull=never \
  --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 \
  --build-arg BASE="$BASE" -t "$IMAGE" -f "$dockerfile" "$work" >>"$log" 2>&1 \
  || fail "podman build" "$log"
id="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE")"
if [ -n "$old" ] && [ "$old" != "$id" ]; then
  "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 || true   # the previous build, now untagged (kept if in use)
fi
size="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")"
step "$IMAGE: image ${id:0:12}, $((size / 1048576)) MiB, base $BASE"
