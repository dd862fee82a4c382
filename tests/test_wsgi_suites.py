"""The conformance and hostile suites again, with a WSGI app mounted on every test server
(FASTC1K_TEST_WSGI=1: conftest.make_routes() adds it; it answers the paths no route takes,
with the engine's own 404). Parsing is the engines' either way; this shows the WSGI path
changes none of the answers. About 50 s: slow."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _env import SRC, TESTS


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_conformance_and_hostile_suites_pass_with_a_wsgi_app_mounted():
    env = dict(os.environ, FASTC1K_TEST_WSGI="1")
    env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.join(TESTS, "test_conformance.py"), os.path.join(TESTS, "test_hostile.py")],
                       env=env, capture_output=True, text=True, timeout=580)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout.splitlines()[-1]
