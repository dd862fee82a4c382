#!/usr/bin/env bash
# Raise this host's kernel settings to sysctl/99-fastc1k.conf (root). Prints before/after.
# Only the settings check.sh finds short are written: a limit already higher is left
# alone, which `sysctl -p` would not do. --persist also installs the file in /etc/sysctl.d/.
# FASTC1K_SYSCTL_ROOT writes another tree instead of /proc/sys (tests; no root needed then).
set -u
sysroot="${FASTC1K_SYSCTL_ROOT:-/proc/sys}"
here="$(cd "$(dirname "$0")" && pwd)"
conf="$here/99-fastc1k.conf"
persist=0
for arg in "$@"; do
  case "$arg" in
    --persist) persist=1 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "apply.sh: unknown argument $arg (only --persist)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || [ "$sysroot" != /proc/sys ] || { echo "apply.sh: needs root (try: sudo $0)" >&2; exit 2; }

echo "== before"
bash "$here/check.sh" "$conf"
failed=0
todo="$(bash "$here/check.sh" --todo "$conf")"
[ $? -le 1 ] || exit 2
while IFS=$'\t' read -r key want; do
  [ -n "$key" ] || continue
  # a container may not write host-only settings: say so and go on with the rest
  if printf '%s\n' "$want" >"$sysroot/${key//.//}" 2>/dev/null; then
    echo "set $key = $want"
  else
    echo "apply.sh: could not set $key (host only? set it on the host)" >&2
    failed=1
  fi
done <<<"$todo"

if [ "$persist" = 1 ] && [ "$sysroot" = /proc/sys ]; then
  install -m 0644 "$conf" /etc/sysctl.d/99-fastc1k.conf && echo "installed /etc/sysctl.d/99-fastc1k.conf"
fi
echo "== after"
bash "$here/check.sh" "$conf" || failed=1
exit "$failed"
