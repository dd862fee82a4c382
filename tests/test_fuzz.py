"""A short coverage-guided fuzz run of the C parser (atheris; fuzz/fuzz_parser.py), differential
against the pure parser. The long, C-instrumented run is `make fuzz` (see the README)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastc1k

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("FASTC1K_FUZZ_RUNS", "30000"))


@pytest.mark.timeout(120)
def test_short_fuzz_run(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install '.[test]' installs it on Linux)")
    if not fastc1k.c_available():
        if os.environ.get("FASTC1K_NO_EXTENSIONS") == "1":
            pytest.skip("C engine not built (FASTC1K_NO_EXTENSIONS=1)")
        pytest.fail("the C engine did not load: nothing to fuzz")
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastc1k.__file__)))  # the fastc1k under test
    env = dict(os.environ, PYTHONPATH=pkg_parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", "fuzz_parser.py"), f"-runs={RUNS}",
                           "-seed=1", f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus")],
                          env=env, capture_output=True, text=True, timeout=110)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    assert proc.returncode == 0, f"the fuzzer found a failure (artifacts in {tmp_path}):\n{tail}"
    assert f"Done {RUNS} runs" in proc.stderr, tail
