"""Where subprocesses of the tests find fastc1k: the very package this test process
imported (the installed one under CI, the tree's under PYTHONPATH=src), never a guess
at a source path, which would lack the built extensions in a clean clone."""
import os

import fastc1k

SRC = os.path.dirname(os.path.dirname(os.path.abspath(fastc1k.__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
