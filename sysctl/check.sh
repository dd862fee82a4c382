#!/usr/bin/env bash
# Compare this host's kernel settings with sysctl/99-fastc1k.conf, without root.
# Prints each setting, its current and recommended value, whether it is ok and what it caps.
# --todo prints only "key<TAB>value" for the settings that fall short (apply.sh reads it).
# Exit status: 0 when all are ok, 1 when some fall short of the recommendation, 2 on error.
# FASTC1K_SYSCTL_ROOT reads another tree instead of /proc/sys (tests).
set -u
sysroot="${FASTC1K_SYSCTL_ROOT:-/proc/sys}"
todo=0
if [ "${1:-}" = --todo ]; then todo=1; shift; fi
conf="${1:-$(dirname "$0")/99-fastc1k.conf}"
[ -r "$conf" ] || { echo "check.sh: cannot read $conf" >&2; exit 2; }

# /proc/sys directly: slim containers have no sysctl binary.
current() { tr -s ' \t' ' ' <"$sysroot/${1//.//}" 2>/dev/null; }

# satisfied RULE CURRENT WANTED: the rules are explained at the top of the conf file
satisfied() {
  local a b c d
  case "$1" in
    min) [ "$2" -ge "$3" ] ;;
    max) [ "$2" -le "$3" ] ;;
    eq) [ "$2" = "$3" ] ;;
    range) read -r a b <<<"$2"; read -r c d <<<"$3"; [ $((b - a)) -ge $((d - c)) ] ;;
    *) return 1 ;;
  esac
}

bad=0 rule="" caps=""
[ "$todo" = 1 ] || printf '%-30s %-14s %-14s %-4s %s\n' setting current recommended "" caps
while IFS= read -r line; do
  case "$line" in
    "# ["*"]"*) rule="${line#\# [}"; rule="${rule%%]*}"; caps="${line#*] }" ;;
    [a-z]*=*)
      key="$(echo "${line%%=*}" | tr -d ' ')"
      want="$(echo "${line#*=}" | sed 's/^ *//; s/ *$//' | tr -s ' \t' ' ')"
      have="$(current "$key")"
      if [ -z "$have" ]; then
        verdict="??"
      elif satisfied "$rule" "$have" "$want" 2>/dev/null; then
        verdict="ok"
      else
        verdict="FIX"; bad=1
      fi
      if [ "$todo" = 1 ]; then
        [ "$verdict" = ok ] || printf '%s\t%s\n' "$key" "$want"
      else
        printf '%-30s %-14s %-14s %-4s %s\n' "$key" "${have:-unreadable}" "$want" "$verdict" "$caps"
      fi
      rule="" caps="" ;;
  esac
done <"$conf"

[ "$todo" = 1 ] && exit "$bad"
printf '%-30s %-14s %-14s %-4s %s\n' "ulimit -n (soft/hard)" "$(ulimit -Sn)/$(ulimit -Hn)" "fs.nr_open" "" \
  "connections per process: raise with ulimit -n, limits.conf, systemd LimitNOFILE or docker --ulimit"
[ "$bad" = 0 ] || echo "some settings fall short of the recommendation: sudo $(dirname "$0")/apply.sh"
exit "$bad"
