#!/bin/sh
# Build a copy of fastc1k._core instrumented for coverage-guided fuzzing (clang:
# -fsanitize=fuzzer-no-link for libFuzzer's coverage, UBSan in trap mode) into
# fuzz/build/src, leaving the in-place build of the tree untouched. Needs clang.
set -eu
cd "$(dirname "$0")/.."
OUT=fuzz/build
rm -rf "$OUT" && mkdir -p "$OUT"
cp -r src setup.py pyproject.toml README.md "$OUT"/
find "$OUT/src" -name '*.so' -delete
cd "$OUT"
# UBSan traps (no runtime to preload): a sanitizer runtime loaded ahead of libFuzzer would
# take over its coverage hooks and blind the fuzzer. ASan runs in `make test-asan`.
CC=clang LDSHARED="clang -shared" CFLAGS="-fsanitize=fuzzer-no-link -fsanitize=undefined -fsanitize-trap=undefined" \
    FASTC1K_ONLY=fastc1k._core ${PY:-python3} setup.py -q build_ext --inplace
# libFuzzer as a shared library, preloaded by fuzz/run.sh so that the extension's coverage
# hooks resolve to it (atheris then uses it instead of its own copy)
clang -shared -o libfuzzer.so -Wl,--whole-archive "$(clang -print-file-name=libclang_rt.fuzzer_no_main-x86_64.a)" \
    -Wl,--no-whole-archive -lstdc++ -lpthread -ldl -lm
