"""Where subprocesses of the tests find fastc1k: the very package this test process
imported (the installed one under CI, the tree's under PYTHONPATH=src), never a guess
at a source path, which would lack the built extensions in a clean clone."""
import os
import signal
import subprocess

import fastc1k

SRC = os.path.dirname(os.path.dirname(os.path.abspath(fastc1k.__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM a process the test started (by its handle), SIGKILL it after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
