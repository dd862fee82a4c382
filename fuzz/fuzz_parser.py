"""Coverage-guided fuzzing of the C parser, `fastc1k._core.parse_request` (atheris).

Each input picks a configuration (first byte) and is parsed by the C parser; the result
must be a documented status, and it must equal the pure parser's (the same contract as
tests/test_differential.py). A crash, a sanitizer report or a disagreement stops the run
and leaves the input in crash-*.

Coverage: atheris instruments the pure parser's Python; for coverage of the C code as
well, build the instrumented copy first (fuzz/build.sh: clang, -fsanitize=fuzzer-no-link
plus ASan/UBSan, into fuzz/build/) and run through fuzz/run.sh, which loads it.

    python fuzz/fuzz_parser.py -max_total_time=60 fuzz/corpus    # quick, any build
    make fuzz FUZZ_SECONDS=1800                                   # instrumented, long run
"""
from __future__ import annotations

import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))   # hostile_vectors (seeds)
import atheris  # noqa: E402

with atheris.instrument_imports(include=["fastc1k._core_py"]):
    from fastc1k import _core_py  # noqa: E402
from fastc1k import ServerConfig, _core  # noqa: E402

CONFIGS = [ServerConfig(),
           ServerConfig(max_request_line=1024, max_header_bytes=2048, max_headers=20, max_body=4096,
                        buffer_size=4096),
           ServerConfig(max_request_line=40, max_header_bytes=80, max_headers=3, max_body=16, buffer_size=1024)]
STATUSES = {-1, 0, 400, 413, 414, 431, 501, 505}
DIFFERENTIAL = not os.environ.get("FASTC1K_FUZZ_NO_DIFF")
# FASTC1K_FUZZ_KEEP_GOING=DIR: a disagreement is saved in DIR (first input of each kind of
# status pair) and the run goes on, so one long run lists every kind
KEEP_GOING = os.environ.get("FASTC1K_FUZZ_KEEP_GOING") or None
_seen: set = set()


def normalize(result) -> tuple:
    status, method, target, version, headers, keep_alive, body, consumed = result
    if headers is not None:
        headers = [(bytes(n), bytes(v)) for n, v in headers]
    return (status, method, None if target is None else bytes(target), version, headers, keep_alive,
            None if body is None else bytes(body), consumed)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cfg = CONFIGS[data[0] % len(CONFIGS)]
    req = data[1:]
    c = normalize(_core.parse_request(req, cfg))
    if c[0] not in STATUSES or not 0 <= c[7] <= len(req):
        raise AssertionError(f"C parser returned {c} for {req!r}")
    if DIFFERENTIAL:
        py = normalize(_core_py.parse_request(req, cfg))
        if c != py:
            if KEEP_GOING is None:
                raise AssertionError(f"C and Python disagree on {req!r}\n  python: {py}\n  c:      {c}")
            _record(data, py, c)


def _record(data: bytes, py: tuple, c: tuple) -> None:
    """Keep going: save the first input of each (python status, C status) pair, go on."""
    key = (py[0], c[0], py[0] == c[0])
    if key in _seen:
        return
    _seen.add(key)
    os.makedirs(KEEP_GOING, exist_ok=True)
    name = os.path.join(KEEP_GOING, f"disagree-py{py[0]}-c{c[0]}-{hashlib.sha1(data).hexdigest()[:12]}")
    with open(name, "wb") as f:
        f.write(data)
    print(f"\nDISAGREEMENT python {py[0]} / C {c[0]}: {data[1:][:300]!r} -> {name}", file=sys.stderr, flush=True)


def write_seeds(directory: str) -> None:
    """The hostile vectors (under each configuration) as the starting corpus."""
    from hostile_vectors import VECTORS
    os.makedirs(directory, exist_ok=True)
    for name, data, _ in VECTORS:
        for i in range(len(CONFIGS)):
            with open(os.path.join(directory, f"{name}-{i}"), "wb") as f:
                f.write(bytes([i]) + data)


def main() -> None:
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    for d in dirs:
        if not os.path.isdir(d) or not os.listdir(d):
            write_seeds(d)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
