#!/bin/sh
# Fuzz the instrumented C parser built by fuzz/build.sh: fuzz/run.sh SECONDS [libFuzzer flags]
set -eu
cd "$(dirname "$0")/.."
SECONDS_=${1:-60}; shift || true
mkdir -p fuzz/corpus fuzz/crashes
LD_PRELOAD="$PWD/fuzz/build/libfuzzer.so" PYTHONPATH=fuzz/build/src \
    exec ${PY:-python3} fuzz/fuzz_parser.py -max_total_time="$SECONDS_" -artifact_prefix=fuzz/crashes/ \
    "$@" fuzz/corpus
