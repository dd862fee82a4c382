"""The pure-Python engine: the same worker as fastc1k._core, in plain Python, split into
the same parts with the same names (docs/ENGINES.md maps one onto the other):

    loop.py     the event loop, accepting, reading, requests    (_core.pyx)
    writer.py   responses and output, backpressure              (_core.pyx, "writer" section)
    parser.py   request heads and chunked bodies                 (core/parser.pxi)
    pool.py     read buffers                                     (core/pool.pxi)
    timers.py   timeout lists                                    (core/timers.pxi)
    consts.py   tunables, states, flags                          (core/consts.pxi)

The HTTP rules are the README's "HTTP behaviour" table; the grammar is RFC 9112.
`parse_request()` exposes the parser alone, for the differential tests against C.
"""
from __future__ import annotations

from .loop import Worker
from .parser import ParseError, parse_request

__all__ = ["Worker", "parse_request", "ParseError", "ENGINE_NAME", "ENGINE_READY"]

ENGINE_NAME = "python"
ENGINE_READY = True
