"""Smoke test of an installed fastc1k: import it, serve /api/health in-process, fetch it.

Used where the full suite cannot run: the Docker builder stage, the macOS job (pure
engine), and `make testinstalled` before the suite. Exits non-zero with one line on failure.

    python scripts/smoke.py [--engine c|python] [--expect-c]
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["c", "python"], default=None)
    ap.add_argument("--expect-c", action="store_true", help="fail unless the C engine is built")
    args = ap.parse_args()
    import fastc1k
    if args.expect_c and not fastc1k.c_available():
        print(f"smoke: C engine not built in {fastc1k.__file__}", file=sys.stderr)
        return 1
    with fastc1k.running_server(engine=args.engine) as srv:
        with urllib.request.urlopen(srv.url + "/api/health", timeout=5) as resp:
            body = json.loads(resp.read())
            if resp.status != 200 or body != {"status": "ok"}:
                print(f"smoke: /api/health answered {resp.status} {body!r}", file=sys.stderr)
                return 1
        print(f"smoke ok: fastc1k {fastc1k.__version__} from {fastc1k.__file__}, "
              f"engine {srv.engine_name}, {srv.url}/api/health -> 200")
    return 0


if __name__ == "__main__":
    sys.exit(main())
